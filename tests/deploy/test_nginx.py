"""deploy/nginx.conf, the compose stack's load balancer: checked by the nginx binary the image
runs (``nginx -t`` inside the ``lb`` service's image), answered by a running one, and read for
what the service relies on: retries that never replay a request that was sent, and nginx's own
errors in the service's error shape, listed on the API page.

The checks that run nginx need a Docker engine and the ``lb`` image (``nginx:1.28-alpine``, or a
local stand-in under that name). Without them they are skipped, unless ``REQUIRE_DOCKER=1`` (set
by CI, which installs both) turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.core.errors import HTTP_ERRORS
from tests.deploy.conftest import REPO
from tests.deploy.formats import NginxBlock, nginx_seconds, nginx_size, parse_nginx

CONFIG = REPO / "deploy" / "nginx.conf"
API_PAGE = REPO / "docs" / "api.md"
#: The statuses nginx itself may answer in this config: a body over its limit, and no replica
#: reachable (refused, gone, timed out).
BALANCER_STATUSES = {413, 502, 503, 504}
#: What ``nginx -t`` said about the line that kept ``lb`` restarting.
OLD_GRPC_RETRY = "grpc_next_upstream error timeout unavailable non_idempotent;"
#: The oldest nginx that knows ``resolve`` in an upstream's ``server``.
OLDEST_NGINX = (1, 27, 3)
#: Bounds on waiting, not speed claims.
START_WITHIN_SECONDS = 20.0


def _server(config: NginxBlock, passes: str) -> NginxBlock:
    (server,) = [b for b in config.find("server") if b.children and b.find(passes)]
    return server


def _named_locations(server: NginxBlock) -> dict[str, NginxBlock]:
    return {
        block.args[0]: block
        for block in server.children
        if block.name == "location" and block.args and block.args[0].startswith("@")
    }


def _error_pages(server: NginxBlock) -> dict[int, NginxBlock]:
    """Status → the named location nginx answers it from (``error_page`` in the server)."""
    locations = _named_locations(server)
    pages: dict[int, NginxBlock] = {}
    for directive in server.children:
        if directive.name == "error_page":
            *statuses, target = directive.args
            assert target in locations, f"error_page {directive.args}: no location {target}"
            for status in statuses:
                if status.isdigit():
                    pages[int(status)] = locations[target]
    return pages


def _default_type(location: NginxBlock) -> str | None:
    directive = location.directive("default_type")
    return None if directive is None else directive.args[0]


def _headers(location: NginxBlock) -> dict[str, str]:
    return {d.args[0]: d.args[1] for d in location.children if d.name == "add_header"}


def balancer_errors(config: NginxBlock) -> dict[int, dict[str, Any]]:
    """Status → the JSON body nginx answers it with on the HTTP port."""
    answers: dict[int, dict[str, Any]] = {}
    for status, location in _error_pages(_server(config, "proxy_pass")).items():
        returned = location.directive("return")
        assert returned is not None, f"{status}: the location returns nothing"
        code, body = returned.args
        assert int(code) == status, f"{status} is answered as {code}"
        assert _default_type(location) == "application/json", status
        answers[status] = json.loads(body)
    return answers


def documented_balancer_errors() -> dict[str, int]:
    """Code → status from the API page's table of the load balancer's own errors."""
    page = API_PAGE.read_text()
    start = page.index("| status | code | nginx answers it when |")
    table: dict[str, int] = {}
    for line in page[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        status_cell, code_cell, _ = line.strip().strip("|").split("|", 2)
        (code,) = re.findall(r"`([a-z_]+)`", code_cell)
        table[code] = int(status_cell.strip())
    return table


# ----------------------------------------------------------------------------- read


def test_nginx_answers_its_own_errors_in_the_services_shape() -> None:
    answers = balancer_errors(parse_nginx(CONFIG.read_text()))
    assert set(answers) == BALANCER_STATUSES
    for status, body in answers.items():
        assert set(body) == {"error"}, status
        error = body["error"]
        assert {"code", "message"} <= set(error) <= {"code", "message", "details"}, status
        assert re.fullmatch(r"[a-z_]+", error["code"]), status
        assert error["message"].endswith("."), "a sentence a person can act on"
    # An upload over nginx's limit is the same refusal as one over the service's: same code.
    assert answers[413]["error"]["code"] == "payload_too_large"
    assert HTTP_ERRORS["payload_too_large"] == 413
    (limit,) = _server(parse_nginx(CONFIG.read_text()), "proxy_pass").find("client_max_body_size")
    assert answers[413]["error"]["details"] == {"max_bytes": nginx_size(limit.args[0])}


def test_nginx_says_when_to_come_back_when_no_replica_answered() -> None:
    server = _server(parse_nginx(CONFIG.read_text()), "proxy_pass")
    for status, location in _error_pages(server).items():
        if status >= 500:
            assert _headers(location).get("Retry-After", "").isdigit(), status
            assert "always" in [d.args[-1] for d in location.find("add_header")], (
                "add_header skips error statuses without `always`"
            )


def test_the_grpc_door_answers_nginx_errors_in_grpc_terms() -> None:
    server = _server(parse_nginx(CONFIG.read_text()), "grpc_pass")
    pages = _error_pages(server)
    assert set(pages) == BALANCER_STATUSES
    for status, location in pages.items():
        headers = _headers(location)
        # RESOURCE_EXHAUSTED for a message over the limit, UNAVAILABLE when no replica answered.
        assert headers["grpc-status"] == ("8" if status == 413 else "14"), status
        assert headers["grpc-message"], status
        assert _default_type(location) == "application/grpc", status


def test_the_api_page_lists_the_balancers_own_errors() -> None:
    answers = balancer_errors(parse_nginx(CONFIG.read_text()))
    shown = {body["error"]["code"]: status for status, body in answers.items()}
    assert documented_balancer_errors() == shown


def test_retries_never_replay_a_request_that_was_sent() -> None:
    config = parse_nginx(CONFIG.read_text())
    (http_retry,) = [d.args for d in config.find("proxy_next_upstream")]
    (grpc_retry,) = [d.args for d in config.find("grpc_next_upstream")]
    # Without non_idempotent nginx hands a POST on only when it was not sent to a replica.
    assert "non_idempotent" not in http_retry + grpc_retry
    assert {"error", "timeout"} <= set(http_retry)
    assert set(http_retry) <= {"error", "timeout", "http_502", "http_503"}
    assert grpc_retry == ["error", "timeout"]
    for name in ("proxy_next_upstream_tries", "grpc_next_upstream_tries"):
        (tries,) = config.find(name)
        assert 1 < int(tries.args[0]) <= 3, name
    # A replica that failed once (refused: it is stopping) is set aside until it is gone, so
    # nginx does not connect to its vanished address, which no retry could rescue.
    for upstream in config.find("upstream"):
        (server,) = [d for d in upstream.children if d.name == "server"]
        options = dict(arg.split("=", 1) for arg in server.args if "=" in arg)
        assert options["max_fails"] == "1", upstream.args
        assert 1 <= nginx_seconds(options["fail_timeout"]) <= 5, upstream.args
    (resolver,) = config.find("resolver")
    valid = [arg.removeprefix("valid=") for arg in resolver.args if arg.startswith("valid=")]
    assert valid, "a removed replica must leave nginx's view soon after it leaves Docker's DNS"
    assert int(valid[0].rstrip("s")) <= 2


# ----------------------------------------------------------------------------- run


def _unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def nginx_image() -> str:
    """The lb service's image, on a Docker engine that answers."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    image: str = compose["services"]["lb"]["image"]
    docker = shutil.which("docker")
    if docker is None:
        _unavailable("the docker CLI is not installed")
    elif subprocess.run([docker, "info"], capture_output=True, check=False).returncode != 0:
        _unavailable("no Docker engine answers")
    elif (
        subprocess.run([docker, "image", "inspect", image], capture_output=True, check=False)
    ).returncode != 0:
        _unavailable(f"the image {image} is not on this engine")
    return image


def _nginx_t(image: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a config file, by the image's own nginx (``api`` resolves to loopback)."""
    mount = f"{config}:/etc/nginx/nginx.conf:ro"
    return subprocess.run(
        ["docker", "run", "--rm", "--add-host", "api:127.0.0.1", "-v", mount, image, "nginx", "-t"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_images_nginx_accepts_the_config(nginx_image: str) -> None:
    result = _nginx_t(nginx_image, CONFIG)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
    assert "test is successful" in result.stderr


def test_nginx_t_rejects_the_retry_value_that_kept_lb_restarting(
    nginx_image: str, tmp_path: Path
) -> None:
    # The same check on the line that made `docker compose up --wait` fail: it must fail too.
    text = CONFIG.read_text()
    old, count = re.subn(r"grpc_next_upstream [^;]*;", OLD_GRPC_RETRY, text)
    assert count == 1
    config = tmp_path / "nginx.conf"
    config.write_text(old)
    result = _nginx_t(nginx_image, config)
    assert result.returncode != 0
    assert 'invalid value "unavailable"' in result.stderr, result.stderr


def test_the_image_runs_an_nginx_that_knows_resolve_in_upstreams(nginx_image: str) -> None:
    result = subprocess.run(
        ["docker", "run", "--rm", nginx_image, "nginx", "-v"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", result.stderr)
    assert match is not None, result.stderr
    assert tuple(int(part) for part in match.groups()) >= OLDEST_NGINX


@pytest.fixture
def running_nginx(nginx_image: str) -> Iterator[tuple[str, str]]:
    """nginx with the config and no replica behind it (``api`` is its own loopback, where
    nothing listens): the HTTP and gRPC addresses it is published on, on this host's loopback."""
    name = f"nginx-test-{uuid.uuid4().hex[:8]}"
    run = ["docker", "run", "-d", "--rm", "--name", name, "--add-host", "api:127.0.0.1"]
    published = ["-p", "127.0.0.1::8080", "-p", "127.0.0.1::8081"]
    mount = ["-v", f"{CONFIG}:/etc/nginx/nginx.conf:ro"]
    subprocess.run(
        [*run, *published, *mount, nginx_image],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    try:
        addresses = []
        for port in ("8080", "8081"):
            published = subprocess.run(
                ["docker", "port", name, port], capture_output=True, text=True, check=True
            ).stdout.split()[0]
            addresses.append(published)
        http, grpc = addresses
        deadline = time.monotonic() + START_WITHIN_SECONDS
        while True:
            try:
                if httpx.get(f"http://{http}/nginx-health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.2)
        yield http, grpc
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.mark.slow
def test_a_running_nginx_answers_json_errors_and_grpc_statuses(
    running_nginx: tuple[str, str],
) -> None:
    http, grpc = running_nginx
    expected = balancer_errors(parse_nginx(CONFIG.read_text()))
    too_large = httpx.post(
        f"http://{http}/predict",
        content=b"\0" * (7 * 1024 * 1024),
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert too_large.status_code == 413
    assert too_large.headers["content-type"] == "application/json"
    assert too_large.json() == expected[413]
    for method in ("GET", "POST"):
        gone = httpx.request(method, f"http://{http}/health/ready", timeout=30)
        assert gone.status_code == 502, gone.text
        assert gone.headers["content-type"] == "application/json"
        assert gone.headers["retry-after"] == "5"
        assert gone.json() == expected[502]

    tritonclient = pytest.importorskip("tritonclient.grpc")
    client = tritonclient.InferenceServerClient(grpc)
    with pytest.raises(tritonclient.InferenceServerException) as raised:
        client.is_server_live()
    assert raised.value.status() == "StatusCode.UNAVAILABLE", raised.value
    assert "no replica of the service answered" in str(raised.value.message())
