"""CI (.ci/run) runs the suite against a real PostgreSQL: it installs and starts one, and
hands its URL to the tests with REQUIRE_POSTGRES=1, so that the PostgreSQL tests fail there
instead of skipping. The start script's URL is checked by connecting to it."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess

import pytest
import sqlalchemy

from tests.deploy.conftest import REPO

CI = REPO / ".ci" / "run"
START = "scripts/start-postgres.sh"
URL_VARIABLE = "DIGITS_TEST_POSTGRES_URL"


def _lines() -> list[str]:
    """The lines of .ci/run, comments blanked."""
    lines = [line.strip() for line in CI.read_text().splitlines()]
    return ["" if line.startswith("#") else line for line in lines]


def _first(lines: list[str], needle: str) -> int:
    found = [index for index, line in enumerate(lines) if needle in line]
    assert found, f".ci/run never runs {needle!r}"
    return found[0]


def test_ci_starts_postgresql_and_requires_it_before_the_suite() -> None:
    lines = _lines()
    suite = lines.index("make test")
    install = _first(lines, ".ci/install-postgres.sh")
    start = _first(lines, START)
    exported = _first(lines, f"export {URL_VARIABLE}")
    assert install < start < exported < suite, "installed, started and exported before the suite"
    # The URL is what the script prints, and a failure to start stops CI (set -e).
    assert lines[start] == f'{URL_VARIABLE}="$({START})"'
    assert "set -euo pipefail" in lines
    assert "REQUIRE_POSTGRES=1" in shlex.split(lines[exported])


def test_the_install_step_provides_what_the_start_script_runs() -> None:
    install = (REPO / ".ci" / "install-postgres.sh").read_text()
    start = (REPO / START).read_text()
    # The start script looks for Debian's server binaries, which the postgresql package holds.
    assert "/usr/lib/postgresql/*/bin" in start
    assert "/usr/lib/postgresql/*/bin/postgres" in install
    assert "apt-get install" in install
    assert "postgresql" in shlex.split(install.split("apt-get install", 1)[1].split("\n\n")[0])


def _server_up() -> bool:
    ready = shutil.which("pg_isready") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_isready"))), None
    )
    port = os.environ.get("PGPORT", "55432")
    if ready is None:
        return False
    result = subprocess.run(
        [str(ready), "-q", "-h", "127.0.0.1", "-p", port], check=False, timeout=10
    )
    return result.returncode == 0


def test_the_start_script_prints_a_url_the_tests_can_connect_to() -> None:
    # Where a server is up (CI starts it before the suite), the script reuses it and prints its
    # URL, and `make postgres` prints the line that exports it: both must reach the server.
    if not _server_up():
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail("REQUIRE_POSTGRES=1 but no PostgreSQL answers on the test port")
        pytest.skip("no PostgreSQL on the test port (make postgres starts one)")
    url = subprocess.run(
        ["bash", START], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
    finally:
        engine.dispose()
    make = shutil.which("make")
    if make is not None:
        printed = subprocess.run(
            [make, "-s", "postgres"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert printed == f"export {URL_VARIABLE}={url}"
