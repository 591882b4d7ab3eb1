"""Invariants of the Dockerfile and its build context, read without a Docker engine."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from app.settings import Settings
from harness.servers import LAUNCHER, MALLOC_ARENA_MAX
from tests.deploy.conftest import REPO
from tests.deploy.formats import Dockerfile, DockerIgnore, Instruction, Stage

# The only files that may enter the image before dependencies are installed: with anything
# else in that layer's inputs, a code edit would reinstall TensorFlow.
DEPENDENCY_INPUTS = {
    "requirements/runtime.txt",
    "requirements/train.txt",
    "requirements/client.txt",
}
HEALTH_URL = re.compile(r"https?://(?P<host>[^:/'\"]+):(?P<port>\d+)(?P<path>/[^'\"\s]*)")


def _copy_sources(instruction: Instruction) -> list[str]:
    """The context paths a COPY/ADD reads (all words but the destination)."""
    return [source.rstrip("/") for source in instruction.words()[:-1]]


def _installs_dependencies(instruction: Instruction) -> bool:
    return instruction.keyword == "RUN" and "pip install" in instruction.arguments


def _build_order(dockerfile: Dockerfile, stage: Stage) -> list[Instruction]:
    """Every instruction that produces ``stage``, ancestors first (what its layers depend on)."""
    return [item for s in dockerfile.lineage(stage) for item in s.instructions]


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_multi_stage_with_a_slim_python_final_stage(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "a multi-stage build keeps build tools out of the image"
    final = dockerfile.final
    assert final.name == "runtime"
    assert dockerfile.parent(final) is None, "the final stage starts from a clean base image"
    assert final.base == "python:3.11-slim"
    for stage in dockerfile.stages:
        assert dockerfile.root_image(stage) == "python:3.11-slim", stage.name


def test_dependencies_installed_before_any_code_is_copied(dockerfile: Dockerfile) -> None:
    # The stages that install dependencies see only the dependency list...
    for name in ("deps", "train-deps"):
        order = _build_order(dockerfile, dockerfile.stage(name))
        assert any(_installs_dependencies(item) for item in order), f"{name}: no pip install"
        for item in order:
            if item.keyword in {"COPY", "ADD"}:
                assert item.flag("from") is None
                assert set(_copy_sources(item)) <= DEPENDENCY_INPUTS, (
                    f"line {item.line}: {item.arguments} is an input of the dependency layer, "
                    "so editing it would reinstall TensorFlow"
                )
    # ...and the stages that hold code take the finished virtualenv, then add the code.
    for name in ("runtime", "train"):
        stage = dockerfile.stage(name)
        assert not any(_installs_dependencies(item) for item in stage.instructions)
        copies = stage.all("COPY")
        assert copies[0].flag("from") in {"deps", "train-deps"}, "virtualenv first"
        assert all(item.flag("from") is None for item in copies[1:])
    deps = dockerfile.stage("deps")
    (install,) = [item for item in deps.instructions if _installs_dependencies(item)]
    assert install.words()[-4:] == ["--require-hashes", "--no-deps", "-r", "runtime.txt"], (
        "the image installs exactly the hash-locked runtime dependencies"
    )
    (copy,) = deps.all("COPY")
    assert _copy_sources(copy) == ["requirements/runtime.txt"]
    assert install.flag("mount") == "type=cache,target=/root/.cache/pip"


def test_runtime_copies_the_venv_then_model_then_code(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    copies = final.all("COPY")
    from_stages = [item for item in copies if item.flag("from")]
    assert [item.flag("from") for item in from_stages] == ["deps"]
    assert from_stages[0].words() == ["/opt/venv", "/opt/venv"]
    sources = [_copy_sources(item) for item in copies if not item.flag("from")]
    assert sources == [["pyproject.toml"], ["models/mnist"], ["app"]]
    assert all(item.flag("chown") is None for item in copies), "code and model stay root-owned"
    assert "/opt/venv/bin" in final.env()["PATH"].split(":")[0]


def test_bundled_model_lands_where_the_app_reads_it_by_default(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    models_dir = final.env()["DIGITS_MODELS_DIR"]
    (copy_model,) = [i for i in final.all("COPY") if _copy_sources(i) == ["models/mnist"]]
    assert copy_model.words()[-1].rstrip("/") == models_dir
    assert "models_dir" in Settings.model_fields
    workdir = final.last("WORKDIR")
    assert workdir is not None
    (copy_app,) = [i for i in final.all("COPY") if _copy_sources(i) == ["app"]]
    assert copy_app.words()[-1].rstrip("/") == f"{workdir.arguments}/app", "app importable"
    versions = [p for p in (REPO / "models" / "mnist").iterdir() if p.name.isdigit()]
    assert versions, "models/mnist/<version>/ must exist: the image bundles it"


def test_final_user_is_a_fixed_non_root_uid_created_in_the_stage(dockerfile: Dockerfile) -> None:
    for stage in (dockerfile.final, dockerfile.stage("train"), dockerfile.stage("client")):
        user = stage.last("USER")
        assert user is not None, f"{stage.name}: no USER, the container would run as root"
        uid, _, gid = user.arguments.partition(":")
        assert uid.isdigit(), "numeric, so runAsNonRoot-style checks can verify it"
        assert int(uid) >= 10000, "outside the range of host users and system accounts"
        assert gid.isdigit()
        created = " ".join(item.arguments for item in stage.all("RUN"))
        assert f"--uid {uid}" in created
        assert f"--gid {gid}" in created
        assert stage.instructions.index(user) > max(
            stage.instructions.index(item) for item in stage.all("RUN")
        ), "nothing runs as root after switching user"


def test_start_command(dockerfile: Dockerfile) -> None:
    cmd = dockerfile.final.last("CMD")
    assert cmd is not None
    argv = cmd.exec_form()
    assert argv is not None, "exec form, so the server is PID 1 and receives SIGTERM itself"
    # The launcher applies the connection limits and the graceful-shutdown timeout; plain
    # `uvicorn app.main:create_app` would serve without them.
    assert argv[:3] == ["python", "-m", LAUNCHER]
    assert _option(argv, "--host") == "0.0.0.0"
    assert set(argv[3::2]) == {"--host", "--port"}, "every other setting is a DIGITS_* variable"
    # The paths the image lays out (its model, its data directory) are stated with it; every
    # other default lives in one place, Settings.
    assert {key for key in dockerfile.final.env() if key.startswith("DIGITS_")} == {
        "DIGITS_MODELS_DIR",
        "DIGITS_DATA_DIR",
    }
    assert dockerfile.final.env()["MALLOC_ARENA_MAX"] == MALLOC_ARENA_MAX
    assert "WEB_CONCURRENCY" not in dockerfile.final.env(), (
        "unset, the launcher runs one worker per core the container may use"
    )
    assert dockerfile.final.last("ENTRYPOINT") is None, "CMD alone, so `docker run IMG cmd` works"
    stop = dockerfile.final.last("STOPSIGNAL")
    assert stop is not None
    assert stop.arguments == "SIGTERM"


def test_expose_matches_the_port_uvicorn_listens_on(dockerfile: Dockerfile) -> None:
    expose = dockerfile.final.last("EXPOSE")
    assert expose is not None
    cmd = dockerfile.final.last("CMD")
    assert cmd is not None
    argv = cmd.exec_form()
    assert argv is not None
    assert expose.words() == [_option(argv, "--port")] == ["8000"]


def test_healthcheck_probes_readiness_on_a_real_route(
    dockerfile: Dockerfile, app_routes: dict[str, set[str]]
) -> None:
    healthcheck = dockerfile.final.last("HEALTHCHECK")
    assert healthcheck is not None
    argv = healthcheck.exec_form()
    assert argv is not None
    assert argv[:2] == ["python", "-c"], "slim has no curl; Python's urllib is there"
    match = HEALTH_URL.search(argv[2])
    assert match is not None
    assert match["host"] in {"127.0.0.1", "localhost"}
    assert match["path"] == "/health/ready"
    assert "GET" in app_routes.get(match["path"], set()), sorted(app_routes)
    expose = dockerfile.final.last("EXPOSE")
    assert expose is not None
    assert [match["port"]] == expose.words()
    for flag in ("interval", "timeout", "start-period", "retries"):
        assert healthcheck.flag(flag), f"--{flag} set explicitly"


def test_train_stage_has_the_training_extra_and_runs_the_trainer(dockerfile: Dockerfile) -> None:
    train = dockerfile.stage("train")
    assert dockerfile.parent(train) is None
    (venv,) = [item for item in train.all("COPY") if item.flag("from")]
    assert venv.flag("from") == "train-deps"
    installs = _build_order(dockerfile, dockerfile.stage("train-deps"))
    assert any(
        _installs_dependencies(i)
        and i.arguments.endswith("--require-hashes --no-deps -r train.txt")
        for i in installs
    )
    code = [_copy_sources(i) for i in train.all("COPY") if not i.flag("from")]
    # The reader-calibration step reads synthetic codes (training/) with the service's reader
    # (app/); nothing of benchmarks/ or harness/ is needed to train.
    assert code == [["training"], ["app"]]
    entrypoint = train.last("ENTRYPOINT")
    assert entrypoint is not None
    argv = entrypoint.exec_form()
    assert argv is not None
    assert argv[:3] == ["python", "-m", "training"]
    assert _option(argv, "--models-dir") == "/app/models/mnist"


def test_client_image_holds_the_client_and_its_locked_dependencies_alone(
    dockerfile: Dockerfile,
) -> None:
    # The image of the `digits` command line (the Kubernetes bulk-read Job): its virtualenv is
    # made from requirements/client.txt alone, before the client's code is copied...
    deps = dockerfile.stage("client-deps")
    assert dockerfile.parent(deps) is None
    order = deps.instructions
    installs = [item for item in order if _installs_dependencies(item)]
    locked, project = installs[0], installs[1]
    assert locked.words()[-4:] == ["--require-hashes", "--no-deps", "-r", "client.txt"]
    assert locked.flag("mount") == "type=cache,target=/root/.cache/pip"
    copies_before = [i for i in order[: order.index(locked)] if i.keyword in {"COPY", "ADD"}]
    assert [_copy_sources(i) for i in copies_before] == [["requirements/client.txt"]]
    (code,) = [i for i in order[order.index(locked) :] if i.keyword in {"COPY", "ADD"}]
    assert _copy_sources(code) == ["client"], "the client package, nothing of the service"
    # ...then the package is built with the pinned backend (no build isolation: pip would fetch
    # an unpinned setuptools), which is removed again.
    assert "--no-deps --no-build-isolation" in project.arguments
    assert "pip uninstall --yes setuptools" in project.arguments
    # The image takes that virtualenv and nothing else, and runs `digits` as a non-root user.
    client = dockerfile.stage("client")
    assert dockerfile.parent(client) is None
    (venv,) = client.all("COPY")
    assert venv.flag("from") == "client-deps"
    assert venv.words() == ["/opt/venv", "/opt/venv"]
    assert not any(_installs_dependencies(item) for item in client.instructions)
    entrypoint = client.last("ENTRYPOINT")
    assert entrypoint is not None
    assert entrypoint.exec_form() == ["digits"]
    scripts = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]["scripts"]
    assert "digits" in scripts, "the command the client package installs"


def test_client_lock_holds_nothing_of_the_service() -> None:
    text = (REPO / "requirements" / "client.txt").read_text()
    pinned = set(re.findall(r"^([A-Za-z0-9_.-]+)==", text, flags=re.M))
    assert {"httpx", "pydantic", "typer", "rich", "setuptools"} <= pinned
    assert not pinned & {"tensorflow", "tensorflow-cpu", "numpy", "pillow", "fastapi"}, pinned


def test_every_stage_and_argument_named_in_build_args_exists(dockerfile: Dockerfile) -> None:
    names = [stage.name for stage in dockerfile.stages]
    assert names == ["deps", "train-deps", "train", "client-deps", "client", "runtime"]
    # The lock's markers choose tensorflow-cpu or tensorflow: no build argument can swap it.
    assert set(dockerfile.global_args) == {"PYTHON_IMAGE"}


# ----------------------------------------------------------------------------- build context


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore.parse((REPO / ".dockerignore").read_text())


def _tracked(source: str) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", source], cwd=REPO, capture_output=True, check=True
    ).stdout
    return [REPO / name for name in listed.decode().split("\0") if name]


def test_context_holds_everything_the_dockerfile_copies(
    dockerfile: Dockerfile, dockerignore: DockerIgnore
) -> None:
    for stage in dockerfile.stages:
        for item in stage.all("COPY") + stage.all("ADD"):
            if item.flag("from"):
                continue
            for source in _copy_sources(item):
                assert (REPO / source).exists(), f"line {item.line}: {source} missing"
                # What the repository holds there: build output beside it (an editable
                # install's egg-info, bytecode) is left out of the context on purpose.
                for path in _tracked(source):
                    relative = path.relative_to(REPO).as_posix()
                    # Hidden entries (the trainer's .tmp-* dirs) and bytecode stay out on purpose.
                    if any(p.startswith(".") or p == "__pycache__" for p in path.parts):
                        continue
                    assert not dockerignore.excluded(relative), f"{relative} left out"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".mypy_cache/3.11/app.json",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "artifacts/screenshot.png",
        "tests/app/test_api.py",
        "benchmarks/bench_serving.py",
        "harness/servers.py",
        "app/__pycache__/main.cpython-311.pyc",
        "app/api/__pycache__/deps.cpython-311.pyc",
        "models/mnist/.tmp-1234/saved_model.pb",
        "models/mnist/2.tmp",
        "client/mnist_digits_client.egg-info/PKG-INFO",
        "client/build/lib/digits_client/cli.py",
        "client/digits_client/__pycache__/cli.cpython-311.pyc",
        ".env",
        "docker-compose.yml",
    ],
)
def test_context_leaves_out_local_and_generated_files(
    dockerignore: DockerIgnore, path: str
) -> None:
    assert dockerignore.excluded(path)


def test_runtime_holds_the_package_metadata_the_app_reads_its_version_from(
    dockerfile: Dockerfile, tmp_path: Path
) -> None:
    # The app reads its version from the installed distribution; the image installs no
    # distribution of the project, so the runtime stage writes its metadata from pyproject.toml.
    # Without it the service fails at start (PackageNotFoundError) and the stack never serves.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    main = (REPO / "app" / "main.py").read_text()
    assert f'metadata.version("{project["name"]}")' in main, "the app reads another name"
    (write,) = [i for i in dockerfile.final.all("RUN") if "dist-info" in i.arguments]
    code = shlex.split(write.arguments)[2]
    assert shlex.split(write.arguments)[:2] == ["python", "-c"]
    purelib = tmp_path / "site-packages"
    purelib.mkdir()
    staged = tmp_path / "pyproject.toml"
    staged.write_text((REPO / "pyproject.toml").read_text())
    script = code.replace("/tmp/pyproject.toml", str(staged)).replace(
        'sysconfig.get_path("purelib")', repr(str(purelib))
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    (dist,) = metadata.distributions(path=[str(purelib)])
    assert dist.metadata["Name"] == project["name"]
    assert dist.version == project["version"]
