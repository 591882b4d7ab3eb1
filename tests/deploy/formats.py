"""Small readers for the deployment files: Dockerfile, .dockerignore, nginx.conf, Compose values.

No Docker engine runs here, so the tests read these files the way the tools do, closely enough
to check their invariants. Each reader has its own unit tests in test_formats.py.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# ----------------------------------------------------------------------------- Dockerfile

_FLAG = re.compile(r"--(?P<name>[a-z-]+)(?:=(?P<value>\S*))?")
_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?::?-(?P<default>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined, flags split off the arguments."""

    keyword: str
    flags: tuple[tuple[str, str], ...]
    arguments: str
    line: int

    def flag(self, name: str) -> str | None:
        """The value of ``--name=value``, or None when the flag is absent."""
        return next((value for key, value in self.flags if key == name), None)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (CMD, ENTRYPOINT, RUN), else None."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            head, _, text = text.partition(" ")
            if head.upper() != "CMD":
                return None
        text = text.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"line {self.line}: exec form must be a JSON array of strings")
        return value

    def words(self) -> list[str]:
        """Shell-style split of the arguments (for COPY, EXPOSE, USER, ENV, ARG)."""
        return shlex.split(self.arguments)


@dataclass
class Stage:
    """A build stage: ``FROM base [AS name]`` and the instructions up to the next FROM."""

    index: int
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """The stage's instructions with this keyword, in order."""
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        """The stage's last instruction with this keyword (the one Docker keeps)."""
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """The ENV values set in this stage (not inherited ones)."""
        values: dict[str, str] = {}
        for item in self.all("ENV"):
            words = item.words()
            if words and "=" not in words[0]:
                values[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARG defaults and the build stages in order."""

    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        """The stage named ``name``; KeyError when there is none."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    @property
    def final(self) -> Stage:
        """The stage `docker build` produces without --target."""
        return self.stages[-1]

    def parent(self, stage: Stage) -> Stage | None:
        """The earlier stage this one is built FROM, or None when it starts from an image."""
        names = {s.name: s for s in self.stages[: stage.index] if s.name}
        return names.get(stage.base)

    def lineage(self, stage: Stage) -> list[Stage]:
        """The stage and its FROM ancestors, oldest first."""
        chain = [stage]
        while (parent := self.parent(chain[0])) is not None:
            chain.insert(0, parent)
        return chain

    def root_image(self, stage: Stage) -> str:
        """The external image at the bottom of the stage's FROM chain."""
        return self.lineage(stage)[0].base


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Join continuation lines; drop comment and blank lines, as Docker's parser does."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue
        if not stripped:
            continue
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending.append(raw.rstrip()[:-1].strip())
            continue
        pending.append(stripped)
        yield start, " ".join(part for part in pending if part)
        pending = []
    if pending:
        raise ValueError(f"line {start}: continuation at end of file")


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` as Docker does in FROM."""

    def replace(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        if name in values and values[name] != "":
            return values[name]
        return match["default"] or ""

    return _VARIABLE.sub(replace, text)


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse a Dockerfile into global ARGs and stages (heredocs are not supported)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, content in _logical_lines(text):
        keyword, _, rest = content.partition(" ")
        keyword = keyword.upper()
        flags: list[tuple[str, str]] = []
        rest = rest.strip()
        while rest.startswith("--") and (match := _FLAG.match(rest)):
            flags.append((match["name"], match["value"] or ""))
            rest = rest[match.end() :].strip()
        if "<<" in rest and keyword in {"RUN", "COPY", "ADD"}:
            raise ValueError(f"line {line}: heredocs are not supported by this reader")
        instruction = Instruction(keyword, tuple(flags), rest, line)
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise ValueError(f"line {line}: cannot read FROM {rest!r}")
            base = substitute(words[0], global_args)
            stages.append(Stage(len(stages), base, name, [instruction]))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"line {line}: only ARG may come before the first FROM")
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise ValueError("no FROM instruction")
    return Dockerfile(global_args, stages)


# ----------------------------------------------------------------------------- .dockerignore


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern language: Go's filepath.Match plus ``**`` for any number of directories."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            if body.startswith("^"):
                body = "!" + body[1:]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class DockerIgnore:
    """A .dockerignore file: ordered patterns, the last matching one decides."""

    rules: tuple[tuple[bool, re.Pattern[str]], ...]

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        """Read the patterns; ``!`` re-includes; paths are cleaned as Docker cleans them."""
        rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line[1:].strip() if include else line
            cleaned = posixpath.normpath("/" + pattern).lstrip("/") or "."
            rules.append((include, _glob_to_regex(cleaned)))
        return cls(tuple(rules))

    def excluded(self, path: str) -> bool:
        """Whether the build context leaves out ``path`` (relative, with / separators).

        A pattern that matches a parent directory matches everything inside it, which is how
        ``!app/`` brings back the whole app/ tree after ``**``.
        """
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for include, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                result = not include
        return result


# ----------------------------------------------------------------------------- nginx.conf


@dataclass
class NginxBlock:
    """An nginx directive with its arguments and, for blocks, the directives inside."""

    name: str
    args: list[str]
    children: list[NginxBlock] = field(default_factory=list)

    def find(self, name: str) -> list[NginxBlock]:
        """Every directive called ``name`` at any depth below this one."""
        found: list[NginxBlock] = []
        for child in self.children:
            if child.name == name:
                found.append(child)
            found.extend(child.find(name))
        return found

    def directive(self, name: str) -> NginxBlock | None:
        """The directive called ``name`` directly inside this block, if any."""
        return next((child for child in self.children if child.name == name), None)


_NGINX_TOKEN = re.compile(r"""\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};"']+""")


def parse_nginx(text: str) -> NginxBlock:
    """Parse nginx.conf into a tree of directives rooted at a pseudo-block ``main``."""
    root = NginxBlock("main", [])
    stack = [root]
    words: list[str] = []
    position = 0
    while position < len(text):
        match = _NGINX_TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read nginx.conf at offset {position}")
        position = match.end()
        token = match.group()
        if token.isspace() or token.startswith("#"):
            continue
        if token in {";", "{"}:
            if not words:
                raise ValueError(f"empty directive before {token!r} at offset {position}")
            node = NginxBlock(words[0], words[1:])
            stack[-1].children.append(node)
            if token == "{":
                stack.append(node)
            words = []
        elif token == "}":
            if words or len(stack) == 1:
                raise ValueError(f"unbalanced '}}' at offset {position}")
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    if words or len(stack) != 1:
        raise ValueError("nginx.conf ends inside a directive or block")
    return root


_NGINX_SIZE = re.compile(r"(?P<number>\d+)(?P<unit>[kKmMgG]?)\Z")


def nginx_size(value: str) -> int:
    """An nginx size (``6m``, ``512k``, ``1024``) in bytes."""
    match = _NGINX_SIZE.match(value)
    if match is None:
        raise ValueError(f"not an nginx size: {value!r}")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match["unit"].lower()]
    return int(match["number"]) * scale


_NGINX_TIME = re.compile(r"(?P<number>\d+)(?P<unit>ms|s|m|h|d)?\Z")


def nginx_seconds(value: str) -> float:
    """An nginx time (``4s``, ``500ms``, ``1m``; a bare number is seconds) in seconds."""
    match = _NGINX_TIME.match(value)
    if match is None:
        raise ValueError(f"not an nginx time: {value!r}")
    scale = {None: 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match["unit"]]
    return int(match["number"]) * scale


# ----------------------------------------------------------------------------- Compose values

_COMPOSE_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: str, environment: Mapping[str, str]) -> str:
    """Compose's variable interpolation: ``$$``, ``${X}``, ``${X:-d}``, ``${X-d}``, ``${X:+r}``."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        present = name in environment
        current = environment.get(name, "")
        if op in {":-", "-"}:
            use_default = not current if op == ":-" else not present
            return arg if use_default else current
        if op in {":+", "+"}:
            return arg if (current if op == ":+" else present) else ""
        if op in {":?", "?"}:
            if (not current) if op == ":?" else (not present):
                raise ValueError(f"required variable {name} is not set: {arg}")
            return current
        return current

    return _COMPOSE_VARIABLE.sub(replace, value)


_DURATION_PART = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>us|ms|s|m|h)")


def compose_seconds(value: str) -> float:
    """A Compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    parts = list(_DURATION_PART.finditer(value))
    if not parts or "".join(part.group() for part in parts) != value:
        raise ValueError(f"not a Compose duration: {value!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(part["number"]) * scale[part["unit"]] for part in parts)


_BYTES = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[bkmg]?)b?\Z", re.IGNORECASE)


def compose_bytes(value: str | int) -> int:
    """A Compose byte value (``1536M``, ``4G``, ``128m``, ``1gb`` or a plain integer) in bytes."""
    if isinstance(value, int):
        return value
    match = _BYTES.match(value.strip())
    if match is None:
        raise ValueError(f"not a Compose byte value: {value!r}")
    scale = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match["unit"].lower()]
    return int(float(match["number"]) * scale)
