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
from dataclasses import replace
from typing import Final

from app.serving.policy import MAX_LISTED, VersionPolicy, parse_version_name

#: A config larger than this is refused (a real one is a few hundred bytes).
MAX_CONFIG_BYTES: Final = 64 * 1024
MODEL_NAME: Final = "mnist"

_TOKEN: Final = re.compile(
    r'\s+|#[^\n]*|(?P<string>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')'
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>[-+]?[0-9]+)|(?P<punct>[{}:<>])"
)

Message = dict[str, list["Value"]]
Value = str | int | Message


class ConfigError(ValueError):
    """The config file cannot be used; the message says where and why."""


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            line = text.count("\n", 0, position) + 1
            raise ConfigError(f"line {line}: unexpected {text[position : position + 10]!r}")
        position = match.end()
        kind = match.lastgroup
        if kind is not None:
            tokens.append((kind, match.group(kind)))
    return tokens


def parse_text_proto(text: str) -> Message:
    """A protobuf text-format message as nested dicts of repeated values.

    Raises:
        ConfigError: on a syntax error.
    """
    tokens = _tokens(text)
    position = 0

    def message(closing: str | None) -> Message:
        nonlocal position
        fields: Message = {}
        while True:
            if position >= len(tokens):
                if closing is not None:
                    raise ConfigError(f"a '{closing}' is missing at the end")
                return fields
            kind, value = tokens[position]
            if kind == "punct" and value == closing:
                position += 1
                return fields
            if kind != "name":
                raise ConfigError(f"a field name was expected, found {value!r}")
            position += 1
            if position < len(tokens) and tokens[position] == ("punct", ":"):
                position += 1
            if position >= len(tokens):
                raise ConfigError(f"field '{value}' has no value")
            next_kind, next_value = tokens[position]
            position += 1
            item: Value
            if next_kind == "punct" and next_value in "{<":
                item = message("}" if next_value == "{" else ">")
            elif next_kind == "number":
                item = int(next_value)
            elif next_kind == "string":
                item = next_value[1:-1]
            elif next_kind == "name":
                item = next_value  # an enum value
            else:
                raise ConfigError(f"field '{value}' has no value")
            fields.setdefault(value, []).append(item)

    return message(None)


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
    root = parse_text_proto(text)
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
