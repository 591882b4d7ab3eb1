"""Hostile files in the poller's way: the version policy file and the models directory.

``models.config`` (``DIGITS_VERSION_CONFIG``) nested 3,000 deep, holding a number of 5,000
digits, replaced by a FIFO, or by a symlink to ``/dev/zero``; a version directory holding a FIFO.
Each once stopped every poll (a RecursionError or ValueError at every poll, with a traceback
each second) or blocked the poller for good. Now each is a reason in ``/model`` within one poll,
logged once, without a traceback, and versions dropped in afterwards are still loaded.

Most tests use the fake predictors (no TensorFlow); one runs the app with real models.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving.store import ModelStore
from app.settings import Settings
from tests.app.conftest import ModelsDir, make_settings
from tests.app.fake_models import add_version, make_store, served

GOOD = 'model_config_list { config { name: "mnist" model_version_policy { latest { } } } }'


def deep_nesting(path: Path) -> None:
    path.write_text("model_config_list { " + "a { " * 3000 + "}" * 3001)


def huge_number(path: Path) -> None:
    path.write_text(
        'model_config_list { config { name: "mnist" model_version_policy { latest { '
        f"num_versions: {'9' * 5000} }} }} }} }}"
    )


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


#: Each attack, and what the reason in /model says.
ATTACKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "deep nesting": (deep_nesting, "nested more than 32 deep"),
    "huge number": (huge_number, "a number of more than 20 digits"),
    "fifo": (fifo, "a FIFO, not a regular file"),
    "/dev/zero via a symlink": (dev_zero, "a character device, not a regular file"),
}


@pytest.fixture(autouse=True)
def no_blocking_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of a FIFO or a device through pathlib fails instead of hanging or filling memory.

    The store read its files with ``Path.read_text``, which blocks on a FIFO and reads
    ``/dev/zero`` until memory runs out: a regression must fail these tests, not take the
    machine down. Regular files read as ever.
    """
    for name in ("read_text", "read_bytes", "open"):
        original = getattr(Path, name)

        def guarded(self: Path, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            try:
                mode = os.stat(self).st_mode
            except OSError:
                mode = stat.S_IFREG
            if not stat.S_ISREG(mode):
                raise AssertionError(f"{self.name} read though it is not a regular file")
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(Path, name, guarded)


class Records(logging.Handler):
    """The log records the service's logger emits."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Iterator[Records]:
    """The service's log records, each once (its logger may or may not propagate to caplog's)."""
    service = logging.getLogger("app")
    handler, level = Records(), service.level
    service.addHandler(handler)
    service.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        service.removeHandler(handler)
        service.setLevel(level)


def refresh_within(store: ModelStore, seconds: float = 10.0) -> None:
    """One refresh, as a poll makes it; fails (instead of hanging) when it does not finish."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            store.refresh()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the refresh blocked"
    assert not errors, f"the refresh failed: {errors[0]!r}"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def wait_polls(last_checked: Callable[[], object], count: int) -> None:
    """Until ``count`` more polls have started (a refresh sets last_checked as it starts)."""
    deadline = time.monotonic() + 10.0
    for _ in range(count):
        before = last_checked()
        while last_checked() == before:
            assert time.monotonic() < deadline, "the poller stopped"
            time.sleep(0.02)


def assert_no_traceback(records: list[logging.LogRecord]) -> None:
    assert not [r.getMessage() for r in records if r.exc_info], "a traceback was logged"


def policy_errors_logged(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if "version policy file not used" in r.getMessage()]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_on_the_config_is_a_reason_after_one_poll_and_versions_still_load(
    tmp_path: Path, attack: str, logs: Records
) -> None:
    make_hostile, reason = ATTACKS[attack]
    models_dir = tmp_path / "models"
    add_version(models_dir, 1)
    config_file = tmp_path / "models.config"
    config_file.write_text(GOOD)
    store, _ = make_store(models_dir)
    store.policy_file = config_file
    refresh_within(store)
    assert store.policy_error is None
    assert store.policy_source == "models.config"

    make_hostile(config_file)
    refresh_within(store)  # one poll
    assert store.policy_error is not None
    assert reason in store.policy_error
    assert store.policy.kind == "latest", "the last good policy stays"
    assert served(store) == [1]

    add_version(models_dir, 2)
    for _ in range(3):
        refresh_within(store)
    assert served(store) == [2], "a version dropped in afterwards is loaded"
    assert reason in (store.policy_error or "")
    assert len(policy_errors_logged(logs.records)) == 1, "logged once, not at every poll"
    assert_no_traceback(logs.records)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_poller_keeps_running_through_an_attack(
    tmp_path: Path, attack: str, logs: Records
) -> None:
    make_hostile, reason = ATTACKS[attack]
    models_dir = tmp_path / "models"
    add_version(models_dir, 1)
    config_file = tmp_path / "models.config"
    config_file.write_text(GOOD)
    store, _ = make_store(models_dir)
    store.policy_file = config_file
    refresh_within(store)
    store.start_polling(0.02)
    try:
        make_hostile(config_file)
        wait_for(lambda: reason in (store.policy_error or ""))
        add_version(models_dir, 2)
        wait_for(lambda: served(store) == [2])
        wait_polls(lambda: store.last_checked, 3)  # the reason is not logged again
    finally:
        store.stop_polling(timeout=2.0)
    assert len(policy_errors_logged(logs.records)) == 1
    assert not [r for r in logs.records if "model poll failed" in r.getMessage()]
    assert_no_traceback(logs.records)


def test_a_good_config_after_an_attack_is_used_again(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    for version in (1, 2):
        add_version(models_dir, version)
    config_file = tmp_path / "models.config"
    config_file.write_text(GOOD)
    store, _ = make_store(models_dir)
    store.policy_file = config_file
    fifo(config_file)
    refresh_within(store)
    assert "FIFO" in (store.policy_error or "")
    config_file.unlink()
    config_file.write_text(
        'model_config_list { config { name: "mnist" '
        "model_version_policy { specific { versions: 1 } } } }"
    )
    refresh_within(store)
    assert store.policy_error is None
    assert served(store) == [1]


def test_a_version_holding_a_fifo_is_failed_not_waited_for(tmp_path: Path, logs: Records) -> None:
    models_dir = tmp_path / "models"
    add_version(models_dir, 1)
    store, _ = make_store(models_dir)
    refresh_within(store)
    # metrics.json is read at every poll that finds it changed (the promotion gate).
    broken = add_version(models_dir, 2, accuracy=None)
    os.mkfifo(broken / "metrics.json")
    refresh_within(store)
    assert served(store) == [1]
    (failed,) = store.failed
    assert failed.version == 2
    assert "metrics.json (a FIFO)" in failed.reason
    # Any other file a load would read: a device, through a symlink.
    device = add_version(models_dir, 3)
    (device / "variables" / "variables.data").symlink_to("/dev/zero")
    refresh_within(store)
    assert served(store) == [1]
    assert [f.version for f in store.failed] == [3, 2]
    assert "variables/variables.data (a character device)" in store.failed[0].reason
    add_version(models_dir, 4)
    refresh_within(store)
    assert served(store) == [4]
    assert_no_traceback(logs.records)


def test_a_surprise_at_every_poll_is_logged_once(
    tmp_path: Path, logs: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = make_store(tmp_path)
    calls: list[int] = []
    broken = True

    def refresh() -> None:
        calls.append(1)
        if broken:
            raise RuntimeError("a bug")

    monkeypatch.setattr(store, "refresh", refresh)
    store.start_polling(0.01)
    try:
        wait_for(lambda: len(calls) >= 5)
        broken = False
        count = len(calls)
        wait_for(lambda: len(calls) >= count + 2)
    finally:
        store.stop_polling(timeout=2.0)
    failures = [r for r in logs.records if r.getMessage() == "model poll failed"]
    assert len(failures) == 1, "one traceback, not one per poll"
    assert failures[0].exc_info is not None
    assert any("model poll works again" in r.getMessage() for r in logs.records)


def test_polling_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITS_MODEL_POLL_SECONDS", raising=False)
    default = Settings().model_poll_seconds
    assert 0 < default <= 5, "on by default, as TF Serving's file-system poll is"
    description = Settings.model_fields["model_poll_seconds"].description or ""
    assert "TensorFlow Serving" in description
    assert "0 disables" in description


def test_model_endpoint_shows_each_attack_within_a_poll(
    models: ModelsDir, tmp_path: Path, logs: Records
) -> None:
    models.add(1, digit=1)
    config_file = tmp_path / "models.config"
    config_file.write_text(GOOD)
    settings = make_settings(models.path, version_config=config_file, model_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:

        def model() -> dict[str, Any]:
            response = client.get("/model")
            assert response.status_code == 200
            return response.json()  # type: ignore[no-any-return]

        assert model()["policy"]["error"] is None
        for make_hostile, reason in ATTACKS.values():
            make_hostile(config_file)
            # The poll running now may have looked before the change: the next one to start
            # sees it, and it is over once a third has started (polls run one at a time).
            wait_polls(lambda: model()["last_checked"], 2)
            info = model()
            assert reason in (info["policy"]["error"] or ""), info["policy"]
            assert info["policy"]["source"] == "models.config"
            assert info["version"] == 1
            if config_file.is_symlink() or not config_file.is_file():
                config_file.unlink()
                config_file.write_text(GOOD)
        models.add(2, digit=2)
        wait_for(lambda: model()["version"] == 2, timeout=60)
    assert len(policy_errors_logged(logs.records)) == len(ATTACKS)
    assert_no_traceback(logs.records)
