"""TensorFlow Serving's ``models.config`` (protobuf text format), read into a version policy.

The same file can drive both servers: ``deploy/tfserving/models.config`` for TF Serving, and
``DIGITS_VERSION_CONFIG`` here, re-read whenever it changes, so a rollback is an edit of one
line (pin a version, or move a label) with no restart and no file deletion. Only the part of
``ModelServerConfig`` that concerns versions is used: ``model_version_policy`` (``latest``
with ``num_versions``, ``specific`` with ``versions``) and ``version_labels``; the model's
directory remains ``DIGITS_MODELS_DIR``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from app.serving.model_dir import NotRegularFileError, read_regular_file
from app.serving.policy import MAX_LISTED, VersionPolicy, parse_version_name

#: A config larger than this is refused (a real one is a few hundred bytes).
MAX_CONFIG_BYTES: Final = 64 * 1024
#: Deepest nesting of messages accepted (a real models.config nests 4 deep). The parser checks
#: it itself: a file must never reach Python's recursion limit.
MAX_NESTING: Final = 32
#: Longest number accepted, in digits (an int64 has 19, a uint64 20): ``int()`` refuses strings
#: of over 4,300 digits with a ValueError of its own, and anything this long is no version.
MAX_NUMBER_DIGITS: Final = 20
MODEL_NAME: Final = "mnist"

_TOKEN: Final = re.compile(
    r'\s+|#[^\n]*|(?P<string>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')'
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>[-+]?[0-9]+)|(?P<punct>[{}:<>])"
)

Message = dict[str, list["Value"]]
Value = str | int | Message


class ConfigError(ValueError):
    """The config file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class _Token:
    kind: str
    value: str
    line: int

    def is_punct(self, text: str) -> bool:
        return self.kind == "punct" and self.value == text


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    line = 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ConfigError(f"line {line}: unexpected {text[position : position + 10]!r}")
        kind = match.lastgroup
        if kind is not None:
            value = match.group(kind)
            if kind == "number" and len(value.lstrip("+-")) > MAX_NUMBER_DIGITS:
                raise ConfigError(f"line {line}: a number of more than {MAX_NUMBER_DIGITS} digits")
            tokens.append(_Token(kind, value, line))
        line += text.count("\n", position, match.end())
        position = match.end()
    return tokens


def parse_text_proto(text: str) -> Message:
    """A protobuf text-format message as nested dicts of repeated values.

    Nesting deeper than :data:`MAX_NESTING` and numbers longer than :data:`MAX_NUMBER_DIGITS`
    are syntax errors here, so that every problem of a file is a :class:`ConfigError`.

    Raises:
        ConfigError: on a syntax error.
    """
    tokens = _tokens(text)
    position = 0

    def message(closing: str | None, depth: int) -> Message:
        nonlocal position
        fields: Message = {}
        while True:
            if position >= len(tokens):
                if closing is not None:
                    raise ConfigError(f"a '{closing}' is missing at the end")
                return fields
            token = tokens[position]
            if closing is not None and token.is_punct(closing):
                position += 1
                return fields
            if token.kind != "name":
                raise ConfigError(
                    f"line {token.line}: a field name was expected, found {token.value!r}"
                )
            name = token.value
            position += 1
            if position < len(tokens) and tokens[position].is_punct(":"):
                position += 1
            if position >= len(tokens):
                raise ConfigError(f"line {token.line}: field '{name}' has no value")
            value = tokens[position]
            position += 1
            item: Value
            if value.is_punct("{") or value.is_punct("<"):
                if depth >= MAX_NESTING:
                    raise ConfigError(
                        f"line {value.line}: messages nested more than {MAX_NESTING} deep"
                    )
                item = message("}" if value.value == "{" else ">", depth + 1)
            elif value.kind == "number":
                item = int(value.value)  # at most MAX_NUMBER_DIGITS digits
            elif value.kind == "string":
                item = value.value[1:-1]
            elif value.kind == "name":
                item = value.value  # an enum value
            else:
                raise ConfigError(f"line {value.line}: field '{name}' has no value")
            fields.setdefault(name, []).append(item)

    return message(None, 0)


def read_config_file(path: Path) -> str:
    """The text of a ``models.config``: a regular UTF-8 file of at most MAX_CONFIG_BYTES.

    A FIFO, a device (``/dev/zero``, through a symlink too), a directory or a larger file is
    refused without blocking or reading more than ``MAX_CONFIG_BYTES + 1`` bytes.

    Raises:
        ConfigError: naming why the file cannot be read.
    """
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except NotRegularFileError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot be read ({type(exc).__name__})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})") from exc


def _one(fields: Message, name: str) -> Message | None:
    values = fields.get(name, [])
    if len(values) > 1:
        raise ConfigError(f"'{name}' is given {len(values)} times")
    if values and not isinstance(values[0], dict):
        raise ConfigError(f"'{name}' must be a message {{...}}")
    return values[0] if values and isinstance(values[0], dict) else None


def _version(value: Value, where: str) -> int:
    parsed = parse_version_name(str(value)) if isinstance(value, int) else "not a number"
    if isinstance(parsed, str):
        raise ConfigError(f"{where}: {value!r} is not a version number ({parsed})")
    return parsed


def policy_from_config(text: str, base: VersionPolicy) -> VersionPolicy:
    """The version policy a ``models.config`` describes, with ``base``'s gate and default label.

    Raises:
        ConfigError: naming what is wrong (syntax, no 'mnist' model, an unsupported policy).
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return _policy(parse_text_proto(text), base)
    except ConfigError:
        raise
    except (ValueError, RecursionError) as exc:
        # The limits above make this unreachable; should one be missed, the file is still a
        # config error, not a failure of the poller.
        raise ConfigError(f"cannot be read as a models.config ({type(exc).__name__})") from exc


def _policy(root: Message, base: VersionPolicy) -> VersionPolicy:
    config_list = _one(root, "model_config_list")
    configs = [c for c in (config_list or {}).get("config", []) if isinstance(c, dict)]
    chosen = [c for c in configs if c.get("name") == [MODEL_NAME]]
    if not chosen and len(configs) == 1 and "name" not in configs[0]:
        chosen = configs
    if len(chosen) != 1:
        raise ConfigError(f'model_config_list needs exactly one config with name: "{MODEL_NAME}"')
    config = chosen[0]
    policy_message = _one(config, "model_version_policy") or {"latest": [{}]}
    kinds = [k for k in policy_message if k in {"latest", "specific", "all"}]
    if len(kinds) != 1 or len(policy_message) != 1:
        raise ConfigError("model_version_policy needs exactly one of latest, specific")
    kind = kinds[0]
    body = _one(policy_message, kind) or {}
    if kind == "all":
        raise ConfigError("the 'all' version policy is not supported here: use 'specific'")
    latest_versions = 1
    versions: tuple[int, ...] = ()
    if kind == "latest":
        counts = body.get("num_versions", [1])
        if len(counts) != 1 or not isinstance(counts[0], int) or not 1 <= counts[0] <= MAX_LISTED:
            raise ConfigError(f"latest.num_versions must be one number from 1 to {MAX_LISTED}")
        latest_versions = counts[0]
    else:
        versions = tuple(
            sorted({_version(v, "specific.versions") for v in body.get("versions", [])})
        )
        if not versions or len(versions) > MAX_LISTED:
            raise ConfigError(f"specific needs 1 to {MAX_LISTED} versions")
    labels: dict[str, int] = {}
    for entry in config.get("version_labels", []):
        if not isinstance(entry, dict):
            raise ConfigError('version_labels entries are { key: "label" value: version }')
        keys, values = entry.get("key", []), entry.get("value", [])
        if len(keys) != 1 or len(values) != 1 or not isinstance(keys[0], str):
            raise ConfigError('version_labels entries are { key: "label" value: version }')
        labels[keys[0]] = _version(values[0], f"version label '{keys[0]}'")
    try:
        return replace(
            base,
            kind="latest" if kind == "latest" else "specific",
            versions=versions,
            latest_versions=latest_versions,
            labels=labels,
        )
    except ValueError as exc:  # the policy's own checks (labels, default label)
        raise ConfigError(str(exc)) from exc
