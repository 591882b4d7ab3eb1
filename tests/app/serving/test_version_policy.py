"""The model store's checks and policy, with fake predictors (no TensorFlow, fast).

The fakes are in :mod:`tests.app.fake_models`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from app.serving.output_check import ModelOutputError
from app.serving.policy import MAX_VERSION, Gate, VersionPolicy
from app.serving.probe import probe_set
from app.serving.store import ModelNotReadyError, VersionNotFoundError
from app.settings import Settings
from tests.app.fake_models import add_version, make_store, served

# --- version names ---------------------------------------------------------------------------


def test_a_bad_entry_never_stops_the_store(tmp_path: Path) -> None:
    (tmp_path / "²").mkdir()
    add_version(tmp_path, 1)
    store, _ = make_store(tmp_path)
    model = store.refresh()
    assert model is not None
    assert model.version == 1
    add_version(tmp_path, 2)
    assert store.refresh() is not None
    assert store.current is not None
    assert store.current.version == 2
    assert [e.name for e in store.status().ignored] == ["\\xb2"]


# --- the probe check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("digit12", "'digit' outside 0..9"),
        ("nan-inked", "non-finite probabilities on 41 of 42"),
        ("negative", "outside [0, 1]"),
        ("unnormalized", "do not sum to 1"),
        ("constant", "below the floor of 75%"),
        ("warm-fails", "warm-up call failed"),
    ],
)
def test_a_version_with_bad_outputs_is_never_served(
    tmp_path: Path, kind: str, fragment: str
) -> None:
    add_version(tmp_path, 1)
    store, recorder = make_store(tmp_path)
    store.refresh()
    add_version(tmp_path, 2, kind=kind)
    model = store.refresh()
    assert model is not None
    assert model.version == 1
    assert served(store) == [1]
    [failed] = store.failed
    assert failed.version == 2
    assert fragment in failed.reason
    assert recorder.failures == [(2, failed.reason)]
    # The same content is not tried again.
    store.refresh()
    assert len(recorder.failures) == 1
    with pytest.raises(VersionNotFoundError):
        store.get(version=2)


def test_invalid_answers_after_the_probe_raise_instead_of_reaching_a_caller(
    tmp_path: Path,
) -> None:
    add_version(tmp_path, 1, kind="nan-off-probe")
    store, _ = make_store(tmp_path)
    model = store.refresh()
    assert model is not None
    probe = probe_set().images
    probabilities, digits = model.predict(probe[:3].copy())
    assert list(digits) == list(probe_set().labels[:3])
    assert np.isfinite(probabilities).all()
    unseen = np.zeros((2, 28, 28), np.uint8)
    unseen[:, 10:18, 13:15] = 255
    with pytest.raises(ModelOutputError, match="version 1 gave an invalid answer"):
        model.predict(unseen)


def test_the_constant_model_passes_when_the_probe_floor_is_off(tmp_path: Path) -> None:
    add_version(tmp_path, 1, kind="constant")
    store, _ = make_store(tmp_path, probe_min_accuracy=0.0)
    model = store.refresh()
    assert model is not None
    assert model.probe is not None
    assert model.probe.accuracy == pytest.approx(0.1)
    assert model.probe.digits == 40


def test_a_failed_version_is_retried_when_a_file_inside_changes(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    broken = add_version(tmp_path, 2, kind="digit12")
    store, recorder = make_store(tmp_path)
    store.refresh()
    assert [f.version for f in store.failed] == [2]
    # Fixed in place: same file, another size; neither directory's mtime says so.
    kind_file = broken / "variables" / "kind.txt"
    stats = {p: p.stat() for p in (broken, broken / "variables")}
    kind_file.write_text("good")
    for path, stat in stats.items():
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    model = store.refresh()
    assert model is not None
    assert model.version == 2
    assert store.failed == []
    assert len(recorder.failures) == 1


def test_failure_reasons_carry_no_absolute_paths(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    (tmp_path / "2").mkdir()  # no model inside: the fake loader names the absolute path
    store, _ = make_store(tmp_path)
    store.refresh()
    [failed] = store.failed
    assert str(tmp_path) not in failed.reason
    assert "2/saved_model.pb" in failed.reason


# --- the promotion gate ------------------------------------------------------------------------


def test_a_worse_newer_version_is_held_and_a_good_one_promoted(tmp_path: Path) -> None:
    add_version(tmp_path, 1, accuracy=0.9727)
    store, recorder = make_store(tmp_path)
    store.refresh()
    add_version(tmp_path, 2, accuracy=0.8804)
    store.refresh()
    assert store.current is not None
    assert store.current.version == 1
    [held] = store.held
    assert held.version == 2
    assert held.test_accuracy == pytest.approx(0.8804)
    assert "0.8804" in held.reason
    assert "version 1's 0.9727" in held.reason
    store.refresh()
    assert len(recorder.holds) == 1, "a hold is counted once, not at every poll"
    # Within the tolerance of the baseline (version 1, not the held one): promoted.
    add_version(tmp_path, 3, accuracy=0.9700)
    store.refresh()
    assert store.current is not None
    assert store.current.version == 3
    assert served(store) == [3]
    assert [h.version for h in store.held] == [2]
    # A restart decides the same from the same files.
    again, _ = make_store(tmp_path)
    model = again.refresh()
    assert model is not None
    assert model.version == 3


def test_a_newer_version_without_accuracy_or_below_the_floor_is_held(tmp_path: Path) -> None:
    add_version(tmp_path, 1, accuracy=0.95)
    add_version(tmp_path, 2, accuracy=None)
    add_version(tmp_path, 3, accuracy=0.955)
    gate = Gate(tolerance=0.005, min_accuracy=0.96)
    store, _ = make_store(tmp_path, VersionPolicy(gate=gate))
    model = store.refresh()
    assert model is not None
    assert model.version == 1
    reasons = {h.version: h.reason for h in store.held}
    assert "no test accuracy" in reasons[2]
    assert "below the floor 0.9600" in reasons[3]


def test_a_version_reading_held_out_real_digits_worse_is_held_despite_better_mnist(
    tmp_path: Path,
) -> None:
    add_version(tmp_path, 1, accuracy=0.9718)
    # Better on MNIST, worse on the held-out real digits than version 1 on the same digits.
    worse = {"items": 1500, "accuracy": 0.9310, "baseline": {"version": 1, "accuracy": 0.9507}}
    add_version(tmp_path, 2, accuracy=0.9731, real_digits=worse)
    store, recorder = make_store(tmp_path)
    model = store.refresh()
    assert model is not None
    assert model.version == 1
    [held] = store.held
    assert held.version == 2
    assert held.test_accuracy == pytest.approx(0.9731)
    assert "real-digit accuracy 0.9310 on 1500 held-out labelled digits" in held.reason
    assert "version 1's 0.9507 on the same digits" in held.reason
    assert recorder.holds == [(2, held.reason)]
    # Better on the real digits, within the tolerance on MNIST: promoted.
    better = {"items": 1500, "accuracy": 0.9680, "baseline": {"version": 1, "accuracy": 0.9507}}
    add_version(tmp_path, 3, accuracy=0.9690, real_digits=better)
    model = store.refresh()
    assert model is not None
    assert model.version == 3
    assert [h.version for h in store.held] == [2]


@pytest.mark.parametrize(
    "real_digits",
    [
        {"items": 1500, "accuracy": 0.9490, "baseline": {"version": 1, "accuracy": 0.9507}},
        {"items": 1500, "accuracy": 0.80},  # no baseline: nothing to compare with
        {"items": 0, "accuracy": 0.10, "baseline": {"version": 1, "accuracy": 0.95}},
        {"items": 40, "accuracy": "0.1", "baseline": {"version": 1, "accuracy": 0.95}},
        {"items": 40, "accuracy": 0.1, "baseline": {"version": "1", "accuracy": 0.95}},
        [0.1],
    ],
    ids=["within-tolerance", "no-baseline", "no-items", "text", "bad-baseline", "not-an-object"],
)
def test_the_real_digit_check_needs_a_comparison_to_hold(
    tmp_path: Path, real_digits: object
) -> None:
    add_version(tmp_path, 1, accuracy=0.9718)
    add_version(tmp_path, 2, accuracy=0.9718, real_digits=real_digits)
    store, _ = make_store(tmp_path)
    model = store.refresh()
    assert model is not None
    assert model.version == 2
    assert store.held == []


def test_a_worse_mnist_figure_still_holds_a_version_better_on_real_digits(
    tmp_path: Path,
) -> None:
    add_version(tmp_path, 1, accuracy=0.9718)
    better = {"items": 1500, "accuracy": 0.99, "baseline": {"version": 1, "accuracy": 0.95}}
    add_version(tmp_path, 2, accuracy=0.9600, real_digits=better)
    store, _ = make_store(tmp_path)
    store.refresh()
    [held] = store.held
    assert "test accuracy 0.9600 is more than 0.0050 below version 1's 0.9718" in held.reason


def test_a_broken_newer_version_is_failed_not_held(tmp_path: Path) -> None:
    add_version(tmp_path, 1, accuracy=0.97)
    add_version(tmp_path, 2, kind="negative", accuracy=None)
    store, _ = make_store(tmp_path)
    store.refresh()
    assert store.held == []
    assert [f.version for f in store.failed] == [2]


def test_the_first_version_is_served_whatever_its_report(tmp_path: Path) -> None:
    add_version(tmp_path, 4, accuracy=None)
    store, _ = make_store(tmp_path, VersionPolicy(gate=Gate(min_accuracy=0.99)))
    model = store.refresh()
    assert model is not None
    assert model.version == 4
    assert model.test_accuracy is None


def test_removing_the_served_version_rolls_back(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    newest = add_version(tmp_path, 2)
    store, _ = make_store(tmp_path)
    store.refresh()
    assert served(store) == [2]
    for path in sorted(newest.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    newest.rmdir()
    model = store.refresh()
    assert model is not None
    assert model.version == 1
    assert served(store) == [1]


# --- policies and labels -----------------------------------------------------------------------


def test_specific_policy_pins_versions_and_overrides_the_gate(tmp_path: Path) -> None:
    add_version(tmp_path, 1, accuracy=0.97)
    add_version(tmp_path, 2, accuracy=0.80)
    add_version(tmp_path, 3, accuracy=0.98)
    store, _ = make_store(tmp_path, VersionPolicy(kind="specific", versions=(1, 2)))
    model = store.refresh()
    assert model is not None
    assert model.version == 2
    assert served(store) == [2, 1]
    assert store.held == []
    assert store.get(version=1).version == 1
    with pytest.raises(VersionNotFoundError, match="version 3 is not served"):
        store.get(version=3)


def test_labels_load_their_versions_and_route_requests(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    add_version(tmp_path, 2)
    add_version(tmp_path, 3)
    policy = VersionPolicy(labels={"stable": 1, "canary": 2, "old": 9})
    store, recorder = make_store(tmp_path, policy)
    store.refresh()
    assert served(store) == [3, 2, 1]
    assert store.get().version == 3
    assert store.get(label="stable").version == 1
    assert store.get(label="canary").version == 2
    assert store.get(version=2, label="canary").version == 2
    assert store.labels() == {"stable": 1, "canary": 2}
    assert recorder.statuses[-1].labels == {"stable": 1, "canary": 2}
    with pytest.raises(VersionNotFoundError, match="names version 9, which is not loaded"):
        store.get(label="old")
    with pytest.raises(VersionNotFoundError, match="no label 'nope'"):
        store.get(label="nope")
    with pytest.raises(VersionNotFoundError, match="names version 1, not 2"):
        store.get(version=2, label="stable")


def test_rollback_by_default_label(tmp_path: Path) -> None:
    add_version(tmp_path, 1)
    add_version(tmp_path, 2)
    policy = VersionPolicy(labels={"stable": 1}, default_label="stable")
    store, _ = make_store(tmp_path, policy)
    model = store.refresh()
    assert model is not None
    assert model.version == 1
    assert store.get(version=2).version == 2, "latest stays loaded and reachable by number"


def test_an_empty_store_is_not_ready(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path)
    assert store.refresh() is None
    with pytest.raises(ModelNotReadyError):
        store.get()
    with pytest.raises(ModelNotReadyError):
        store.get(version=1)


def test_observer_sees_served_held_and_failed(tmp_path: Path) -> None:
    add_version(tmp_path, 1, accuracy=0.97)
    add_version(tmp_path, 2, accuracy=0.5)
    add_version(tmp_path, 3, kind="digit12")
    (tmp_path / "²").mkdir()
    store, recorder = make_store(tmp_path)
    store.refresh()
    status = recorder.statuses[-1]
    assert [m.version for m in status.served] == [1]
    assert [h.version for h in status.held] == [2]
    assert [f.version for f in status.failed] == [3]
    assert len(status.ignored) == 1
    assert status.on_disk == [3, 2, 1]


# --- settings ------------------------------------------------------------------------------------


def test_policy_settings_are_parsed_and_checked(tmp_path: Path) -> None:
    settings = Settings(
        models_dir=tmp_path,
        version_policy="specific",
        versions="3, 1",
        version_labels="stable=1, canary=3",
        default_label="stable",
        promotion_tolerance=0.01,
    )
    policy = settings.policy()
    assert policy.kind == "specific"
    assert policy.versions == (1, 3)
    assert dict(policy.labels) == {"stable": 1, "canary": 3}
    assert policy.default_label == "stable"
    assert policy.gate.tolerance == 0.01
    assert Settings(models_dir=tmp_path).policy().kind == "latest"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"version_policy": "specific"}, "needs the versions"),
        ({"versions": "1,²"}, "not a version number"),
        ({"versions": str(MAX_VERSION + 1)}, r"2\^53"),
        ({"version_labels": "stable:1"}, "is not label=version"),
        ({"version_labels": "stable=1,stable=2"}, "given twice"),
        ({"default_label": "stable"}, "not one of the version labels"),
    ],
)
def test_bad_policy_settings_are_refused_with_a_reason(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(models_dir=tmp_path, **overrides)  # type: ignore[arg-type]
