"""How the protocol doors register their routes: each verb once, over a table of its paths.

A protocol serves the same verb at several paths that differ only in which version they name:
TF Serving's status, metadata and ``:predict`` for the model, one version and a labelled
version; the Open Inference Protocol's metadata, readiness and ``infer`` for the model and one
version. A door writes the verb once (:class:`Verb`: method, path suffix, handler, what its
operations say) and one row per path (:class:`Operation`: which version it names, operation
name, summary); :func:`add_routes` registers a route per row, each as explicit in the OpenAPI
document as a decorated function: its own operation id (from ``name``), summary, description,
path parameters with their descriptions and examples, response model and errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, SecretStr

from app.core.security import api_key_dependency
from app.protocols.common import MODEL_NAME, ModelRef
from app.protocols.errors import protocol_error_responses
from app.settings import Settings

ModelName = Annotated[
    str, Path(description=f"The model's name: `{MODEL_NAME}`.", examples=[MODEL_NAME])
]
Version = Annotated[str, Path(description="A model version (an integer).", examples=["1"])]
Label = Annotated[str, Path(description="A version label, e.g. `stable`.", examples=["stable"])]

#: What a verb does with the model a path names; returns the answer (a Response or a model).
Handler = Callable[[Request, ModelRef], Awaitable[Any]]
Endpoint = Callable[..., Awaitable[Any]]
#: Which version a path names: the served one, a version number, or a label.
Names = Literal["model", "version", "label"]


def configured_api_key(request: Request) -> SecretStr | None:
    """The API key this app was started with (None: no key is required)."""
    settings: Settings = request.app.state.settings
    return settings.api_key


#: The service's API-key check (:func:`app.core.security.check_api_key`) on X-API-Key.
ApiKeyDep: Final = Depends(api_key_dependency(configured_api_key))


@dataclass(frozen=True)
class Verb:
    """One verb of a protocol, the same at each of its paths."""

    method: str
    suffix: str
    """What follows the model's path: ``""``, ``"/metadata"``, ``":predict"``..."""
    handler: Handler
    description: str
    response_model: type[BaseModel]
    errors: tuple[int, ...]
    """The error statuses it documents (:func:`~app.protocols.errors.protocol_error_responses`)."""
    api_key: bool = False
    """Whether the API key is required (inference verbs)."""
    openapi_extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class Operation:
    """One path of a verb, and what its OpenAPI operation says."""

    names: Names
    """Which version the path names: :data:`PATHS` gives the path."""
    name: str
    """The endpoint's name, from which FastAPI makes the operation id."""
    summary: str
    errors: tuple[int, ...] | None = None
    """The error statuses, when not the verb's."""


#: The path of the model, one version or a labelled version (TF Serving's and KServe's layout).
PATHS: Final[dict[Names, str]] = {
    "model": "/{model_name}",
    "version": "/{model_name}/versions/{version}",
    "label": "/{model_name}/labels/{label}",
}


def add_routes(
    router: APIRouter, verb: Verb, operations: Sequence[Operation], base: str = ""
) -> None:
    """Register ``verb`` at each of ``operations``' paths (after ``base``), in their order."""
    for operation in operations:
        errors = operation.errors if operation.errors is not None else verb.errors
        router.add_api_route(
            base + PATHS[operation.names] + verb.suffix,
            _ENDPOINTS[operation.names](verb.handler),
            methods=[verb.method],
            name=operation.name,
            summary=operation.summary,
            description=verb.description,
            response_model=verb.response_model,
            responses=protocol_error_responses(*errors),
            dependencies=[ApiKeyDep] if verb.api_key else None,
            openapi_extra=verb.openapi_extra,
        )


# The endpoints' signatures are what FastAPI reads the path parameters from: one per kind of
# path, each handing the handler the model the path names.


def _model_endpoint(handler: Handler) -> Endpoint:
    async def endpoint(request: Request, model_name: ModelName) -> Any:
        return await handler(request, ModelRef(model_name))

    return endpoint


def _version_endpoint(handler: Handler) -> Endpoint:
    async def endpoint(request: Request, model_name: ModelName, version: Version) -> Any:
        return await handler(request, ModelRef(model_name, version=version))

    return endpoint


def _label_endpoint(handler: Handler) -> Endpoint:
    async def endpoint(request: Request, model_name: ModelName, label: Label) -> Any:
        return await handler(request, ModelRef(model_name, label=label))

    return endpoint


_ENDPOINTS: Final[dict[Names, Callable[[Handler], Endpoint]]] = {
    "model": _model_endpoint,
    "version": _version_endpoint,
    "label": _label_endpoint,
}
