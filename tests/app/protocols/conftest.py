"""Both Open Inference Protocol doors of one app: REST through a TestClient, gRPC on a port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from tritonclient.grpc import service_pb2_grpc

from app.main import create_app
from harness.servers import free_port
from tests.app.conftest import ModelsDir, make_settings

#: The API key the :func:`doors` app is started with.
KEY = "sesame"
#: Its batch limit (small, so "too many images" is cheap to send).
MAX_IMAGES = 4


@dataclass
class Doors:
    """A running app (version 1 answers 1 for everything) and a stub on its gRPC port."""

    rest: TestClient
    grpc: service_pb2_grpc.GRPCInferenceServiceStub


@pytest.fixture(scope="module")
def doors(
    tmp_path_factory: pytest.TempPathFactory, constant_models: dict[int, Path]
) -> Iterator[Doors]:
    """One app for a module's tests, with an API key and gRPC on."""
    models = ModelsDir(tmp_path_factory.mktemp("models"), constant_models)
    models.add(1, digit=1)
    port = free_port()
    settings = make_settings(models.path, grpc_port=port, max_batch_size=MAX_IMAGES, api_key=KEY)
    with (
        TestClient(create_app(settings)) as client,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield Doors(client, service_pb2_grpc.GRPCInferenceServiceStub(channel))
