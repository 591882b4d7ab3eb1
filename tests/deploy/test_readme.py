"""README.md against the project: the Docker commands name services, profiles, stages and routes
that exist; the Errors table lists every error code; the protocol examples answer what they show."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient

from harness.servers import HOST, RunningServer, free_port
from tests.deploy.conftest import REPO
from tests.deploy.formats import Dockerfile

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
    """What the commands may name: read from the Dockerfile and docker-compose.yml."""

    services: dict[str, dict[str, Any]]
    dockerfile: Dockerfile
    routes: dict[str, set[str]]
    trainer: Callable[[list[str]], argparse.Namespace]
    built_tags: set[str] = field(default_factory=set)

    @property
    def profiles(self) -> set[str]:
        return {p for service in self.services.values() for p in service.get("profiles", [])}


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
    assert sections, "README.md has no section whose heading mentions Docker or deployment"
    return "\n".join(sections)


def shell_commands(section: str) -> list[list[str]]:
    """Commands in the section's fenced code blocks, split into words, pipelines split apart.

    Continuation lines are joined, ``# comments`` dropped, a leading ``$`` prompt and leading
    ``NAME=value`` assignments removed.
    """
    commands: list[list[str]] = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", section, flags=re.M | re.S):
        text = re.sub(r"\\\n", " ", block)
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
    """A ``curl`` to the API names a route; one to TF Serving names the mnist model."""
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
            assert parts.port == 8000, f"{url}: the compose stack and image answer on 8000"
            assert parts.path in facts.routes, f"{url}: no such route"


def check_readme_section(section: str, facts: Facts) -> list[list[str]]:
    """Check every docker and curl command in the section; return the docker commands."""
    docker = []
    for words in shell_commands(section):
        if words[:2] == ["docker", "compose"]:
            check_compose(words, facts)
            docker.append(words)
        elif words[:2] == ["docker", "build"]:
            check_build(words, facts)
            docker.append(words)
        elif words[:2] == ["docker", "run"]:
            check_run(words, facts)
            docker.append(words)
        elif words[0] == "curl":
            check_curl(words, facts)
    return docker


@pytest.fixture
def facts(
    services: dict[str, dict[str, Any]],
    dockerfile: Dockerfile,
    app_routes: dict[str, set[str]],
    trainer_cli: Callable[[list[str]], argparse.Namespace],
) -> Facts:
    return Facts(services, dockerfile, app_routes, trainer_cli)


def test_readme_docker_commands_match_the_files(facts: Facts) -> None:
    section = docker_section((REPO / "README.md").read_text())
    commands = [shlex.join(words) for words in check_readme_section(section, facts)]
    joined = "\n".join(commands)
    assert "docker build" in joined
    assert re.search(r"docker compose .*\bup\b", joined)
    assert re.search(r"--scale api=\d", joined), "the scale-out command is documented"
    for profile in sorted(facts.profiles):
        assert f"--profile {profile}" in joined, f"the {profile} profile is documented"


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
    assert len(check_readme_section(docker_section(SAMPLE), facts)) == 7


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
    ],
)
def test_a_wrong_name_is_caught(facts: Facts, command: str, complaint: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        check_readme_section(f"# Docker\n```\n{command}\n```\n", facts)


def test_a_readme_without_a_docker_section_fails() -> None:
    with pytest.raises(AssertionError, match="no section"):
        docker_section("# Project\n\n## Usage\n")


# ---------------------------------------------------------------- the Errors table


def readme_error_table(markdown: str) -> dict[str, set[int]]:
    """Code → statuses, read from README's Errors table (the one headed ``| status | codes |``)."""
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


def raised_error_codes() -> dict[str, int]:
    """Code → status of every error answer the service's own code gives.

    Read from the source: each ``ApiError(<status>, "<code>", ...)`` in app/, the domain
    errors' status table, and the launcher's refusals (``<status>: ("<code>", ...)``).
    """
    from app.core.errors import DOMAIN_STATUS

    codes = dict(DOMAIN_STATUS)
    for path in sorted((REPO / "app").rglob("*.py")):
        text = path.read_text()
        for status, code in re.findall(r'ApiError\(\s*(\d{3}),\s*"([a-z_]+)"', text):
            codes[code] = int(status)
    serve = (REPO / "app" / "serve.py").read_text()
    for status, code in re.findall(r'(\d{3}):\s*\(\s*"([a-z_]+)"', serve):
        codes[code] = int(status)
    return codes


def check_error_table(markdown: str, raised: dict[str, int]) -> None:
    """Every code the service answers with is in README's table, under its own status."""
    table = readme_error_table(markdown)
    for code, status in sorted(raised.items()):
        assert code in table, f"README's Errors table lacks `{code}` ({status})"
        assert status in table[code], f"README's Errors table lists `{code}` under {table[code]}"


def test_readme_error_table_lists_every_code_the_service_answers() -> None:
    raised = raised_error_codes()
    # The source scan must find the errors it is about, or the check below proves nothing.
    assert {"not_an_image", "version_not_found", "too_many_connections"} <= set(raised)
    assert len(raised) >= 20
    check_error_table((REPO / "README.md").read_text(), raised)


def test_readme_error_table_names_only_codes_that_exist() -> None:
    main = (REPO / "app" / "main.py").read_text()
    generic = {code for _, code in re.findall(r'(\d{3}):\s*"([a-z_]+)"', main)}
    known = set(raised_error_codes()) | generic
    documented = set(readme_error_table((REPO / "README.md").read_text()))
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


# ---------------------------------------------------------------- the protocol examples


def markdown_section(markdown: str, title: str) -> str:
    """The section whose heading starts with ``title``, up to the next heading as high (a
    ``# comment`` inside a fenced block is not a heading)."""
    lines = markdown.splitlines(keepends=True)
    fenced = False
    start: int | None = None
    level = 0
    for index, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"(#+) (.*)", line)
        if heading is None:
            continue
        if start is None and heading[2].startswith(title):
            start, level = index, len(heading[1])
        elif start is not None and len(heading[1]) <= level:
            return "".join(lines[start:index])
    assert start is not None, f"README.md has no section {title!r}"
    return "".join(lines[start:])


@dataclass
class Example:
    """A shell line of a README example and the answer written under it (``# ...``), if any."""

    words: list[str]
    answer: str | None


def shell_examples(section: str) -> list[Example]:
    """The command lines of the section's ``bash`` blocks, each with the answer written under
    it: a comment line holding JSON."""
    examples: list[Example] = []
    for block in re.findall(r"^```bash\n(.*?)^```", section, flags=re.M | re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            if re.match(r"# [{\[]", line):
                assert examples, f"an answer with no command above it: {line}"
                examples[-1].answer = line[2:]
            elif line.strip() and not line.startswith("#"):
                lexer = shlex.shlex(line, posix=True)
                lexer.whitespace_split = True
                lexer.commenters = "#"
                examples.append(Example(list(lexer), None))
    return examples


_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


def answer_matches(written: str, actual: str) -> bool:
    """Whether an answer README shows is the actual one: ``...`` stands for anything, and a
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


def run_protocol_example(example: Example, client: TestClient, workdir: Path) -> str:
    """Run one example line: ``python3 -c ... > file`` as written, ``curl`` against ``client``."""
    words = example.words
    if words[0] in {"python3", "python"}:
        assert words[-2] == ">", f"{shlex.join(words)}: the example writes its output to a file"
        with (workdir / words[-1]).open("wb") as output:
            subprocess.run([sys.executable, *words[1:-2]], cwd=workdir, stdout=output, check=True)
        return ""
    assert words[0] == "curl", f"{shlex.join(words)}: not an example this test can run"
    headers: dict[str, str] = {}
    body: bytes | None = None
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
        elif word.startswith("http"):
            urls.append(word)
        else:
            assert word in {"-s", "-fsS", "-sS"}, f"{shlex.join(words)}: option {word}"
        index += 1
    (url,) = urls
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("127.0.0.1", 8000), f"{url}: not `make serve`'s"
    method = "POST" if body is not None else "GET"
    return client.request(method, parts.path, headers=headers, content=body).text


def test_readme_protocol_examples_answer_what_readme_shows(tmp_path: Path) -> None:
    from app.main import create_app
    from app.settings import Settings

    section = markdown_section((REPO / "README.md").read_text(), "Protocols:")
    examples = shell_examples(section)
    shown = [example for example in examples if example.answer is not None]
    assert len(shown) >= 4, "README shows the answers of the /v1 and /v2 examples"
    with TestClient(create_app(Settings(models_dir=REPO / "models" / "mnist"))) as client:
        for example in examples:
            command = [w for w in example.words if not re.fullmatch(r"[A-Z_]+=\S*", w)]
            if command[:2] == ["make", "serve"]:
                continue  # starting the server is what the TestClient stands in for
            actual = run_protocol_example(example, client, tmp_path)
            if example.answer is not None:
                assert answer_matches(example.answer, actual), (
                    f"{shlex.join(example.words)}\n  README shows: {example.answer}"
                    f"\n  the service answers: {actual}"
                )


def printed_answers(code: str) -> list[str]:
    """The answers a README snippet shows for its ``print(...)`` lines, in order."""
    return [
        line.split("#", 1)[1].strip()
        for line in code.splitlines()
        if line.startswith("print(") and "#" in line
    ]


@pytest.mark.slow
def test_readme_triton_client_snippets_print_what_readme_shows(tmp_path: Path) -> None:
    # The Triton clients speak to a real server (HTTP and gRPC on their own ports), as a reader
    # running the snippets against `make serve` with DIGITS_GRPC_PORT=8001 would.
    section = markdown_section((REPO / "README.md").read_text(), "Protocols:")
    snippets = re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S)
    assert len(snippets) >= 2, "README shows the HTTP and gRPC Triton clients"
    grpc_port = free_port()
    server = RunningServer.start(
        REPO / "models" / "mnist", tmp_path / "server.log", env={"DIGITS_GRPC_PORT": str(grpc_port)}
    )
    try:
        for code in snippets:
            assert "127.0.0.1:8000" in code or "127.0.0.1:8001" in code, code
            runnable = code.replace("127.0.0.1:8000", f"{HOST}:{server.port}").replace(
                "127.0.0.1:8001", f"{HOST}:{grpc_port}"
            )
            result = subprocess.run(
                [sys.executable, "-c", runnable], capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, f"{code}\n{result.stderr[-1500:]}"
            shown = printed_answers(code)
            printed = result.stdout.splitlines()
            assert len(printed) == len(shown), f"{code}\nprinted: {printed}"
            for written, actual in zip(shown, printed, strict=True):
                assert answer_matches(written, actual), (
                    f"README shows: {written}\n  the snippet printed: {actual}"
                )
    finally:
        server.stop()


def test_readme_settings_are_the_services_settings(compose: dict[str, Any]) -> None:
    # Every DIGITS_* setting is documented, and every DIGITS_* name README gives is one the
    # service reads or one compose interpolates (a renamed setting would otherwise be ignored
    # silently by a reader who copies it).
    from app.settings import Settings

    prefix = Settings.model_config.get("env_prefix")
    assert prefix == "DIGITS_"
    fields = {f"{prefix}{name.upper()}" for name in Settings.model_fields}
    interpolated = set(re.findall(r"\$\{(DIGITS_[A-Z_]+)", yaml.safe_dump(compose)))
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"(?<![A-Z_])DIGITS_[A-Z_]+[A-Z]", readme))
    assert fields - named == set(), "settings README does not document"
    assert named - fields - interpolated == set(), "names README gives that nothing reads"
