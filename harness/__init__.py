"""Support shared by the tests and the benchmarks: one copy, importable by both.

* :mod:`harness.servers`: the real service (or another ASGI app) in its own process, and its
  memory and CPU time;
* :mod:`harness.mnist` and :mod:`harness.realdigits`: where the MNIST files and the real-scan
  sets are found;
* :mod:`harness.bodies`: request bodies (PNG digits, multipart uploads);
* :mod:`harness.attacks`: hostile images that once cost the service far more than their size.

Not shipped (not in the setuptools packages, not in any image): it is imported from the
repository root, where ``python -m pytest`` and ``python -m benchmarks.<name>`` run. It imports
``app`` and ``training`` where it needs them, never ``tests`` or ``benchmarks``; and neither
``app`` nor ``training`` imports it.
"""
