"""One small review round on real digits, end to end (benchmarks/bench_review.py in small):
200 ``usps-train`` digits read by a real server, every one queued (audit share 1), keyed through
the HTTP API by the scripted reviewer, exported, trained into a new version (one epoch, no
augmentation, no reader fit), decided by the live server's promotion gate, and measured beside
the bundled version on held-out digits that were never sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.serving.policy import Gate
from app.serving.report import read_report
from benchmarks.bench_review import BUNDLED_MODELS, RoundOptions, run_round
from harness.mnist import MISSING as MNIST_MISSING
from harness.mnist import mnist_dir
from harness.realdigits import MISSING, is_held_out, realdigits_dir

pytestmark = pytest.mark.slow

SENT = 200
MEASURED = 60


def test_a_small_round_keys_exports_trains_gates_and_measures(tmp_path: Path) -> None:
    root = realdigits_dir()
    if root is None:
        pytest.skip(MISSING)
    if mnist_dir() is None:
        pytest.skip(MNIST_MISSING)
    options = RoundOptions(
        usps=SENT,
        orand=0,
        epochs=1,
        augmentation="none",
        reader_fit="none",
        audit_share=1.0,
        measure=MEASURED,
        sets=("usps-train",),
    )
    result = run_round(options, tmp_path, root)

    # Every reading was queued, keyed with its truth, and exported.
    assert sum(result.sent.items.values()) == SENT
    assert len(result.sent.truth_of) == SENT
    assert result.reviewed.keyed == SENT
    assert result.reviewed.unknown == 0
    assert result.export["strings"] == SENT
    assert result.export["digits"] <= SENT
    # Exported digits are named by review id: the export's own held-out fifth is measured.
    [extra] = result.metrics["extra_data"]
    assert extra["fit_items"] + extra["held_out_items"] == extra["items"] > 0
    assert extra["weight"] == 1.0
    real = result.metrics["real_digits"]
    assert real["items"] == extra["held_out_items"]
    assert real["baseline"]["version"] == result.bundled

    # The live server's gate decided as the files say.
    models = tmp_path / "models"
    new, bundled = read_report(models / str(result.new)), read_report(models / str(result.bundled))
    reason = Gate(tolerance=0.005, min_accuracy=0.9).hold_reason(new, result.bundled, bundled)
    assert result.gate == ("served" if reason is None else f"held: {reason}")

    # Both versions measured on the same held-out digits, none of which was sent.
    assert set(result.rows) == {result.bundled, result.new}
    for rows in result.rows.values():
        assert [row.endpoint for row in rows] == ["/predict", "/recognize"]
        for row in rows:
            assert row.count == MEASURED
            assert all(is_held_out(Path(a.source).name) for a in row.answers if a.source)
    assert result.bundled == max(int(p.name) for p in BUNDLED_MODELS.iterdir() if p.name.isdigit())
