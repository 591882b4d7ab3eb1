"""TF Serving's models.config as the version policy, re-read live (rollback by editing it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving.models_config import (
    MAX_CONFIG_BYTES,
    MAX_NESTING,
    ConfigError,
    parse_text_proto,
    policy_from_config,
    read_config_file,
)
from app.serving.policy import Gate, VersionPolicy
from harness.servers import REPO
from tests.app.conftest import ModelsDir, make_settings
from tests.app.fake_models import add_version, make_store, served

BASE = VersionPolicy(gate=Gate(tolerance=0.01, min_accuracy=0.5))


def config(policy: str, labels: str = "") -> str:
    return f"""
    # a comment
    model_config_list {{
      config {{
        name: "mnist"
        base_path: "/models/mnist"
        model_platform: "tensorflow"
        model_version_policy {{ {policy} }}
        {labels}
      }}
    }}
    """


def test_the_projects_tf_serving_config_reads_as_latest() -> None:
    text = (REPO / "deploy" / "tfserving" / "models.config").read_text()
    policy = policy_from_config(text, BASE)
    assert (policy.kind, policy.latest_versions, dict(policy.labels)) == ("latest", 1, {})
    assert policy.gate == BASE.gate


def test_specific_versions_and_labels() -> None:
    labels = (
        'version_labels { key: "stable" value: 1 }\n'
        '        version_labels { key: "canary" value: 3 }'
    )
    policy = policy_from_config(config("specific { versions: 3 versions: 1 }", labels), BASE)
    assert policy.kind == "specific"
    assert policy.versions == (1, 3)
    assert dict(policy.labels) == {"stable": 1, "canary": 3}
    latest = policy_from_config(config("latest { num_versions: 2 }"), BASE)
    assert (latest.kind, latest.latest_versions) == ("latest", 2)


def test_text_format_details() -> None:
    parsed = parse_text_proto("a: 1 b < c: 'x' > b { c: \"y\" } d: ENUM")
    assert parsed == {"a": [1], "b": [{"c": ["x"]}, {"c": ["y"]}], "d": ["ENUM"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model_config_list { config { name: "mnist" ', "missing at the end"),
        ('model_config_list { config { name: "other" } }', "exactly one config"),
        (config("all {}"), "not supported"),
        (config("latest {} specific { versions: 1 }"), "exactly one of"),
        (config("specific {}"), "1 to 16 versions"),
        (config("specific { versions: -1 }"), "not a version number"),
        (config("latest { num_versions: 0 }"), "num_versions"),
        (config("latest {}", 'version_labels { key: "../x" value: 1 }'), "is not a label"),
        ('model_config_list { config { name: "mnist" } } ;', "unexpected"),
        # Past the parser's own limits: once a RecursionError and a ValueError of int().
        ("model_config_list { " + "a { " * 3000 + "}" * 3001, "line 1: messages nested more"),
        (config("latest { num_versions: " + "9" * 5000 + " }"), "line 8: a number of more than"),
        (config("specific { versions: " + "1" * 4301 + " }"), "more than 20 digits"),
        (config("latest {}", 'version_labels { key: "a" value: -' + "1" * 21 + " }"), "20 digits"),
        (config("specific { versions: " + "9" * 20 + " }"), "not a version number"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        policy_from_config(text, BASE)


def test_nesting_is_bounded_by_the_parser_itself() -> None:
    def nested(depth: int) -> str:
        return "a " * (depth > 0) + "{ a " * (depth - 1) + "{ b: 1 " + "}" * depth

    parsed = parse_text_proto(nested(MAX_NESTING))
    for _ in range(MAX_NESTING):
        parsed = parsed["a"][0]  # type: ignore[assignment]
    assert parsed == {"b": [1]}
    with pytest.raises(ConfigError, match=f"nested more than {MAX_NESTING} deep"):
        parse_text_proto(nested(MAX_NESTING + 1))


def test_the_config_file_is_read_only_when_it_is_a_small_regular_utf8_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "models.config"
    path.write_text(config("latest {}"))
    assert "model_config_list" in read_config_file(path)
    path.write_bytes(b"#" * MAX_CONFIG_BYTES)
    assert len(read_config_file(path)) == MAX_CONFIG_BYTES
    for content, message in [
        (b"#" * (MAX_CONFIG_BYTES + 1), f"larger than {MAX_CONFIG_BYTES} bytes"),
        (b"# \xff\xfe", "not UTF-8 text"),
    ]:
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=message):
            read_config_file(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_config_file(tmp_path / "missing")
    with pytest.raises(ConfigError, match="a directory, not a regular file"):
        read_config_file(tmp_path)


def test_rollback_by_editing_the_config_without_restart(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    for version in (1, 2, 3):
        add_version(models_dir, version)
    config_file = tmp_path / "models.config"
    store, _ = make_store(models_dir)
    store.policy_file = config_file

    def write(text: str) -> None:
        config_file.write_text(text)
        # Whatever the file system's timestamp resolution, the store sees a new version.
        stat = config_file.stat()
        os.utime(config_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    store.refresh()  # no file yet: the settings' policy, and the reason
    assert served(store) == [3]
    assert store.policy_error is not None
    assert "models.config cannot be read" in store.policy_error

    write(config("specific { versions: 2 }"))
    model = store.refresh()
    assert model is not None
    assert model.version == 2
    assert store.policy_source == "models.config"
    assert store.status().policy.kind == "specific"
    assert not store.policy_error

    write(config("latest { num_versions: 2 }", 'version_labels { key: "old" value: 1 }'))
    store.refresh()
    assert served(store) == [3, 2, 1]
    assert store.get().version == 3
    assert store.get(label="old").version == 1

    write("model_config_list { broken")
    store.refresh()
    assert served(store) == [3, 2, 1], "a bad edit keeps the previous policy"
    assert store.policy_error is not None
    assert "models.config" in store.policy_error


def test_model_endpoint_shows_the_config_and_its_errors(models: ModelsDir, tmp_path: Path) -> None:
    models.add(1, digit=1)
    models.add(2, digit=2)
    config_file = tmp_path / "models.config"
    config_file.write_text(
        config("specific { versions: 1 }", 'version_labels { key: "next" value: 2 }')
    )
    settings = make_settings(models.path, version_config=config_file, model_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        info = client.get("/model").json()
        assert info["version"] == 1
        assert info["policy"]["source"] == "models.config"
        assert info["policy"]["labels"] == {"next": 2}
        assert [v["version"] for v in info["served_versions"]] == [2, 1]
        answer = client.post(
            "/predict?label=next", files={"file": ("d.png", b"not an image", "image/png")}
        )
        assert answer.status_code == 400  # the label resolved; the upload is what is wrong
        config_file.write_text("model_config_list {")
        deadline = time.monotonic() + 30
        while client.get("/model").json()["policy"]["error"] is None:
            assert time.monotonic() < deadline, "the bad edit was not noticed"
            time.sleep(0.05)
        assert client.get("/model").json()["version"] == 1
