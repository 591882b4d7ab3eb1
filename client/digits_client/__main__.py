"""``python -m digits_client``: the ``digits`` command line."""

from digits_client.cli import main

main()
