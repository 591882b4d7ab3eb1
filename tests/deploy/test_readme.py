"""README.md and the documentation site (docs/, mkdocs.yml) against the project.

Every fenced block of README.md and docs/*.md is checked: its commands name make targets and
variables, module options, Docker, Compose and Kubernetes objects and routes that exist; an
example that shows its answer (a ``# {...}`` line under the command) is run and must answer
that; the Python snippets run against a real server and must print what they show. The Errors
tables list every error code, every setting is documented, every module is on the architecture
page, README stays a short start page, no page points at what a reader cannot open, and the
site builds with ``mkdocs build --strict`` and loads nothing from the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient

from app.reading.review import ReasonCode
from app.settings import Settings
from harness.servers import HOST, RunningServer, free_port
from tests.deploy.conftest import REPO
from tests.deploy.formats import Dockerfile

README = REPO / "README.md"
DOCS = REPO / "docs"
CHANGELOG = REPO / "CHANGELOG.md"
#: README stays a start page; the reference lives in docs/.
README_MAX_LINES = 300
#: Languages of fenced blocks holding shell commands.
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", ""}


def doc_pages() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page_name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def repo_path(path: str) -> Path | None:
    """The file or directory a repository path names; None when it does not exist."""
    return REPO / path if (REPO / path).exists() else None


def settings_class() -> Any:
    """The service's settings class."""
    return Settings


@dataclass
class Block:
    """A fenced code block: its language, its text and the line it starts on."""

    language: str
    code: str
    line: int


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced (```) block of a Markdown text, in order."""
    blocks: list[Block] = []
    lines = markdown.splitlines(keepends=True)
    index = 0
    while index < len(lines):
        opening = re.match(r"```\s*([\w+-]*)", lines[index])
        if opening is None:
            index += 1
            continue
        end = next(
            (i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), len(lines)
        )
        blocks.append(Block(opening[1], "".join(lines[index + 1 : end]), index + 1))
        index = end + 1
    return blocks


# docker compose options that take a value (so the value is not mistaken for a service name).
_VALUE_OPTIONS = {
    "-f",
    "--file",
    "-p",
    "--project-name",
    "--profile",
    "--env-file",
    "--project-directory",
    "--scale",
    "-e",
    "--env",
    "-u",
    "--user",
    "-v",
    "--volume",
    "--entrypoint",
    "-w",
    "--workdir",
    "--name",
    "--index",
    "-t",
    "--timeout",
    "--tail",
    "--wait-timeout",
    "--build-arg",
    "--target",
    "--tag",
    "-l",
    "--label",
    "--platform",
}
# Subcommands whose positional arguments are all service names.
_SERVICE_COMMANDS = {"up", "build", "pull", "logs", "stop", "start", "restart", "ps", "rm", "kill"}
# Subcommands whose first positional is a service and the rest belong to the container.
_SERVICE_THEN_ARGS = {"run", "exec", "port"}


@dataclass
class Facts:
    """What the commands may name: read from the Makefile, Dockerfile, docker-compose.yml and
    deploy/k8s; ``built_tags`` and ``forwarded_ports`` are what a page's earlier commands made."""

    services: dict[str, dict[str, Any]]
    dockerfile: Dockerfile
    routes: dict[str, set[str]]
    trainer: Callable[[list[str]], argparse.Namespace]
    compose: dict[str, Any] = field(default_factory=dict)
    built_tags: set[str] = field(default_factory=set)
    forwarded_ports: set[int] = field(default_factory=set)

    @property
    def profiles(self) -> set[str]:
        return {p for service in self.services.values() for p in service.get("profiles", [])}

    @property
    def interpolated(self) -> set[str]:
        """The variables docker-compose.yml reads from the environment: interpolated
        (``${NAME...}``), or passed through to a service (``NAME:`` with no value)."""
        named = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", yaml.safe_dump(self.compose)))
        for service in self.services.values():
            environment = service.get("environment", {})
            if isinstance(environment, dict):
                named |= {key for key, value in environment.items() if value is None}
        return named

    def for_page(self) -> Facts:
        """The same facts for a new page: nothing built or forwarded yet."""
        return dataclasses.replace(self, built_tags=set(), forwarded_ports=set())


def docker_section(markdown: str) -> str:
    """Every section whose heading mentions Docker or deployment, each up to the next heading
    as high as its own, joined."""
    lines = markdown.splitlines()
    sections: list[str] = []
    for start, line in enumerate(lines):
        heading = re.match(r"(#+)\s+(.*)", line)
        if heading and re.search(r"docker|deploy", heading[2], flags=re.I):
            level = len(heading[1])
            end = next(
                (
                    i
                    for i in range(start + 1, len(lines))
                    if (m := re.match(r"(#+)\s", lines[i])) and len(m[1]) <= level
                ),
                len(lines),
            )
            sections.append("\n".join(lines[start:end]))
    assert sections, "the page has no section whose heading mentions Docker or deployment"
    return "\n".join(sections)


def block_commands(code: str) -> list[list[str]]:
    """The commands of one shell block, split into words, pipelines split apart.

    Continuation lines are joined, ``# comments`` dropped, a leading ``$`` prompt and leading
    ``NAME=value`` assignments removed.
    """
    commands: list[list[str]] = []
    text = re.sub(r"\\\n", " ", code)
    for line in text.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for word in [*lexer, "|"]:
            if set(word) <= set("|&;"):
                while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                    words.pop(0)
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(word)
    return commands


def shell_commands(section: str) -> list[list[str]]:
    """The commands of every shell block of a section (see :func:`block_commands`)."""
    return [
        words
        for block in fenced_blocks(section)
        if block.language in SHELL_LANGUAGES
        for words in block_commands(block.code)
    ]


def _split_options(words: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Leading options (with their values) and the remaining words."""
    options: list[tuple[str, str | None]] = []
    index = 0
    while index < len(words) and words[index].startswith("-"):
        name, equals, value = words[index].partition("=")
        if equals:
            options.append((name, value))
        elif name in _VALUE_OPTIONS:
            index += 1
            options.append((name, words[index]))
        else:
            options.append((name, None))
        index += 1
    return options, words[index:]


def check_compose(words: list[str], facts: Facts) -> None:
    """A ``docker compose ...`` command names only existing profiles, services and files."""
    options, rest = _split_options(words[2:])
    for name, value in options:
        if name == "--profile":
            assert value in facts.profiles, f"{shlex.join(words)}: no profile {value!r}"
        if name in {"-f", "--file"}:
            assert value is not None
            assert (REPO / value).is_file(), f"{shlex.join(words)}: no file {value!r}"
    assert rest, f"{shlex.join(words)}: no subcommand"
    command, arguments = rest[0], rest[1:]
    sub_options, positionals = _split_options(arguments)
    for name, value in sub_options:
        if name == "--scale":
            assert value is not None
            service, _, count = value.partition("=")
            assert service in facts.services, f"{shlex.join(words)}: no service {service!r}"
            assert count.isdigit()
            assert "ports" not in facts.services[service], "a scaled service cannot fix a port"
    if command in _SERVICE_COMMANDS:
        named = positionals
    elif command in _SERVICE_THEN_ARGS:
        assert positionals, f"{shlex.join(words)}: which service?"
        named = positionals[:1]
    else:
        named = []
    for service in named:
        assert service in facts.services, f"{shlex.join(words)}: no service {service!r}"
    if command == "run" and positionals[:1] == ["train"] and positionals[1:]:
        entrypoint = facts.dockerfile.stage("train").last("ENTRYPOINT")
        assert entrypoint is not None
        argv = entrypoint.exec_form()
        assert argv is not None
        facts.trainer(argv[3:] + positionals[1:])


def check_build(words: list[str], facts: Facts) -> None:
    """A ``docker build ...`` command names existing stages and build arguments."""
    options, positionals = _split_options(words[2:])
    assert positionals == ["."], f"{shlex.join(words)}: the context is the repository root"
    stages = {stage.name for stage in facts.dockerfile.stages}
    for name, value in options:
        if name == "--target":
            assert value in stages, f"{shlex.join(words)}: no stage {value!r}"
        if name == "--build-arg":
            assert value is not None
            key = value.partition("=")[0]
            assert key in facts.dockerfile.global_args, f"{shlex.join(words)}: no ARG {key}"
        if name in {"-t", "--tag"} and value is not None:
            facts.built_tags.add(value)


def check_run(words: list[str], facts: Facts) -> None:
    """A ``docker run ...`` command runs a built image, its port, its models dir read-only."""
    options, positionals = _split_options(words[2:])
    assert positionals, f"{shlex.join(words)}: no image"
    assert positionals[0] in facts.built_tags, f"{shlex.join(words)}: image not built above"
    expose = facts.dockerfile.final.last("EXPOSE")
    assert expose is not None
    models_dir = facts.dockerfile.final.env()["DIGITS_MODELS_DIR"]
    for name, value in options:
        assert value is not None or name in {"--rm", "-d", "--detach", "-it", "-i"}, name
        if name in {"-p", "--publish"} and value is not None:
            assert value.rsplit(":", 1)[-1] in expose.words(), f"{shlex.join(words)}: port"
        if name in {"-v", "--volume"} and value is not None:
            _, target, *mode = value.split(":")
            if target == models_dir:
                assert mode == ["ro"], f"{shlex.join(words)}: models must be mounted read-only"


def check_curl(words: list[str], facts: Facts) -> None:
    """A ``curl`` to the API names a route; one to TF Serving names the mnist model; one to a
    port forwarded by an earlier ``kubectl port-forward`` names a route too."""
    urls = [word for word in words if word.startswith("http")]
    assert urls, f"{shlex.join(words)}: no URL"
    # [host_ip:]host_port:container_port; TF Serving is published on loopback only.
    serving_ports = {
        entry.split(":")[-2]
        for entry in facts.services.get("tfserving", {}).get("ports", [])
        if isinstance(entry, str)
    }
    for url in urls:
        parts = urlsplit(url)
        if str(parts.port) in serving_ports:
            assert parts.path.startswith("/v1/models/mnist"), url
            assert parts.hostname in {"127.0.0.1", "localhost"}, f"{url}: published on loopback"
        else:
            assert parts.port == 8000 or parts.port in facts.forwarded_ports, (
                f"{url}: the service, the compose stack and the image answer on 8000"
            )
            assert route_exists(parts.path, facts.routes), f"{url}: no such route"


def route_exists(path: str, routes: dict[str, set[str]]) -> bool:
    """Whether a concrete path is one of the app's routes (``{param}`` matches one segment)."""
    for route in routes:
        pattern = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(route))
        if re.fullmatch(pattern, path):
            return True
    return False


# ---------------------------------------------------------------- make, python, tools


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, flags=re.M))


def makefile_variables() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^(?:export\s+)?([A-Z_][A-Z0-9_]*)\s*[?:+]?=", text, flags=re.M))


def check_make(words: list[str], facts: Facts) -> None:
    """``make TARGET [NAME=value...]``: the target and the variables exist; ``TRAIN_ARGS`` is
    what the trainer accepts."""
    targets = [word for word in words[1:] if "=" not in word and not word.startswith("-")]
    assert targets, f"{shlex.join(words)}: which target?"
    phony = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert phony is not None
    for target in targets:
        assert target in makefile_targets(), f"{shlex.join(words)}: no make target {target!r}"
        assert target in phony[1].split(), f"{shlex.join(words)}: {target} is not .PHONY"
    for word in words[1:]:
        name, equals, value = word.partition("=")
        if equals:
            assert name in makefile_variables(), f"{shlex.join(words)}: no make variable {name}"
            if name == "TRAIN_ARGS":
                facts.trainer(shlex.split(value))


def module_path(module: str) -> Path:
    """The file (or package directory) of ``python -m module``, in the new layout or where its
    code is until the restructuring lands."""
    relative = module.replace(".", "/")
    for candidate in (f"{relative}.py", relative):
        found = repo_path(candidate)
        if found is not None:
            return found
    raise AssertionError(f"python -m {module}: no module {module!r} in the repository")


def check_options(command: str, source: Path, options: list[str]) -> None:
    """Every ``--option`` of a command is one its source declares."""
    files = sorted(source.rglob("*.py")) if source.is_dir() else [source]
    text = "\n".join(path.read_text() for path in files)
    for option in options:
        name = option.partition("=")[0]
        if name == "--help":
            continue
        assert f'"{name}"' in text, f"{command}: {page_name(source)} has no option {name}"


def is_python(word: str) -> bool:
    return re.fullmatch(r"(?:\S*/)?python3?", word) is not None


def check_python(words: list[str]) -> None:
    """``python -m module``, ``python script.py`` or ``python -c code``: the module or script
    is in the repository and declares the options given; the code compiles."""
    command = shlex.join(words)
    rest = words[1:]
    assert rest, f"{command}: python with nothing to run"
    if rest[0] == "-c":
        compile(rest[1], command, "exec")
        return
    if rest[0] == "-m":
        source = module_path(rest[1])
        arguments = rest[2:]
    else:
        found = repo_path(rest[0])
        assert found is not None, f"{command}: no script {rest[0]!r}"
        assert found.is_file(), f"{command}: {rest[0]!r} is not a script"
        source, arguments = found, rest[1:]
    check_options(command, source, [word for word in arguments if word.startswith("--")])


def check_tool(words: list[str]) -> None:
    """``.venv/bin/TOOL ...``: a tool the dev install provides, which accepts the options given
    (read from its ``--help``)."""
    command = shlex.join(words)
    tool = Path(sys.executable).parent / Path(words[0]).name
    assert tool.is_file(), f"{command}: the dev install has no {tool.name}"
    positionals = [word for word in words[1:] if not word.startswith("-")]
    result = subprocess.run(
        [str(tool), *positionals, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{command}: {result.stderr[-500:]}"
    for option in (word.partition("=")[0] for word in words[1:] if word.startswith("--")):
        assert option in result.stdout, f"{command}: {tool.name} has no option {option}"


# ---------------------------------------------------------------- the client (docs/client.md)


def check_digits(words: list[str]) -> None:
    """``digits COMMAND ...``: the client's command line has the command and every option given
    (what ``digits COMMAND --help`` lists, read from its Typer app); a ``--shard`` parses."""
    from digits_client.cli import app as digits_app
    from digits_client.sources import UsageError, parse_shard
    from typer.main import get_command

    command = shlex.join(words)
    group = get_command(digits_app)
    commands: dict[str, Any] = getattr(group, "commands", {})
    assert len(words) > 1, f"{command}: which command?"
    assert words[1] in commands, f"{command}: no command {words[1:2]}"
    params = commands[words[1]].params
    options = {name for param in params for name in (*param.opts, *param.secondary_opts)}
    for index, word in enumerate(words[2:], start=2):
        if not word.startswith("-"):
            continue
        name, _, value = word.partition("=")
        assert name in options or name == "--help", f"{command}: no option {name}"
        if name == "--shard":
            try:
                parse_shard(value or words[index + 1])
            except UsageError as error:
                raise AssertionError(f"{command}: {error}") from None


def check_pip(words: list[str]) -> None:
    """``pip install [-e] PATH``: a project of this repository (its pyproject.toml)."""
    command = shlex.join(words)
    assert words[1] == "install", command
    paths = [word for word in words[2:] if not word.startswith("-")]
    assert paths, f"{command}: install what?"
    for path in paths:
        assert (REPO / path / "pyproject.toml").is_file(), f"{command}: no project {path}"


# ---------------------------------------------------------------- Kubernetes


def k8s_objects() -> list[dict[str, Any]]:
    """Every object of every manifest under deploy/k8s (base, components, overlays)."""
    objects: list[dict[str, Any]] = []
    for path in sorted((REPO / "deploy" / "k8s").rglob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]
    return objects


_KINDS = {
    "deployment": "Deployment",
    "deploy": "Deployment",
    "service": "Service",
    "svc": "Service",
    "hpa": "HorizontalPodAutoscaler",
    "horizontalpodautoscaler": "HorizontalPodAutoscaler",
    "statefulset": "StatefulSet",
    "sts": "StatefulSet",
    "job": "Job",
    "pvc": "PersistentVolumeClaim",
    "persistentvolumeclaim": "PersistentVolumeClaim",
}


def k8s_object(kind: str, name: str, command: str) -> dict[str, Any]:
    wanted = _KINDS.get(kind.lower(), kind)
    for obj in k8s_objects():
        if obj.get("kind") == wanted and obj.get("metadata", {}).get("name") == name:
            return obj
    raise AssertionError(f"{command}: no {wanted} {name!r} in deploy/k8s")


def k8s_namespaces() -> set[str]:
    found = set()
    for obj in k8s_objects():
        kustomization = obj.get("kind") == "Kustomization" or "resources" in obj
        if kustomization and isinstance(obj.get("namespace"), str):
            found.add(obj["namespace"])
        if obj.get("kind") == "Namespace":
            found.add(obj["metadata"]["name"])
    return found


def _secret_keys(node: Any) -> Iterator[tuple[str, str]]:
    """(secret name, key) of every ``secretKeyRef`` in a manifest."""
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict):
            yield ref["name"], ref["key"]
        for value in node.values():
            yield from _secret_keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_keys(value)


def _keys_exist(patch: Any, target: Any) -> bool:
    if isinstance(patch, dict):
        return isinstance(target, dict) and all(
            key in target and _keys_exist(value, target[key]) for key, value in patch.items()
        )
    return True


def check_kube(words: list[str], facts: Facts) -> None:
    """``kubectl``, ``kind`` and ``minikube`` commands name overlays, namespaces, objects, ports,
    Secrets and images that exist."""
    command = shlex.join(words)
    if words[0] in {"kind", "minikube"}:
        assert words[1:3] in (["load", "docker-image"], ["image", "load"]), command
        assert words[3] in facts.built_tags, f"{command}: image not built above"
        return
    assert words[0] == "kubectl", command
    arguments: list[str] = []
    namespace = None
    index = 1
    while index < len(words):
        if words[index] in {"-n", "--namespace"}:
            namespace = words[index + 1]
            index += 2
        else:
            arguments.append(words[index])
            index += 1
    if namespace is not None:
        assert namespace in k8s_namespaces(), f"{command}: no overlay uses namespace {namespace}"
    verb = arguments[0]
    named = [word for word in arguments[1:] if not word.startswith("-")]
    if verb == "delete" and "-k" not in arguments:
        # kubectl delete KIND NAME, or KIND/NAME
        kind, _, name = named[0].partition("/")
        k8s_object(kind, name or named[1], command)
    elif verb in {"apply", "kustomize", "diff", "delete"}:
        directory = arguments[arguments.index("-k") + 1] if "-k" in arguments else arguments[1]
        assert (REPO / directory / "kustomization.yaml").is_file(), (
            f"{command}: no kustomization in {directory}"
        )
    elif verb in {"wait", "logs", "exec"}:
        # kubectl wait --for=... KIND/NAME, logs KIND/NAME, exec KIND/NAME -- command
        target = named[0]
        assert "/" in target, f"{command}: name the object as KIND/NAME"
        kind, _, name = target.partition("/")
        k8s_object(kind, name, command)
        if verb == "wait":
            condition = next(w for w in arguments if w.startswith("--for="))
            assert condition in {"--for=condition=complete", "--for=condition=available"}, command
        if verb == "exec":
            assert "--" in arguments, f"{command}: the container's command after --"
    elif verb in {"rollout", "scale"}:
        target = arguments[2] if verb == "rollout" else arguments[1]
        kind, _, name = target.partition("/")
        k8s_object(kind, name, command)
    elif verb == "port-forward":
        kind, _, name = arguments[1].partition("/")
        local, _, remote = arguments[2].partition(":")
        service = k8s_object(kind, name, command)
        ports = {port["port"] for port in service["spec"]["ports"]}
        assert int(remote) in ports, f"{command}: {name} has no port {remote}"
        facts.forwarded_ports.add(int(local))
    elif verb == "patch":
        obj = k8s_object(arguments[1], arguments[2], command)
        patch = json.loads(arguments[arguments.index("-p") + 1])
        assert _keys_exist(patch, obj), f"{command}: the patch names fields {arguments[2]} lacks"
    elif verb == "create":
        assert arguments[1:3] == ["secret", "generic"], command
        referenced = dict(_secret_keys(k8s_objects()))
        name = arguments[3]
        assert name in referenced, f"{command}: no manifest reads the Secret {name!r}"
        for word in arguments[4:]:
            if word.startswith("--from-literal="):
                key = word.removeprefix("--from-literal=").partition("=")[0]
                assert key == referenced[name], f"{command}: the manifests read {referenced[name]}"
    else:
        raise AssertionError(f"{command}: no check for kubectl {verb}")


# ---------------------------------------------------------------- every command


def check_command(words: list[str], facts: Facts) -> str:
    """Check one command of a documentation block against the project; return its kind.

    A command no check knows fails: a block the tests cannot check is a gap to close here.
    """
    name = words[0]
    if words[:2] == ["docker", "compose"]:
        check_compose(words, facts)
        return "docker"
    if words[:2] == ["docker", "build"]:
        check_build(words, facts)
        return "docker"
    if words[:2] == ["docker", "run"]:
        check_run(words, facts)
        return "docker"
    if name == "curl":
        check_curl(words, facts)
        return "curl"
    if name in {"kubectl", "kind", "minikube"}:
        check_kube(words, facts)
        return "kubernetes"
    if name == "make":
        check_make(words, facts)
        return "make"
    if is_python(name):
        check_python(words)
        return "python"
    if name.startswith(".venv/bin/"):
        check_tool(words)
        return "tool"
    if name == "export":
        named = re.findall(r"(?<![\w$])([A-Z_][A-Z0-9_]*)=", " ".join(words[1:]))
        assert named, shlex.join(words)
        for variable in named:
            assert variable in facts.interpolated, f"{variable}: docker-compose.yml never reads it"
        return "export"
    if name == "eval":
        # eval "$(make -s postgres)": the command whose output is evaluated is checked.
        inner = re.fullmatch(r"\$\((.+)\)", " ".join(words[1:]))
        assert inner is not None, f"{shlex.join(words)}: eval of what?"
        return check_command(shlex.split(inner[1]), facts)
    if name == "echo":
        return "echo"
    if name == "digits":
        check_digits(words)
        return "digits"
    if name == "pip":
        check_pip(words)
        return "pip"
    raise AssertionError(f"{shlex.join(words)}: no check for this command; add one")


def check_section(section: str, facts: Facts) -> list[list[str]]:
    """Check every command of the section's shell blocks; return the docker commands."""
    return [words for words in shell_commands(section) if check_command(words, facts) == "docker"]


@pytest.fixture
def facts(
    services: dict[str, dict[str, Any]],
    compose: dict[str, Any],
    dockerfile: Dockerfile,
    app_routes: dict[str, set[str]],
    trainer_cli: Callable[[list[str]], argparse.Namespace],
) -> Facts:
    return Facts(services, dockerfile, app_routes, trainer_cli, compose)


def test_readme_docker_commands_match_the_files(facts: Facts) -> None:
    section = docker_section(README.read_text())
    commands = [shlex.join(words) for words in check_section(section, facts.for_page())]
    joined = "\n".join(commands)
    assert "docker build" in joined
    assert re.search(r"docker compose .*\bup\b", joined)


def test_deployment_page_docker_commands_match_the_files(facts: Facts) -> None:
    deployment = (DOCS / "deployment.md").read_text()
    commands = check_section(docker_section(deployment), facts.for_page())
    joined = "\n".join(shlex.join(words) for words in commands)
    assert "docker build" in joined
    assert re.search(r"docker compose .*\bup\b", joined)
    assert re.search(r"--scale api=\d", joined), "the scale-out command is documented"
    everywhere = "\n".join(
        shlex.join(words)
        for page in doc_pages()
        for words in shell_commands(page.read_text())
        if words[:2] == ["docker", "compose"]
    )
    for profile in sorted(facts.profiles):
        assert f"--profile {profile}" in everywhere, f"the {profile} profile is documented"


def test_every_block_of_the_docs_is_checked(facts: Facts) -> None:
    # Each block is checked by what its language holds: shell commands against the project,
    # Python by compiling it here and running it in the slow test below, JSON against what it
    # shows; text blocks are diagrams. Anything else has no check, which fails.
    kinds: dict[str, int] = {}
    for page in doc_pages():
        page_facts = facts.for_page()
        for block in fenced_blocks(page.read_text()):
            where = f"{page_name(page)}:{block.line}"
            if block.language in SHELL_LANGUAGES:
                commands = block_commands(block.code)
                assert commands, f"{where}: a shell block with no command"
                for words in commands:
                    try:
                        kind = check_command(words, page_facts)
                    except AssertionError as error:
                        raise AssertionError(f"{where}: {error}") from None
                    kinds[kind] = kinds.get(kind, 0) + 1
            elif block.language == "python":
                compile(block.code, where, "exec")
            elif block.language == "json":
                check_json_block(json.loads(block.code), where)
            elif block.language != "text":
                raise AssertionError(f"{where}: no check for ```{block.language} blocks")
    assert {"docker", "curl", "kubernetes", "make", "python", "tool", "digits"} <= set(kinds), kinds


def check_json_block(document: Any, where: str) -> None:
    """A JSON block shows a review reason: its code is one the API page documents."""
    assert isinstance(document, dict), f"{where}: no check for this JSON; add one"
    assert {"code", "message"} <= set(document) <= {"code", "message", "position"}, (
        f"{where}: no check for this JSON; add one"
    )
    assert document["code"] in documented_reason_codes(), f"{where}: {document['code']}"
    assert document["code"] in service_reason_codes(), f"{where}: no code {document['code']}"


SAMPLE = """
# Project

## Docker

```bash
docker build -t mnist-digits .   # comment
$ docker build --target train --build-arg PYTHON_IMAGE=python:3.11-slim -t t .
docker run --rm -p 8000:8000 -v "$PWD/models/mnist:/app/models/mnist:ro" mnist-digits
docker compose up -d --wait --scale api=3
A=1 B=2 docker compose --profile train run --rm train --recipe seed --epochs 5
docker compose --profile tfserving \\
    up -d tfserving
echo '{}' | curl -fsS -d @- http://localhost:8501/v1/models/mnist:predict
curl -fsS http://localhost:8000/health/ready
```

## Next
```bash
docker compose --profile nowhere up
```

## Deployment notes
```bash
docker compose logs api
```
"""


def test_commands_are_extracted_from_the_docker_section_only() -> None:
    commands = shell_commands(docker_section(SAMPLE))
    assert commands[0] == ["docker", "build", "-t", "mnist-digits", "."]
    assert commands[4][:6] == ["docker", "compose", "--profile", "train", "run", "--rm"]
    assert commands[5] == ["docker", "compose", "--profile", "tfserving", "up", "-d", "tfserving"]
    assert commands[6] == ["echo", "{}"]
    assert commands[7][0] == "curl"
    assert not any("nowhere" in words for words in commands)
    assert commands[-1] == ["docker", "compose", "logs", "api"]


def test_the_sample_section_passes(facts: Facts) -> None:
    assert len(check_section(docker_section(SAMPLE), facts)) == 7


@pytest.mark.parametrize(
    ("command", "complaint"),
    [
        ("docker compose --profile nowhere up", "no profile 'nowhere'"),
        ("docker compose up --scale apii=3", "no service 'apii'"),
        ("docker compose up lb apii", "no service 'apii'"),
        ("docker compose run --rm trainer", "no service 'trainer'"),
        ("docker compose run --rm train --recipe fancy", "the trainer rejects"),
        ("docker build --target nowhere .", "no stage 'nowhere'"),
        ("docker build --build-arg NOPE=1 .", "no ARG NOPE"),
        ("docker run --rm unbuilt-image", "image not built"),
        ("docker build -t x . && docker run -v ./m:/app/models/mnist x", "read-only"),
        ("docker build -t x . && docker run -p 9000:9000 x", "port"),
        ("curl http://localhost:8000/no/such/route", "no such route"),
        ("curl http://localhost:8501/v1/models/other:predict", "other"),
        ("curl http://127.0.0.1:8080/predict", "answer on 8000"),
        ("make nowhere", "no make target 'nowhere'"),
        ("make serve NOWHERE=1", "no make variable NOWHERE"),
        ("make train TRAIN_ARGS='--recipe fancy'", "the trainer rejects"),
        ("python -m benchmarks.bench_postal --nope 1", "no option --nope"),
        ("python -m benchmarks.nowhere", "no module"),
        (".venv/bin/python benchmarks/nowhere.py", "no script"),
        ("python -c 'print('", "never closed"),
        (".venv/bin/lint-imports --nope", "no option --nope"),
        ("kubectl apply -k deploy/k8s/overlays/nowhere", "no kustomization"),
        ("kubectl -n nowhere rollout status deployment/mnist-digits", "namespace nowhere"),
        ("kubectl -n mnist-digits rollout restart deployment/other", "no Deployment 'other'"),
        ("kubectl -n mnist-digits port-forward service/mnist-digits 8080:81", "no port 81"),
        ('kubectl -n mnist-digits patch hpa mnist-digits -p \'{"spec":{"min":6}}\'', "fields"),
        ("kubectl -n mnist-digits create secret generic other --from-literal=a=b", "Secret"),
        ("kubectl -n mnist-digits delete job other", "no Job 'other'"),
        ("kubectl -n mnist-digits wait --for=condition=complete job/other", "no Job 'other'"),
        ("kubectl -n mnist-digits logs job/mnist-digits-bulk-read2", "no Job"),
        ("kubectl -n mnist-digits exec statefulset/pg -- psql", "no StatefulSet 'pg'"),
        ("kubectl -n mnist-digits exec statefulset/mnist-digits-postgres psql", "after --"),
        ('eval "$(make -s nowhere)"', "no make target 'nowhere'"),
        ("kind load docker-image unbuilt", "image not built"),
        ("export NOWHERE=1", "never reads it"),
        ("frobnicate --now", "no check for this command"),
        ("digits read scans/ --nope", "no option --nope"),
        ("digits frobnicate scans/", "no command ['frobnicate']"),
        ("digits read scans/ --shard 4/4", "--shard 4/4"),
        ("pip install ./nowhere", "no project ./nowhere"),
    ],
)
def test_a_wrong_name_is_caught(facts: Facts, command: str, complaint: str) -> None:
    with pytest.raises((AssertionError, SyntaxError), match=re.escape(complaint)):
        check_section(f"# Docker\n```\n{command}\n```\n", facts.for_page())


def test_a_forwarded_port_may_be_curled(facts: Facts) -> None:
    section = (
        "```bash\nkubectl -n mnist-digits port-forward service/mnist-digits 8080:80\n"
        "curl -F file=@examples/digit.png http://127.0.0.1:8080/predict\n```\n"
    )
    check_section(section, facts.for_page())


def test_a_readme_without_a_docker_section_fails() -> None:
    with pytest.raises(AssertionError, match="no section"):
        docker_section("# Project\n\n## Usage\n")


# ---------------------------------------------------------------- README is a start page


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the reference "
        "into docs/ and leave README a start page"
    )
    first = fenced_blocks(text)[0]
    assert "\n## " not in text[: text.index(first.code)], "the set-up commands come first"
    commands = block_commands(first.code)
    assert commands[:2] == [["make", "serve"], ["make", "test"]], (
        "README's first commands are `make serve` and `make test`"
    )


def test_readme_links_resolve() -> None:
    for page in (README, CHANGELOG):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path, _, anchor = target.partition("#")
            linked = REPO / path
            assert linked.is_file(), f"{page_name(page)} links {target}, which does not exist"
            if anchor:
                slugs = {slug(h) for h in re.findall(r"^#+ (.*)$", linked.read_text(), re.M)}
                assert anchor in slugs, f"{page_name(page)} links {target}: no such heading"


def slug(heading: str) -> str:
    """A heading's anchor, as MkDocs (Python-Markdown's toc) and GitHub make it."""
    text = unicodedata.normalize("NFKD", heading.replace("`", ""))
    text = re.sub(r"[^\w\s-]", "", text.encode("ascii", "ignore").decode()).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_slugs_are_the_sites() -> None:
    assert slug("Digit strings: `/recognize`") == "digit-strings-recognize"
    assert slug("TF Serving's `models.config`") == "tf-servings-modelsconfig"


# ---------------------------------------------------------------- what a reader can open

_UNREACHABLE = [
    (re.compile(r"\.\./shared"), "a path outside the repository"),
    (re.compile(r"\b(?:issues?|PR|pull request)\s*#?\d+", re.I), "an issue number"),
    (re.compile(r"(?<![\w&/])#\d+\b"), "an issue number"),
    (
        re.compile(r"(?<![\w-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w-])"),
        "a commit id",
    ),
]


def unreachable_references(text: str) -> list[str]:
    """What a text refers to that a reader of the repository cannot open."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, what in _UNREACHABLE:
            for match in pattern.finditer(line):
                found.append(f"line {number}: {what}: {match[0]!r}")
    return found


def test_pages_refer_only_to_what_a_reader_can_open() -> None:
    for page in [*doc_pages(), CHANGELOG]:
        assert unreachable_references(page.read_text()) == [], page_name(page)


def test_an_unreachable_reference_is_caught() -> None:
    assert unreachable_references("see ../shared/docs/DESIGN.md")
    assert unreachable_references("the targets of issue 8")
    assert unreachable_references("Issue #12 says")
    assert unreachable_references("fixed in #12.")
    assert unreachable_references("before commit fd28fb0 changed it")
    assert unreachable_references("at 35235b6e2d9a")
    assert unreachable_references("a request id [a8095325…]") == ["line 1: a commit id: 'a8095325'"]
    assert not unreachable_references(
        "25000000 pixels, 5242880 bytes, a defaced page, [Limits](limits.md#connections), "
        "e2e, 3.48e-07, [a809…], `DIGITS_MAX_UPLOAD_BYTES`, #8a2be2-free"
    )


def test_paths_named_by_the_docs_exist() -> None:
    roots = ("app/", "training/", "benchmarks/", "tests/", "deploy/", "examples/", "models/")
    roots += ("requirements/", "docs/", ".ci/", "client/")
    files = {"Dockerfile", "docker-compose.yml", "pyproject.toml", "uv.lock", "mkdocs.yml"}
    files |= {"Makefile", ".pre-commit-config.yaml", "CHANGELOG.md", "README.md"}
    named = 0
    for page in [*doc_pages(), CHANGELOG]:
        for span in re.findall(r"`([^`\s]+)`", page.read_text()):
            if re.search(r"[<>*{}…]|\.\.\.", span) or not (span.startswith(roots) or span in files):
                continue
            named += 1
            assert repo_path(span.rstrip("/")) is not None, f"{page_name(page)} names {span}"
    assert named >= 50


def test_architecture_page_maps_every_module() -> None:
    page = (DOCS / "architecture.md").read_text()
    named = set(re.findall(r"`([\w/.]+\.py)`", page))
    for path in named:
        assert repo_path(path) is not None, f"architecture.md names {path}, which is nowhere"
    for package in ("app", "training", "benchmarks", "harness"):
        for module in sorted((REPO / package).rglob("*.py")):
            relative = module.relative_to(REPO).as_posix()
            if module.name == "__init__.py" or "/static/" in relative:
                continue
            assert relative in named, f"{relative} is not on the architecture page's package map"


def test_architecture_page_names_every_import_contract() -> None:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = [
        c["name"] for c in contracts.get("tool", {}).get("importlinter", {}).get("contracts", [])
    ]
    assert len(names) >= 5
    page = (DOCS / "architecture.md").read_text()
    for name in names:
        assert name in page, f"the architecture page does not list the contract {name!r}"


# ---------------------------------------------------------------- the site


def test_site_builds_strictly_and_loads_nothing_from_the_network(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["theme"]["name"] == "material"
    assert config["theme"]["font"] is False, "no web fonts: the site is read offline"
    assert "mermaid" not in yaml.safe_dump(config), "mermaid loads from a CDN"
    for page in DOCS.glob("*.md"):
        assert "```mermaid" not in page.read_text(), f"{page_name(page)}: draw it as text"
    missing = [n for n in ("mkdocs", "material") if importlib.util.find_spec(n) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (`make install-dev` installs them)")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= len(list(DOCS.glob("*.md")))
    remote = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.I)
    for page in pages:
        assert remote.search(page.read_text()) is None, f"{page.name} loads from the network"


# ---------------------------------------------------------------- the Errors tables


def error_table(markdown: str) -> dict[str, set[int]]:
    """Code → statuses, read from a page's Errors table (the one headed ``| status | codes |``)."""
    start = markdown.index("| status | codes |")
    table: dict[str, set[int]] = {}
    for line in markdown[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        status_cell, codes_cell = line.strip().strip("|").split("|", 1)
        statuses = {int(status) for status in re.findall(r"\b\d{3}\b", status_cell)}
        for code in re.findall(r"`([a-z_]+)`", codes_cell):
            table.setdefault(code, set()).update(statuses)
    return table


ERROR_PAGES = [README, DOCS / "api.md"]


def raised_error_codes() -> dict[str, int]:
    """Code → status of every error answer the service's own code gives.

    Read from the source: each ``ApiError(<status>, "<code>", ...)`` in app/, the domain
    errors' status table, and the launcher's refusals (``<status>: ("<code>", ...)``, in the
    launcher or the uvicorn adapter it uses).
    """
    from app.core.errors import DOMAIN_STATUS

    codes = dict(DOMAIN_STATUS)
    for path in sorted((REPO / "app").rglob("*.py")):
        text = path.read_text()
        for status, code in re.findall(r'ApiError\(\s*(\d{3}),\s*"([a-z_]+)"', text):
            codes[code] = int(status)
        for status, code in re.findall(r'(\d{3}):\s*\(\s*"([a-z_]+)"', text):
            codes[code] = int(status)
    return codes


def check_error_table(markdown: str, raised: dict[str, int]) -> None:
    """Every code the service answers with is in the page's table, under its own status."""
    table = error_table(markdown)
    for code, status in sorted(raised.items()):
        assert code in table, f"the Errors table lacks `{code}` ({status})"
        assert status in table[code], f"the Errors table lists `{code}` under {table[code]}"


@pytest.mark.parametrize("page", ERROR_PAGES, ids=page_name)
def test_error_table_lists_every_code_the_service_answers(page: Path) -> None:
    raised = raised_error_codes()
    # The source scan must find the errors it is about, or the check below proves nothing.
    assert {"not_an_image", "version_not_found", "too_many_connections"} <= set(raised)
    assert len(raised) >= 20
    check_error_table(page.read_text(), raised)


@pytest.mark.parametrize("page", ERROR_PAGES, ids=page_name)
def test_error_table_names_only_codes_that_exist(page: Path) -> None:
    main = (REPO / "app" / "main.py").read_text()
    generic = {code for _, code in re.findall(r'(\d{3}):\s*"([a-z_]+)"', main)}
    known = set(raised_error_codes()) | generic
    documented = set(error_table(page.read_text()))
    assert documented - known == set()


def test_an_undocumented_or_misfiled_code_is_caught() -> None:
    markdown = (
        "| status | codes |\n| --- | --- |\n| 400 | `empty_file` |\n| 413 | `not_an_image` |\n"
    )
    check_error_table(markdown, {"empty_file": 400})
    with pytest.raises(AssertionError, match="lacks `deadline_exceeded`"):
        check_error_table(markdown, {"deadline_exceeded": 503})
    with pytest.raises(AssertionError, match="lists `not_an_image` under"):
        check_error_table(markdown, {"not_an_image": 400})


# ---------------------------------------------------------------- review reasons


def documented_reason_codes() -> set[str]:
    """The codes of the API page's review-reason table (``| code | ... |``)."""
    page = (DOCS / "api.md").read_text()
    start = page.index("| code | the reading goes to review because |")
    codes = set()
    for line in page[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        codes |= set(re.findall(r"^\|\s*`([a-z_]+)`", line))
    return codes


def service_reason_codes() -> set[str]:
    """The review-reason codes the service answers with."""
    return {member.value for member in ReasonCode}


def test_review_reason_codes_are_the_services() -> None:
    documented = documented_reason_codes()
    assert {"low_confidence", "length_mismatch"} <= documented
    codes = service_reason_codes()
    assert documented == codes, "the API page's review-reason table against the service's enum"


# ---------------------------------------------------------------- examples, run


@dataclass
class Example:
    """A shell line of a documented example and the answer written under it (``# ...``)."""

    words: list[str]
    answer: str | None


def shell_examples(code: str) -> list[Example]:
    """The command lines of a shell block, each with the answer written under it: a comment
    line holding JSON."""
    examples: list[Example] = []
    for line in re.sub(r"\\\n", " ", code).splitlines():
        if re.match(r"# [{\[]", line):
            assert examples, f"an answer with no command above it: {line}"
            examples[-1].answer = line[2:]
        elif line.strip() and not line.startswith("#"):
            lexer = shlex.shlex(line, posix=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            examples.append(Example(list(lexer), None))
    return examples


def answered_blocks(markdown: str) -> list[Block]:
    """The shell blocks that show an answer: the ones the tests run."""
    return [
        block
        for block in fenced_blocks(markdown)
        if block.language in SHELL_LANGUAGES and re.search(r"^# [{\[]", block.code, re.M)
    ]


_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


def answer_matches(written: str, actual: str) -> bool:
    """Whether an answer the docs show is the actual one: ``...`` stands for anything, and a
    number stands for any number that rounds to it at the precision it is written with."""
    pattern = ""
    written_numbers: list[str] = []
    for part in re.split(rf"(\.\.\.|{_NUMBER})", written):
        if part == "...":
            pattern += ".*?"
        elif re.fullmatch(_NUMBER, part):
            pattern += f"({_NUMBER})"
            written_numbers.append(part)
        else:
            pattern += re.escape(part)
    match = re.fullmatch(pattern, actual, flags=re.S)
    if match is None:
        return False
    for shown, got in zip(written_numbers, match.groups(), strict=True):
        exponent = Decimal(shown).as_tuple().exponent
        assert isinstance(exponent, int)
        if abs(Decimal(got) - Decimal(shown)) > Decimal(5).scaleb(exponent - 1):
            return False
    return True


def test_an_answer_is_matched_at_its_written_precision() -> None:
    actual = '{"p":[3.4784721947289654e-07,0.9999077320098877],"digit":1,"id":"a1"}'
    assert answer_matches('{"p":[3.48e-07,0.99990773],"digit":1,"id":"a1"}', actual)
    assert answer_matches('{"p":[3.48e-07,...],"digit":1,...}', actual)
    assert not answer_matches('{"p":[3.47e-07,...],"digit":1,...}', actual)
    assert not answer_matches('{"p":[...],"digit":7,...}', actual)
    assert not answer_matches('{"p":[...],"digit":1}', actual)
    assert not answer_matches('{"error":"version 2 is not served"}', actual)


def run_example(example: Example, client: TestClient, workdir: Path) -> str:
    """Run one example line: ``python3 -c ... > file`` as written, ``curl`` against ``client``
    (``-F name=@path`` uploads a file of the work directory or the repository)."""
    words = example.words
    if is_python(words[0]):
        assert words[-2] == ">", f"{shlex.join(words)}: the example writes its output to a file"
        with (workdir / words[-1]).open("wb") as output:
            subprocess.run([sys.executable, *words[1:-2]], cwd=workdir, stdout=output, check=True)
        return ""
    assert words[0] == "curl", f"{shlex.join(words)}: not an example this test can run"
    headers: dict[str, str] = {}
    body: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    urls: list[str] = []
    index = 1
    while index < len(words):
        word = words[index]
        if word == "-H":
            name, _, value = words[index + 1].partition(":")
            headers[name.strip()] = value.strip()
            index += 1
        elif word == "-d":
            data = words[index + 1]
            body = (workdir / data[1:]).read_bytes() if data.startswith("@") else data.encode()
            index += 1
        elif word == "-F":
            name, _, value = words[index + 1].partition("=")
            assert value.startswith("@"), f"{shlex.join(words)}: -F {value}"
            path = next(p for p in (workdir / value[1:], REPO / value[1:]) if p.is_file())
            files.append((name, (path.name, path.read_bytes(), "application/octet-stream")))
            index += 1
        elif word.startswith("http"):
            urls.append(word)
        else:
            assert word in {"-s", "-fsS", "-sS"}, f"{shlex.join(words)}: option {word}"
        index += 1
    (url,) = urls
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("127.0.0.1", 8000), f"{url}: not `make serve`'s"
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    if files:
        return client.post(target, headers=headers, files=files).text
    method = "POST" if body is not None else "GET"
    return client.request(method, target, headers=headers, content=body).text


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service serving the bundled models, in process, with a review queue of its own.

    No audit samples: the answers the pages show are the ones a reading gets 98 times in 100
    (``"queue": null``), and a page's review examples find only the items the pages queued.
    """
    from app.main import create_app

    settings = settings_class()(
        models_dir=REPO / "models" / "mnist",
        data_dir=tmp_path_factory.mktemp("docs-service-data"),
        review_audit_share=0.0,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_documented_answers_are_the_services(client: TestClient, tmp_path: Path) -> None:
    shown: dict[str, int] = {}
    for page in doc_pages():
        for block in answered_blocks(page.read_text()):
            workdir = tmp_path / f"{page.stem}-{block.line}"
            workdir.mkdir()
            for example in shell_examples(block.code):
                command = [w for w in example.words if not re.fullmatch(r"[A-Z_]+=\S*", w)]
                if command[:2] == ["make", "serve"]:
                    continue  # starting the server is what the TestClient stands in for
                actual = run_example(example, client, workdir)
                if example.answer is not None:
                    shown[page.name] = shown.get(page.name, 0) + 1
                    assert answer_matches(example.answer, actual), (
                        f"{page_name(page)}:{block.line}: {shlex.join(example.words)}"
                        f"\n  the page shows: {example.answer}\n  the service answers: {actual}"
                    )
    assert shown.get("README.md", 0) >= 3, "README shows the answers of its curl examples"
    assert shown.get("versions.md", 0) >= 4, "the /v1 and /v2 examples show their answers"
    assert shown.get("api.md", 0) >= 4, "the API page shows answers and an error"


def printed_answers(code: str) -> list[str]:
    """The answers a snippet shows for its ``print(...)`` lines, in order."""
    return [
        line.split("#", 1)[1].strip()
        for line in code.splitlines()
        if line.startswith("print(") and "#" in line
    ]


@pytest.mark.slow
def test_python_snippets_print_what_the_docs_show(tmp_path: Path) -> None:
    # The snippets speak to a real server (HTTP and gRPC on their own ports), as a reader
    # running them against `make serve` with DIGITS_GRPC_PORT=8001 would, from the
    # repository root (they open examples/).
    snippets = [
        (page, block)
        for page in doc_pages()
        for block in fenced_blocks(page.read_text())
        if block.language == "python"
    ]
    assert len(snippets) >= 3, "README's httpx example and the HTTP and gRPC Triton clients"
    grpc_port = free_port()
    server = RunningServer.start(
        REPO / "models" / "mnist", tmp_path / "server.log", env={"DIGITS_GRPC_PORT": str(grpc_port)}
    )
    try:
        for page, block in snippets:
            code, where = block.code, f"{page_name(page)}:{block.line}"
            assert "127.0.0.1:8000" in code or "127.0.0.1:8001" in code, where
            runnable = code.replace("127.0.0.1:8000", f"{HOST}:{server.port}").replace(
                "127.0.0.1:8001", f"{HOST}:{grpc_port}"
            )
            result = subprocess.run(
                [sys.executable, "-c", runnable],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=REPO,
            )
            assert result.returncode == 0, f"{where}\n{code}\n{result.stderr[-1500:]}"
            shown = printed_answers(code)
            printed = result.stdout.splitlines()
            assert shown, f"{where}: the snippet shows what it prints"
            assert len(printed) == len(shown), f"{where}\nprinted: {printed}"
            for written, actual in zip(shown, printed, strict=True):
                assert answer_matches(written, actual), (
                    f"{where} shows: {written}\n  the snippet printed: {actual}"
                )
    finally:
        server.stop()


# ---------------------------------------------------------------- settings and metrics


def test_docs_settings_are_the_services_settings(compose: dict[str, Any]) -> None:
    # Every DIGITS_* setting is on the configuration page, and every DIGITS_* name a page gives
    # is one the service reads or one compose interpolates (a renamed setting would otherwise
    # be ignored silently by a reader who copies it).
    settings = settings_class()
    prefix = settings.model_config.get("env_prefix")
    assert prefix == "DIGITS_"
    fields = {f"{prefix}{name.upper()}" for name in settings.model_fields}
    interpolated = set(re.findall(r"\$\{(DIGITS_[A-Z_]+)", yaml.safe_dump(compose)))
    configuration = (DOCS / "configuration.md").read_text()
    table = set(re.findall(r"^\|[^|]*?`(DIGITS_[A-Z_]+)`", configuration, flags=re.M))
    table |= set(re.findall(r"^\| `DIGITS_[A-Z_]+`, `(DIGITS_[A-Z_]+)`", configuration, re.M))
    assert fields - table == set(), "settings the configuration page's table does not list"
    # The client's command line reads a few of its own (docs/client.md).
    from digits_client.cli import ENVIRONMENT

    client = set(ENVIRONMENT)
    # What CI passes to the suite (.ci/run exports it), e.g. the test PostgreSQL's URL.
    ci = set(re.findall(r"\b(DIGITS_[A-Z_]+)=", (REPO / ".ci" / "run").read_text()))
    for page in [*doc_pages(), CHANGELOG]:
        named = set(re.findall(r"(?<![A-Z_])DIGITS_[A-Z_]+[A-Z]", page.read_text()))
        unread = named - fields - interpolated - client - ci
        assert unread == set(), f"{page_name(page)}: names nothing reads"


def exported_metrics(client: TestClient) -> tuple[set[str], dict[str, set[str]]]:
    """The metric families ``/metrics`` exports (Prometheus text), and each label's values."""
    text = client.get("/metrics", headers={"Accept": "text/plain"}).text
    families = {
        name
        for name in re.findall(r"^# TYPE (\S+) \w+$", text, flags=re.M)
        if not name.endswith("_created")
    }
    labels: dict[str, set[str]] = {}
    for metric, body in re.findall(r"^(\w+)\{([^}]*)\}", text, flags=re.M):
        for label, value in re.findall(r'(\w+)="([^"]*)"', body):
            labels.setdefault(f"{metric}.{label}", set()).add(value)
    return families, labels


def test_observability_page_lists_the_metrics_exported(client: TestClient) -> None:
    families, labels = exported_metrics(client)
    page = (DOCS / "observability.md").read_text()
    documented = set(re.findall(r"`((?:digits|process)_\w*)", page))
    documented_families = {name for name in documented if name != "process_"}
    exported = {f for f in families if f.startswith("digits_")}
    assert exported - documented_families == set(), "metrics the page does not list"
    assert documented_families - families == set(), "metrics the page lists that do not exist"
    assert any(f.startswith("process_") for f in families)
    assert "process_" in documented
    # The page says the reviews are counted by review reason code: the label values are those.
    assert labels["digits_recognize_reviews_total.reason"] == service_reason_codes()
