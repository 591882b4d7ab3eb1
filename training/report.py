"""The report written beside each model version: PNG figures a person can check at a glance.

A version measured on held-out labelled real digits (``--extra-data``) gets two more:
``real_digits.png``, its accuracy on MNIST's test set and on the real digits beside the served
version's (the two figures the promotion gate compares), and ``real_digit_mistakes.png``.

Matplotlib is imported lazily (only when a report is written) and used through ``Figure`` with
the Agg canvas, never pyplot: no display, no global backend state, safe in servers and tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from training.evaluate import Evaluation
from training.preprocess import IMAGE_SIZE, preprocess_array

FILES: Final = (
    "learning_curves.png",
    "confusion_matrix.png",
    "weights.png",
    "samples.png",
    "mistakes.png",
    "preprocessing.png",
)
#: Written only for a version measured on held-out real digits.
REAL_DIGIT_FILES: Final = ("real_digits.png", "real_digit_mistakes.png")
_DPI: Final = 100


def write_report(
    directory: Path,
    *,
    history: dict[str, list[float]],
    test: Evaluation,
    test_images: npt.NDArray[np.uint8],
    kernel: npt.NDArray[np.float32],
    preprocessing: str,
    title: str,
    real_digits: dict[str, Any] | None = None,
    real_evaluation: Evaluation | None = None,
    real_images: npt.NDArray[np.uint8] | None = None,
) -> list[Path]:
    """Write every figure of :data:`FILES` into ``directory``; return their paths.

    With ``real_digits`` (``metrics.json``'s section), the held-out real digits' evaluation and
    images, the figures of :data:`REAL_DIGIT_FILES` too.
    """
    directory.mkdir(parents=True, exist_ok=True)
    figures = {
        "learning_curves.png": _learning_curves(history, title),
        "confusion_matrix.png": _confusion(test, title),
        "weights.png": _weights(kernel, title),
        "samples.png": _samples(test, test_images, title),
        "mistakes.png": _mistakes(test, test_images, title),
        "preprocessing.png": _preprocessing(test, test_images, preprocessing),
    }
    names = list(FILES)
    if real_digits is not None and real_evaluation is not None and real_images is not None:
        figures["real_digits.png"] = _real_digits(real_digits, test.accuracy, title)
        figures["real_digit_mistakes.png"] = _mistakes(
            real_evaluation, real_images, title, "held-out real-digit"
        )
        names += REAL_DIGIT_FILES
    paths = []
    for name in names:
        path = directory / name
        figures[name].savefig(path, dpi=_DPI)
        paths.append(path)
    return paths


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _learning_curves(history: dict[str, list[float]], title: str) -> Any:
    figure = _figure(10, 4)
    axes = figure.subplots(1, 2)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key, label in ((axes[0], "loss", "cross-entropy"), (axes[1], "accuracy", "accuracy")):
        # Keras' training numbers are running means over each epoch, taken while the weights
        # still move; validation is measured at the end of the epoch.
        ax.plot(epochs, history.get(key, []), "o-", label="train (mean over epoch)")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label="validation (end of epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(f"{title}: learning curves")
    return figure


def _confusion(test: Evaluation, title: str) -> Any:
    figure = _figure(7, 6.2)
    ax = figure.subplots()
    counts = test.confusion
    # Log colour scale: the diagonal (~1000) would otherwise hide every error (~1-30).
    image = ax.imshow(np.log1p(counts), cmap="Blues")
    for (row, col), value in np.ndenumerate(counts):
        if value:
            dark = np.log1p(value) > 0.6 * np.log1p(counts.max())
            ax.text(col, row, str(value), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    figure.colorbar(image, ax=ax, label="log(1 + count)")
    ax.set_title(f"{title}: test confusion matrix (accuracy {test.accuracy:.4f})")
    return figure


def _weights(kernel: npt.NDArray[np.float32], title: str) -> Any:
    figure = _figure(12, 5.4)
    axes = figure.subplots(2, 5)
    # One symmetric scale for all ten templates so that their strengths compare honestly.
    limit = float(np.abs(kernel).max()) or 1.0
    image = None
    for digit, ax in enumerate(axes.flat):
        template = kernel[:, digit].reshape(IMAGE_SIZE, IMAGE_SIZE)
        image = ax.imshow(template, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"digit {digit}")
        ax.set_axis_off()
    figure.colorbar(image, ax=axes, shrink=0.8, label="weight (red: evidence for, blue: against)")
    figure.suptitle(f"{title}: the ten weight templates, on preprocessed 28×28 input")
    return figure


def _digit_grid(
    images: npt.NDArray[np.uint8], captions: list[str], wrong: list[bool], heading: str
) -> Any:
    # One mosaic image with text on top, not one axes per digit: ten times faster to draw.
    columns, pad, top = 10, 2, 9  # pixels between tiles, and above each tile for its caption
    rows = max(1, -(-len(images) // columns))
    cell_w, cell_h = IMAGE_SIZE + pad, IMAGE_SIZE + pad + top
    mosaic = np.full((rows * cell_h, columns * cell_w), 255, dtype=np.uint8)
    figure = _figure(columns * 1.25, rows * 1.6 + 0.4)
    ax = figure.subplots()
    for index, image in enumerate(images):
        y, x = (index // columns) * cell_h + top, (index % columns) * cell_w + pad // 2
        mosaic[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE] = image
        ax.text(x + IMAGE_SIZE / 2, y - 1.5, captions[index], ha="center", va="bottom",
                fontsize=8, color="red" if wrong[index] else "black")  # fmt: skip
    # Tiles are white ink on black, as MNIST; the gaps are white so the tiles stand apart.
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(heading)
    return figure


def _samples(test: Evaluation, images: npt.NDArray[np.uint8], title: str) -> Any:
    count = min(50, len(images))
    probability = test.probabilities[np.arange(count), test.digits[:count]]
    wrong = [bool(w) for w in test.digits[:count] != test.labels[:count]]
    captions = [
        f"{test.digits[i]} ({probability[i]:.2f})" + (f" ≠ {test.labels[i]}" if wrong[i] else "")
        for i in range(count)
    ]
    heading = (
        f"{title}: the first {count} test digits, predicted digit (probability); "
        "red = wrong (≠ true digit)"
    )
    return _digit_grid(images[:count], captions, wrong, heading)


def _mistakes(
    test: Evaluation, images: npt.NDArray[np.uint8], title: str, kind: str = "test"
) -> Any:
    wrong = np.flatnonzero(test.digits != test.labels)
    confidence = test.probabilities[wrong, test.digits[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][:40]
    captions = [
        f"{test.labels[i]}→{test.digits[i]} ({test.probabilities[i, test.digits[i]]:.2f})"
        for i in worst
    ]
    heading = (
        f"{title}: the {len(worst)} most confident of {len(wrong)} {kind} mistakes, "
        "true→predicted (probability)"
    )
    return _digit_grid(images[worst], captions, [True] * len(worst), heading)


def _real_digits(real: dict[str, Any], test_accuracy: float, title: str) -> Any:
    """MNIST test accuracy and held-out real-digit accuracy, this version beside the served one."""
    baseline = real.get("baseline")
    groups = ["MNIST test", f"real digits\n({real['items']} held out)"]
    ours = [test_accuracy, real["accuracy"]]
    theirs = [baseline["test_accuracy"], baseline["accuracy"]] if baseline else None
    sets = real.get("sets", [])
    for row in sets if len(sets) > 1 else []:  # one set: the total says it
        groups.append(f"{row['name']}\n({row['items']})")
        ours.append(row["accuracy"])
        if theirs is not None:
            theirs.append(row.get("baseline_accuracy", float("nan")))
    figure = _figure(max(9.0, 2.2 * len(groups) + 2), 4.5)
    ax = figure.subplots()
    x = np.arange(len(groups))
    width = 0.38
    bars = [(ours, title, -width / 2 if theirs else 0.0)]
    if theirs is not None and baseline is not None:
        bars.append((theirs, f"v{baseline['version']} (served when trained)", width / 2))
    for values, label, offset in bars:
        drawn = ax.bar(x + offset, values, width, label=label)
        ax.bar_label(drawn, fmt="%.4f", fontsize=8)
    low = min(v for values, _, _ in bars for v in values if np.isfinite(v))
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_xticks(x, groups)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=len(bars), frameon=False)
    ax.set_title(f"{title}: what the promotion gate compares (the same digits for both)")
    return figure


def _preprocessing(test: Evaluation, images: npt.NDArray[np.uint8], method: str) -> Any:
    # The first test example of each digit: raw input above, what the dense layer sees below.
    picks = [int(np.flatnonzero(test.labels == d)[0]) for d in np.unique(test.labels)]
    seen = preprocess_array(images[picks], method).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    figure = _figure(12, 3.2)
    axes = figure.subplots(2, max(len(picks), 1), squeeze=False)
    for column, index in enumerate(picks):
        axes[0, column].imshow(images[index], cmap="gray", vmin=0, vmax=255)
        axes[1, column].imshow(seen[column], cmap="gray", vmin=0.0, vmax=1.0)
        axes[0, column].set_title(f"test #{index}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel(method)
    figure.suptitle(f"What the model sees: raw test digits (top) after '{method}' (bottom)")
    return figure
