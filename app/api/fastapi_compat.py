"""FastAPI's private route context, in one place: the ``POST /predict`` short cut's one use of it.

**What it buys.** The short cut (``app.api.routes.predict._PredictRoute``) answers a plain
request through a twin route that has only the ``file`` field to resolve, standing in for the
route's two dependencies (the API key and the served model). That is only right when those two
are *all* the dependencies of the route as it is served. Since FastAPI 0.16x an included
route is no longer copied: its handler is built once per inclusion, and the route as included
(with the dependencies the app or ``include_router`` add, and the app as the provider of
dependency overrides) reaches ``APIRoute.get_route_handler`` only through the private context
variable ``fastapi.routing._effective_route_context_var`` (FastAPI's own ``get_route_handler``
reads it the same way; its source marks it as a hook to be replaced). Without it the short cut
cannot see a dependency added at inclusion, nor the app's overrides.

**Measured gain** (of the short cut this makes safe; the lookup itself costs nothing per
request, it runs once per inclusion when the handler is built). CHANGELOG.md "Serving: the
event loop's cost per request", and commits fdc2ec4 / f823f83: ``/predict`` at concurrency 16,
interleaved A/B runs of ``wrk`` against the commit before (3 rounds of 3 s, load 1.2-1.4),
1,670 → 1,994 req/s (+19%), CPU per request 0.590 → 0.499 ms; A/A (two copies of the same
code) 0.9%. An earlier 4-round A/B under heavier load: 1,595 → 1,708 req/s (+7%). Measured on
the project's machine: AMD EPYC, 2 cores shared by ``wrk`` and the server, 24 GiB, shared with
other jobs (the benchmark run there lists FastAPI 0.165.0).

**Public-API fallback.** The full route, FastAPI's own ``APIRoute.get_route_handler``, for
every request: the same answers and errors (every dependency resolved per request), without
the short cut's gain. It is taken when :func:`route_as_included` answers None: this FastAPI
has no ``_effective_route_context_var``, or it is not a ``ContextVar``, or what it holds lacks
``original_route``, ``dependant`` or ``dependency_overrides_provider``, or holds another route.
The route's own dependant is *not* used instead: it would miss a dependency added at inclusion
and let the short cut skip it.

``tests/app/api/test_fastapi_compat.py`` asserts that the installed FastAPI takes the private
path (so an upgrade that would silently fall back fails there) and that the fallback answers
as the full route does.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Final, Protocol

import fastapi.routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

#: The private name in ``fastapi.routing`` (looked up, never imported, so that a FastAPI
#: without it still starts).
ROUTE_CONTEXT_VAR: Final = "_effective_route_context_var"
#: What the short cut reads of the route as included.
_FIELDS: Final = ("original_route", "dependant", "dependency_overrides_provider")


class IncludedRoute(Protocol):
    """What the short cut reads of a route as served: its dependencies and overrides."""

    @property
    def dependant(self) -> Dependant:
        """The route's dependencies, with those added where it was included."""

    @property
    def dependency_overrides_provider(self) -> Any:
        """The app (or router) whose ``dependency_overrides`` apply, or None."""


def route_context_var() -> ContextVar[Any] | None:
    """FastAPI's private context variable of the route as included, or None if it has none."""
    var = getattr(fastapi.routing, ROUTE_CONTEXT_VAR, None)
    return var if isinstance(var, ContextVar) else None


def route_as_included(route: APIRoute) -> IncludedRoute | None:
    """``route`` as FastAPI serves it while building its handler, or None when unknowable.

    Call it from ``route.get_route_handler``. It answers the inclusion's record of the route
    when FastAPI is building the handler of an included route, the route itself when the
    handler is built for the route as it stands (FastAPI's own rule), and None when this
    FastAPI does not say (see the module's docstring): the caller must then send every request
    through the full route.
    """
    var = route_context_var()
    if var is None:
        return None
    context = var.get()
    if context is None:
        return route
    if not all(hasattr(context, name) for name in _FIELDS):
        return None
    if context.original_route is not route:
        return None
    included: IncludedRoute = context
    return included
