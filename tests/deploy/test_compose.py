"""docker-compose.yml: valid against the Compose Specification, and consistent with the image,
the app's routes and settings, nginx and TensorFlow Serving configs."""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import re
from collections.abc import Callable
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from app.settings import Settings
from harness.servers import LAUNCHER, MALLOC_ARENA_MAX
from tests.deploy.conftest import REPO, is_setting
from tests.deploy.formats import (
    Dockerfile,
    NginxBlock,
    compose_bytes,
    compose_seconds,
    interpolate,
    nginx_seconds,
    nginx_size,
)
from tests.deploy.test_dockerfile import HEALTH_URL

# Interpolation as on a fresh machine: no variable set, every ${X:-default} takes its default.
FRESH_ENV: dict[str, str] = {}
MODELS_SOURCE = "./models/mnist"


def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema (compose-spec.json) as vendored by check-jsonschema.

    check-jsonschema (Apache-2.0) ships compose-spec's own schema file, with its licence,
    refreshed on each release, so the test reads the real specification from an installed
    package instead of a copy kept here.
    """
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    return schema


def _resolved(value: Any, environment: dict[str, str] = FRESH_ENV) -> Any:
    """The value with Compose variables interpolated (by default as on a fresh machine)."""
    if isinstance(value, str):
        return interpolate(value, environment)
    if isinstance(value, list):
        return [_resolved(item, environment) for item in value]
    if isinstance(value, dict):
        return {key: _resolved(item, environment) for key, item in value.items()}
    return value


def _mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's volumes in long syntax (short ``src:dst[:ro]`` entries expanded)."""
    mounts = []
    for entry in _resolved(service.get("volumes", [])):
        if isinstance(entry, dict):
            entry = {key: entry.get(key) for key in ("type", "source", "target", "read_only")}
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            entry = {"type": kind, "source": source, "target": target}
            entry["read_only"] = bool(mode) and "ro" in mode[0].split(",")
        mounts.append(entry)
    return mounts


def _published(entry: str) -> tuple[str, str, str]:
    """A short-syntax published port ``[ip:]host:container`` as (ip, host, container); no ip is
    every interface (0.0.0.0)."""
    parts = entry.split(":")
    if len(parts) == 2:
        parts.insert(0, "0.0.0.0")
    address, host, container = parts
    return address, host, container


def _mount_at(service: dict[str, Any], target: str) -> dict[str, Any]:
    (mount,) = [m for m in _mounts(service) if m["target"] == target]
    return mount


def _argv(dockerfile: Dockerfile, keyword: str, stage: str = "runtime") -> list[str]:
    instruction = dockerfile.stage(stage).last(keyword)
    assert instruction is not None
    argv = instruction.exec_form()
    assert argv is not None
    return argv


def _option(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def _api_port(dockerfile: Dockerfile) -> int:
    port = _option(_argv(dockerfile, "CMD"), "--port")
    assert port is not None
    return int(port)


def _api_settings(services: dict[str, dict[str, Any]]) -> Settings:
    """The settings the api service runs with: its compose environment over the defaults."""
    values = {
        key.removeprefix("DIGITS_").lower(): value
        for key, value in services["api"]["environment"].items()
        if key.startswith("DIGITS_") and value is not None
    }
    return Settings.model_validate(values)


# ----------------------------------------------------------------------------- specification


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = Draft202012Validator(compose_spec_schema())
    for document in (compose, _resolved(compose)):
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == []


def test_the_schema_rejects_misspelt_keys(compose: dict[str, Any]) -> None:
    # Guards the test above: a schema that accepted anything would make it pass vacuously.
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["stop_grace_periode"] = "30s"
    broken["services"]["api"]["deploy"]["resources"]["limits"]["memroy"] = "1g"
    messages = [e.message for e in Draft202012Validator(compose_spec_schema()).iter_errors(broken)]
    assert any("stop_grace_periode" in m for m in messages)
    assert any("memroy" in m for m in messages)


def test_profiles_and_build_targets(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    profiles = {name: service.get("profiles", []) for name, service in services.items()}
    assert profiles == {
        "api": [],
        "lb": [],
        "postgres": ["postgres"],
        "train": ["train"],
        "tfserving": ["tfserving"],
        "prometheus": ["monitoring"],
        "grafana": ["monitoring"],
    }
    stages = {stage.name for stage in dockerfile.stages}
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["context"] == "."
            assert service["build"]["target"] in stages, name
    assert services["api"]["build"]["target"] == dockerfile.final.name
    assert services["train"]["build"]["target"] == "train"


def test_bind_mount_sources_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for mount in _mounts(service):
            if mount["type"] == "bind":
                assert (REPO / mount["source"]).exists(), f"{name}: {mount['source']}"


# ----------------------------------------------------------------------------- api


def test_api_healthcheck_is_the_images_probe_of_a_real_route(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, app_routes: dict[str, set[str]]
) -> None:
    healthcheck = services["api"]["healthcheck"]
    assert healthcheck["test"][0] == "CMD"
    argv = healthcheck["test"][1:]
    assert argv == _argv(dockerfile, "HEALTHCHECK"), "one probe, in the image and in compose"
    match = HEALTH_URL.search(argv[-1])
    assert match is not None
    assert "GET" in app_routes.get(match["path"], set())
    assert match["path"] == "/health/ready"
    assert int(match["port"]) == _api_port(dockerfile)
    assert compose_seconds(healthcheck["start_period"]) >= 30, "room to load and warm the model"
    for key in ("interval", "timeout"):
        compose_seconds(healthcheck[key])


def test_api_publishes_no_host_port_so_it_can_scale(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    api = services["api"]
    assert "ports" not in api, "a fixed host port fails `--scale api=N` on the second replica"
    assert "container_name" not in api, "a fixed name cannot be scaled either"
    expose = dockerfile.final.last("EXPOSE")
    assert expose is not None
    assert expose.words() == [str(_api_port(dockerfile))]
    grpc_port = api["environment"]["DIGITS_GRPC_PORT"]
    assert api["expose"] == [str(_api_port(dockerfile)), grpc_port]


def test_api_mounts_the_models_read_only_over_the_bundled_model(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    api = services["api"]
    image_models_dir = dockerfile.final.env()["DIGITS_MODELS_DIR"]
    assert api["environment"]["DIGITS_MODELS_DIR"] == image_models_dir
    mount = _mount_at(api, image_models_dir)
    assert mount["type"] == "bind"
    assert mount["source"] == MODELS_SOURCE
    assert mount["read_only"] is True
    data_dir = api["environment"]["DIGITS_DATA_DIR"]
    assert all(m["read_only"] for m in _mounts(api) if m["target"] != data_dir), (
        "the service writes nothing it reads, only its own state"
    )
    assert api["read_only"] is True
    assert api["tmpfs"] == ["/tmp"], "multipart uploads spool to /tmp"


def test_api_keeps_its_state_in_a_named_volume_its_user_owns(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    # The review queue's SQLite file lives in DIGITS_DATA_DIR: on the read-only root filesystem
    # it needs a writable mount, and a named volume keeps the queue across `down` and `up`.
    api = services["api"]
    data_dir = api["environment"]["DIGITS_DATA_DIR"]
    assert data_dir == dockerfile.final.env()["DIGITS_DATA_DIR"], "the image's own path"
    mount = _mount_at(api, data_dir)
    assert mount["type"] == "volume"
    assert mount["source"] in compose["volumes"], "a named volume, kept between runs"
    assert not mount["read_only"]
    # A new named volume takes the owner of the image's directory: the image makes it the
    # service user's, before switching to that user.
    user = dockerfile.final.last("USER")
    assert user is not None
    (made,) = [i for i in dockerfile.final.all("RUN") if f"mkdir -p {data_dir}" in i.arguments]
    assert f"chown {user.arguments} {data_dir}" in made.arguments


def test_api_environment_is_real_settings_with_polling_on(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = services["api"]["environment"]
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"DIGITS_{key.upper()}", raising=False)
    for key, value in environment.items():
        if key.startswith("DIGITS_"):
            field = key.removeprefix("DIGITS_").lower()
            assert is_setting(field), f"{key} is not a setting: it would be ignored"
            if value is not None:
                monkeypatch.setenv(key, str(value))
    # Passed through from the host when set there, absent otherwise (never empty): unset, the
    # queue is the SQLite file in DIGITS_DATA_DIR and the review endpoints follow the keys.
    for key in ("DIGITS_API_KEY", "DIGITS_REVIEWER_API_KEY", "DIGITS_REVIEW_DATABASE_URL"):
        assert environment[key] is None, f"{key}: passed through from the host, never empty"
    settings = Settings()
    assert settings.models_dir == Path("/app/models/mnist")
    assert settings.model_poll_seconds > 0, "a new version from `train` is picked up"
    assert settings.api_key is None


def test_api_restart_memory_limit_and_graceful_stop(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    api = services["api"]
    assert api["restart"] in {"always", "unless-stopped", "on-failure"}
    memory = compose_bytes(api["deploy"]["resources"]["limits"]["memory"])
    assert 512 * 1024**2 <= memory <= 4 * 1024**3
    graceful = _api_settings(services).graceful_shutdown_seconds
    assert api["environment"]["DIGITS_GRACEFUL_SHUTDOWN_SECONDS"] == str(graceful), "explicit"
    assert api["stop_signal"] == "SIGTERM"
    assert compose_seconds(api["stop_grace_period"]) > graceful, (
        "Docker must wait longer than the service's graceful shutdown before SIGKILL"
    )


def test_api_runs_the_launcher_with_connection_limits_and_the_allocator_capped(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    api = services["api"]
    assert "command" not in api, "the image's CMD, the launcher, starts the service"
    assert "entrypoint" not in api
    assert _argv(dockerfile, "CMD")[:3] == ["python", "-m", LAUNCHER]
    assert api["environment"]["MALLOC_ARENA_MAX"] == MALLOC_ARENA_MAX
    settings = _api_settings(services)
    for name in (
        "GRACEFUL_SHUTDOWN_SECONDS",
        "KEEP_ALIVE_SECONDS",
        "HEADER_TIMEOUT_SECONDS",
        "MAX_CONNECTIONS",
        "MAX_HEADER_BYTES",
    ):
        assert f"DIGITS_{name}" in api["environment"], f"DIGITS_{name} stated in compose"
    assert settings.keep_alive_seconds < settings.header_timeout_seconds
    assert settings.max_header_bytes <= 64 * 1024


#: Resident memory of one worker process once ready (TensorFlow, the model) plus room for
#: uploads being decoded: a sizing bound for the memory limit, not a measurement.
MEMORY_PER_WORKER = 1024**3


def test_api_runs_one_worker_with_memory_for_it(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    api = services["api"]
    assert "WEB_CONCURRENCY" not in dockerfile.final.env()
    assert api["environment"]["WEB_CONCURRENCY"] is None, (
        "passed through from the host when set there; unset, the launcher's one worker"
    )
    limits = api["deploy"]["resources"]["limits"]
    # Scale-out is by replicas: one worker each (the launcher's default), with room beside it
    # for uploads being decoded (the hostile-work benchmark keeps a worker under 1.5 GiB).
    assert compose_bytes(limits["memory"]) >= 1.5 * 2**30
    assert compose_bytes(limits["memory"]) >= MEMORY_PER_WORKER


def test_api_trusts_forwarded_addresses_only_from_private_networks_and_nginx_overwrites(
    services: dict[str, dict[str, Any]], nginx: NginxBlock
) -> None:
    trusted = services["api"]["environment"]["FORWARDED_ALLOW_IPS"]
    assert trusted != "*", "any peer could then set the client address the service logs"
    networks = [ipaddress.ip_network(part.strip()) for part in trusted.split(",")]
    assert networks
    assert all(network.is_private for network in networks), networks
    forwarded = [d.args for d in nginx.find("proxy_set_header") if d.args[0] == "X-Forwarded-For"]
    # $proxy_add_x_forwarded_for would append to what the client sent, and uvicorn takes the
    # leftmost address when it trusts the whole chain: the client could name any address.
    assert forwarded == [["X-Forwarded-For", "$remote_addr"]]


# ----------------------------------------------------------------------------- postgres

POSTGRES_URL = re.compile(
    r"postgresql\+psycopg://(?P<user>[^:@/\s]+):(?P<password>[^@/\s]+)@(?P<host>[^:/\s]+)"
    r":(?P<port>\d+)/(?P<database>[\w-]+)"
)


def test_postgres_is_a_profile_published_nowhere_with_its_data_on_a_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    postgres = services["postgres"]
    assert postgres["profiles"] == ["postgres"], "the default stack keeps SQLite"
    assert "ports" not in postgres, "only this project's network reaches the database"
    name, _, tag = postgres["image"].partition(":")
    assert name == "postgres"
    assert re.fullmatch(r"\d+-\w+", tag), "a major version and a Debian release, never latest"
    # The official image's data directory (PGDATA), on a named volume kept between runs.
    (mount,) = _mounts(postgres)
    assert mount == {
        "type": "volume",
        "source": "postgres-data",
        "target": "/var/lib/postgresql/data",
        "read_only": False,
    }
    assert mount["source"] in compose["volumes"]
    environment = _resolved(postgres["environment"])
    assert environment["POSTGRES_PASSWORD"], "the official image refuses to start without one"
    assert postgres["restart"] == "unless-stopped"
    assert compose_seconds(postgres["stop_grace_period"]) >= 10, "a checkpoint before SIGKILL"
    assert compose_bytes(postgres["deploy"]["resources"]["limits"]["memory"]) >= 256 * 2**20


def test_postgres_is_healthy_only_once_it_answers_over_tcp(
    services: dict[str, dict[str, Any]],
) -> None:
    postgres = services["postgres"]
    environment = postgres["environment"]
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    # The image initialises a new volume on a server that listens on its Unix socket only:
    # a probe over the socket would call that ready and let the api replicas in too early.
    assert _option(test, "-h") == "127.0.0.1"
    assert _option(test, "-U") == environment["POSTGRES_USER"]
    assert _option(test, "-d") == environment["POSTGRES_DB"]
    assert compose_seconds(postgres["healthcheck"]["start_period"]) > 0


def test_api_replicas_wait_for_postgres_only_when_its_profile_is_on(
    services: dict[str, dict[str, Any]],
) -> None:
    dependency = services["api"]["depends_on"]["postgres"]
    assert dependency["condition"] == "service_healthy", "migrations need a database answering"
    # Without the profile there is no postgres service: a required dependency would make
    # `docker compose up` fail on the default stack.
    assert dependency["required"] is False


def test_the_documented_database_url_reaches_the_postgres_service(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    page = (REPO / "docs" / "deployment.md").read_text()
    urls = [m for m in POSTGRES_URL.finditer(page) if m["host"] == "postgres"]
    assert urls, "docs/deployment.md shows the URL the api replicas use with the profile"
    postgres = _resolved(services["postgres"])
    environment = postgres["environment"]
    for url in urls:
        assert url["user"] == environment["POSTGRES_USER"], url[0]
        assert url["database"] == environment["POSTGRES_DB"], url[0]
        assert url["port"] == "5432", url[0]
        password = url["password"]
        if not password.startswith("$"):
            assert password == environment["POSTGRES_PASSWORD"], url[0]
    # The URL names the service, which is on the api's network (the project's default).
    assert "networks" not in postgres
    assert "networks" not in services["api"]


def test_the_postgres_stand_in_is_built_under_the_name_compose_uses(
    services: dict[str, dict[str, Any]],
) -> None:
    script = (REPO / "scripts" / "build-postgres-standin.sh").read_text()
    (image,) = re.findall(r"^IMAGE=\$\{POSTGRES_STANDIN_IMAGE:-([^}]+)\}$", script, flags=re.M)
    assert image == services["postgres"]["image"]
    (major,) = re.findall(r"^MAJOR=(\d+)$", script, flags=re.M)
    (suite,) = re.findall(r"^SUITE=(\w+)$", script, flags=re.M)
    assert image.split(":")[1] == f"{major}-{suite}", "the stand-in is the version it is named"
    entrypoint = REPO / "scripts" / "postgres-standin" / "docker-entrypoint.sh"
    assert f"upload {entrypoint.relative_to(REPO)} " in script
    for variable in services["postgres"]["environment"]:
        assert variable in entrypoint.read_text(), f"the stand-in ignores {variable}"


# ----------------------------------------------------------------------------- lb (nginx)


def _nginx_server(nginx: NginxBlock, passes: str) -> NginxBlock:
    """The one nginx ``server`` block whose locations use ``passes`` (proxy_pass, grpc_pass)."""
    (server,) = [block for block in nginx.find("server") if block.children and block.find(passes)]
    return server


def _upstream(nginx: NginxBlock, name: str) -> NginxBlock:
    (upstream,) = [block for block in nginx.find("upstream") if block.args == [name]]
    return upstream


def test_lb_publishes_the_host_port_and_proxies_to_api(
    services: dict[str, dict[str, Any]], nginx: NginxBlock, dockerfile: Dockerfile
) -> None:
    lb = services["lb"]
    address, host, container = _published(_resolved(lb["ports"])[0])
    assert (address, host) == ("127.0.0.1", "8000")
    http = _nginx_server(nginx, "proxy_pass")
    listen = [d.args[0] for d in http.find("listen")]
    assert listen == [container]
    mount = _mount_at(lb, "/etc/nginx/nginx.conf")
    assert mount["source"] == "./deploy/nginx.conf"
    assert mount["read_only"] is True
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    assert lb["restart"] in {"always", "unless-stopped"}
    assert compose_bytes(lb["deploy"]["resources"]["limits"]["memory"]) > 0

    (proxy_pass,) = [d.args for d in http.find("proxy_pass")]
    upstream = _upstream(nginx, proxy_pass[0].removeprefix("http://"))
    servers = [d.args for d in upstream.children if d.name == "server"]
    assert [args[0] for args in servers] == [f"api:{_api_port(dockerfile)}"]
    assert "api" in services
    assert "resolve" in servers[0], "re-resolve the service name as replicas come and go"
    assert nginx.find("resolver")[0].args[0] == "127.0.0.11", "Docker's embedded DNS"


def test_lb_publishes_the_grpc_door_of_every_replica(
    services: dict[str, dict[str, Any]], nginx: NginxBlock
) -> None:
    api_env = services["api"]["environment"]
    settings = _api_settings(services)
    assert settings.grpc_port > 0, "the Open Inference Protocol's gRPC door is on in compose"
    assert api_env["DIGITS_GRPC_HOST"] == "0.0.0.0", "reachable from lb, not only loopback"
    address, host, container = _published(_resolved(services["lb"]["ports"])[1])
    assert (address, host) == ("127.0.0.1", "8001")
    grpc = _nginx_server(nginx, "grpc_pass")
    assert [d.args[0] for d in grpc.find("listen")] == [container]
    assert [d.args for d in grpc.find("http2")] == [["on"]], "gRPC is HTTP/2"
    (grpc_pass,) = [d.args for d in grpc.find("grpc_pass")]
    upstream = _upstream(nginx, grpc_pass[0].removeprefix("grpc://"))
    servers = [d.args for d in upstream.children if d.name == "server"]
    assert [args[0] for args in servers] == [f"api:{settings.grpc_port}"]
    assert "resolve" in servers[0]
    (body_limit,) = grpc.find("client_max_body_size")
    assert nginx_size(body_limit.args[0]) > settings.max_upload_bytes


def test_every_published_port_is_on_loopback_unless_the_operator_says_otherwise(
    compose: dict[str, Any],
) -> None:
    # Like `make serve`: nothing answers the network until the operator chooses to, and then
    # (DIGITS_BIND) only the balancer; the unauthenticated tools stay on loopback.
    for name, service in _resolved(compose["services"]).items():
        for entry in service.get("ports", []):
            assert _published(entry)[0] == "127.0.0.1", f"{name} publishes {entry}"
    opened = _resolved(compose["services"], {"DIGITS_BIND": "0.0.0.0"})
    for name, service in opened.items():
        for entry in service.get("ports", []):
            expected = "0.0.0.0" if name == "lb" else "127.0.0.1"
            assert _published(entry)[0] == expected, f"{name} publishes {entry}"


def test_lb_healthcheck_hits_its_own_health_location(
    services: dict[str, dict[str, Any]], nginx: NginxBlock
) -> None:
    url = services["lb"]["healthcheck"]["test"][-1]
    match = HEALTH_URL.search(url)
    assert match is not None
    http = _nginx_server(nginx, "proxy_pass")
    assert [match["port"]] == [d.args[0] for d in http.find("listen")]
    locations = [d.args for d in http.find("location")]
    assert ["=", match["path"]] in locations


def test_lb_limits_agree_with_the_service(
    nginx: NginxBlock, services: dict[str, dict[str, Any]]
) -> None:
    (body_limit,) = _nginx_server(nginx, "proxy_pass").find("client_max_body_size")
    assert nginx_size(body_limit.args[0]) > Settings().max_upload_bytes, (
        "the service, not nginx, must answer an oversized upload, in the API's error shape"
    )
    upstream = _upstream(nginx, "digits_api")
    idle = upstream.directive("keepalive_timeout")
    assert idle is not None
    server_idle = _api_settings(services).keep_alive_seconds
    assert nginx_seconds(idle.args[0]) < server_idle, (
        "nginx must close idle upstream connections before uvicorn does, or it can reuse a "
        "closing socket and answer 502"
    )
    (server,) = [d for d in upstream.children if d.name == "server"]
    max_conns = [int(arg.split("=", 1)[1]) for arg in server.args if arg.startswith("max_conns=")]
    assert max_conns, "nginx must not open more connections to a replica than it accepts"
    assert max_conns[0] < _api_settings(services).max_connections, (
        "room left for the healthcheck, which connects to the replica directly"
    )
    (retry,) = [d.args for d in nginx.find("proxy_next_upstream")]
    assert {"error", "timeout"} <= set(retry), "a replica that is gone hands the request on"
    assert "http_503" in retry, "a GET to a replica still warming up is handed on"
    assert "non_idempotent" not in retry, "an upload that was sent is never replayed"
    (grpc_retry,) = [d.args for d in nginx.find("grpc_next_upstream")]
    assert grpc_retry == ["error", "timeout"], "a gRPC call (a POST) only when it was not sent"


# ----------------------------------------------------------------------------- train


def test_train_writes_into_the_shared_models_directory(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    train = services["train"]
    models_dir = _option(_argv(dockerfile, "ENTRYPOINT", stage="train"), "--models-dir")
    assert models_dir is not None
    mount = _mount_at(train, models_dir)
    assert mount["source"] == MODELS_SOURCE == _mount_at(services["api"], models_dir)["source"]
    assert mount["read_only"] is False, "the one writable mount of the models"
    assert train["restart"] == "no", "a finished training run must not start again"
    assert compose_bytes(train["deploy"]["resources"]["limits"]["memory"]) >= 2 * 1024**3
    uid, gid = _resolved(train["user"]).split(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) != 0


def test_train_command_is_accepted_by_the_trainer(
    services: dict[str, dict[str, Any]],
    dockerfile: Dockerfile,
    trainer_cli: Callable[[list[str]], argparse.Namespace],
) -> None:
    entrypoint = _argv(dockerfile, "ENTRYPOINT", stage="train")
    args = trainer_cli(entrypoint[3:] + services["train"]["command"])
    assert args.models_dir == Path("/app/models/mnist")
    assert args.recipe == "default"
    assert args.data_dir is None, "MNIST_DATA_DIR (or the cache) decides, per the compose file"


def test_train_reads_a_local_mnist_read_only_when_given(
    compose: dict[str, Any],
) -> None:
    local = {"MNIST_HOST_DIR": "/srv/mnist"}
    train = _resolved(compose["services"]["train"], local)
    data_dir = train["environment"]["MNIST_DATA_DIR"]
    assert data_dir == "/data/mnist"
    mount = _mount_at(train, data_dir)
    assert mount == {"type": "bind", "source": "/srv/mnist", "target": data_dir, "read_only": True}


def test_train_downloads_into_the_cache_volume_otherwise(compose: dict[str, Any]) -> None:
    train = _resolved(compose["services"]["train"])
    environment = train["environment"]
    assert environment["MNIST_DATA_DIR"] == "", "empty: the loader falls back to its cache"
    cache = _mount_at(train, environment["MNIST_CACHE_DIR"])
    assert cache["type"] == "volume"
    assert cache["read_only"] is False
    assert cache["source"] in compose["volumes"], "a named volume, kept between runs"


# ----------------------------------------------------------------------------- tfserving

_PROTO_FIELD = re.compile(r'(?P<key>\w+):\s*"(?P<value>[^"]*)"')


def test_tfserving_serves_the_same_models_read_only(services: dict[str, dict[str, Any]]) -> None:
    serving = services["tfserving"]
    command = serving["command"]
    flags = dict(item.removeprefix("--").split("=", 1) for item in command)
    config_mount = _mount_at(serving, flags["model_config_file"])
    assert config_mount["read_only"] is True
    config_text = (REPO / config_mount["source"]).read_text()
    fields = {m["key"]: m["value"] for m in _PROTO_FIELD.finditer(config_text)}
    assert fields["name"] == "mnist"
    assert fields["model_platform"] == "tensorflow"
    model_mount = _mount_at(serving, fields["base_path"])
    assert model_mount["source"] == MODELS_SOURCE
    assert model_mount["read_only"] is True
    assert flags["rest_api_port"] == "8501"
    # TF Serving has no authentication: reachable from this host only, never the network.
    assert _resolved(serving["ports"]) == ["127.0.0.1:8501:8501"]
    probe = serving["healthcheck"]["test"][-1]
    assert "/dev/tcp/127.0.0.1/8501" in probe
    assert "/v1/models/mnist" in probe
    assert serving["user"] != "0"
    assert compose_bytes(serving["deploy"]["resources"]["limits"]["memory"]) > 0


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_tfserving_is_not_older_than_the_tensorflow_that_writes_the_model(
    services: dict[str, dict[str, Any]],
) -> None:
    image, _, tag = services["tfserving"]["image"].partition(":")
    assert image == "tensorflow/serving"
    serving = tuple(int(part) for part in tag.split(".")[:2])
    # The lock installs tensorflow-cpu on Linux x86-64 and tensorflow elsewhere: same library.
    installed = [d for d in ("tensorflow", "tensorflow-cpu") if _installed(d)]
    assert installed, "neither tensorflow nor tensorflow-cpu is installed"
    trainer = tuple(int(part) for part in metadata.version(installed[0]).split(".")[:2])
    assert serving >= trainer, "an older server may not know the ops a newer TensorFlow exports"
