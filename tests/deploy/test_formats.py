"""The readers in formats.py, on small inputs whose meaning Docker, Compose and nginx define."""

from __future__ import annotations

import pytest

from tests.deploy.formats import (
    DockerIgnore,
    compose_bytes,
    compose_seconds,
    interpolate,
    nginx_seconds,
    nginx_size,
    parse_dockerfile,
    parse_nginx,
)

SAMPLE = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.11-slim
ARG OTHER

FROM ${BASE} AS deps
# a comment between instructions
RUN --mount=type=cache,target=/root/.cache/pip \\
    # a comment inside a continuation is dropped
    pip install \\
        numpy
ENV A=1 \\
    PATH=/opt/venv/bin:$PATH

FROM deps AS child
ENV LEGACY value with spaces

FROM $BASE
COPY --from=deps /opt/venv /opt/venv
USER 10001:10001
HEALTHCHECK --interval=5s CMD ["python", "-c", "print('#not a comment')"]
CMD ["uvicorn", "app.main:create_app"]
"""


def test_dockerfile_stages_bases_and_global_args() -> None:
    parsed = parse_dockerfile(SAMPLE)
    assert parsed.global_args == {"BASE": "python:3.11-slim", "OTHER": ""}
    assert [(s.name, s.base) for s in parsed.stages] == [
        ("deps", "python:3.11-slim"),
        ("child", "deps"),
        (None, "python:3.11-slim"),
    ]
    child = parsed.stage("child")
    assert parsed.parent(child) is parsed.stage("deps")
    assert parsed.root_image(child) == "python:3.11-slim"
    assert parsed.final.index == 2
    with pytest.raises(KeyError):
        parsed.stage("missing")


def test_dockerfile_continuations_comments_flags_and_forms() -> None:
    parsed = parse_dockerfile(SAMPLE)
    run = parsed.stage("deps").all("RUN")[0]
    assert run.flag("mount") == "type=cache,target=/root/.cache/pip"
    assert run.arguments == "pip install numpy"
    assert run.line == 7
    assert parsed.stage("deps").env() == {"A": "1", "PATH": "/opt/venv/bin:$PATH"}
    assert parsed.stage("child").env() == {"LEGACY": "value with spaces"}
    final = parsed.final
    copy = final.all("COPY")[0]
    assert copy.flag("from") == "deps"
    assert copy.flag("chown") is None
    assert copy.words() == ["/opt/venv", "/opt/venv"]
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None
    assert healthcheck.flag("interval") == "5s"
    assert healthcheck.exec_form() == ["python", "-c", "print('#not a comment')"]
    cmd = final.last("CMD")
    assert cmd is not None
    assert cmd.exec_form() == ["uvicorn", "app.main:create_app"]


def test_dockerfile_shell_form_is_not_exec_form() -> None:
    parsed = parse_dockerfile("FROM x\nCMD uvicorn app\nHEALTHCHECK NONE\n")
    assert parsed.final.all("CMD")[0].exec_form() is None
    assert parsed.final.all("HEALTHCHECK")[0].exec_form() is None


@pytest.mark.parametrize(
    "text",
    ["", "RUN echo\nFROM x\n", "FROM x y\n", "FROM x\nRUN echo \\\n", "FROM x\nRUN <<EOF\nEOF\n"],
)
def test_dockerfile_reader_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_dockerfile(text)


def test_dockerignore_last_match_wins_and_parents_count() -> None:
    ignore = DockerIgnore.parse(
        "# comment\n**\n!app/\n!models/mnist/\n**/__pycache__/\nmodels/mnist/.*\n!app/keep.pyc\n"
    )
    assert ignore.excluded(".venv/bin/python")
    assert ignore.excluded("README.md")
    assert not ignore.excluded("app/main.py")
    assert not ignore.excluded("app/api/routes/predict.py")
    assert ignore.excluded("app/api/__pycache__/deps.cpython-311.pyc")
    assert not ignore.excluded("models/mnist/1/saved_model.pb")
    assert ignore.excluded("models/mnist/.tmp-123/saved_model.pb")
    assert not ignore.excluded("app/keep.pyc")


def test_dockerignore_patterns_follow_go_globbing() -> None:
    ignore = DockerIgnore.parse("*.md\n/build\ndocs/?.txt\n**/*.py[co]\ndata/[^a]*\n")
    assert ignore.excluded("README.md")
    assert not ignore.excluded("docs/README.md")
    assert ignore.excluded("build/lib/x.py")
    assert ignore.excluded("docs/a.txt")
    assert not ignore.excluded("docs/ab.txt")
    assert ignore.excluded("x/y/z.pyc")
    assert not ignore.excluded("x/y/z.py")
    assert ignore.excluded("data/b1")
    assert not ignore.excluded("data/a1")


NGINX = """
events { worker_connections 8; }   # trailing comment
http {
    upstream backend {
        server api:8000 resolve;
        keepalive_timeout 4s;
    }
    server {
        listen 8080;
        location / { proxy_pass http://backend; return 200 "a;b{c}"; }
    }
}
"""


def test_nginx_tree() -> None:
    root = parse_nginx(NGINX)
    (upstream,) = root.find("upstream")
    assert upstream.args == ["backend"]
    server = upstream.directive("server")
    assert server is not None
    assert server.args == ["api:8000", "resolve"]
    assert [d.args for d in root.find("listen")] == [["8080"]]
    assert root.find("return")[0].args == ["200", "a;b{c}"]
    assert upstream.directive("missing") is None


@pytest.mark.parametrize("text", ["http {", "}", "listen 80", "{ }"])
def test_nginx_reader_refuses_unbalanced_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_nginx(text)


def test_nginx_units() -> None:
    assert nginx_size("6m") == 6 * 1024**2
    assert nginx_size("512k") == 512 * 1024
    assert nginx_size("100") == 100
    assert nginx_seconds("4s") == 4
    assert nginx_seconds("500ms") == 0.5
    assert nginx_seconds("60") == 60
    with pytest.raises(ValueError, match="nginx size"):
        nginx_size("6 MB")


def test_compose_interpolation() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d}:${UNSET:-8000}", env) == "x:8000"
    assert interpolate("${EMPTY:-d}|${EMPTY-d}|${UNSET-d}", env) == "d||d"
    assert interpolate("${SET:+alt}|${UNSET:+alt}|$SET|$$SET", env) == "alt||x|$SET"
    with pytest.raises(ValueError, match="UNSET"):
        interpolate("${UNSET:?needed}", env)


def test_compose_units() -> None:
    assert compose_seconds("30s") == 30
    assert compose_seconds("1m30s") == 90
    assert compose_seconds("500ms") == 0.5
    assert compose_bytes("1536M") == 1536 * 1024**2
    assert compose_bytes("4G") == 4 * 1024**3
    assert compose_bytes("1gb") == 1024**3
    assert compose_bytes(1000) == 1000
    with pytest.raises(ValueError, match="duration"):
        compose_seconds("30")
    with pytest.raises(ValueError, match="byte"):
        compose_bytes("lots")
