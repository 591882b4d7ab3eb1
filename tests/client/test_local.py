"""``digits read --local``: the service's own reading, in process, with the bundled models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import BUNDLED_MODELS, EXAMPLES, REPO, SERVED_VERSION, rows, run_cli

pytestmark = pytest.mark.slow


def test_local_reads_the_example_digits(tmp_path: Path) -> None:
    out = tmp_path / "digits.jsonl"
    (tmp_path / "bad.png").write_text("not an image")
    result = run_cli(
        "read",
        EXAMPLES / "digit.png",
        EXAMPLES / "digit-7.png",
        tmp_path / "bad.png",
        "--local",
        "--models-dir",
        BUNDLED_MODELS,
        "--out",
        out,
    )
    assert result.exit_code == 1, result.stderr  # bad.png
    table = {Path(str(row["path"])).name: row for row in rows(out)}
    assert table["digit.png"]["digits"] == "3"
    assert table["digit-7.png"]["digits"] == "7"
    assert table["digit.png"]["model_version"] == SERVED_VERSION, "the version the service serves"
    assert table["bad.png"]["error"] == "not_an_image"
    assert "2 read" in result.stderr


def test_local_reads_the_example_postal_code(tmp_path: Path) -> None:
    out = tmp_path / "codes.csv"
    result = run_cli(
        "read",
        EXAMPLES / "postal-code.png",
        "--local",
        "--recognize",
        "--expected-length",
        "5",
        "--out",
        out,
        env={"DIGITS_MODELS_DIR": str(BUNDLED_MODELS)},
    )
    assert result.exit_code == 0, result.stderr
    header, line = out.read_text().splitlines()
    row = dict(zip(header.split(","), line.split(","), strict=True))
    assert (row["digits"], row["needs_review"], row["reasons"]) == ("75011", "false", "")


def test_local_with_no_models_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(
        "read", EXAMPLES / "digit.png", "--local", "--models-dir", tmp_path / "nowhere"
    )
    assert result.exit_code == 2
    assert "no models directory" in result.stderr


def test_local_without_the_service_installed_says_so() -> None:
    # The service package hidden (as on a machine with the client alone): a clear message.
    hide = "import sys; sys.modules['app'] = None; from digits_client.cli import main; main()"
    environment = {**os.environ}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "client"), *environment.get("PYTHONPATH", "").split(os.pathsep)]
    )
    result = subprocess.run(
        [sys.executable, "-c", hide, "read", str(EXAMPLES / "digit.png"), "--local"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--local needs the service package" in " ".join(result.stderr.split())
