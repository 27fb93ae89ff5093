"""Figures of an evaluation and of a training run, written as PNG files.

Every function builds a `matplotlib.figure.Figure` itself and saves it; no
pyplot is imported, so there is no global figure state, no GUI backend is
ever selected (a bare Figure renders PNG through Agg) and the functions can
run in a headless process or a worker thread.

Inputs are plain data so the module does not depend on how scores were
produced: ``per_model[model][machine_id] = (labels, scores)`` with labels 0
(normal) / 1 (anomalous), both of shape (n_clips,).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from training.metrics import MAX_FPR, confusion_counts

LabelledScores = tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]
PerModel = Mapping[str, Mapping[str, LabelledScores]]

NORMAL_COLOR = "tab:blue"
ANOMALY_COLOR = "tab:red"
_MODEL_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
_DPI = 110
_MAX_COLUMNS = 4
_BIN_TICKS_HZ = (100, 250, 500, 1000, 2000, 4000, 8000)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _grid(n_panels: int, *, max_columns: int = _MAX_COLUMNS) -> tuple[int, int]:
    columns = max(1, min(n_panels, max_columns))
    return math.ceil(n_panels / columns), columns


def _machine_ids(per_model: Mapping[str, Mapping[str, object]]) -> list[str]:
    # Union over models, in the order the first model lists them.
    ids: list[str] = []
    for by_id in per_model.values():
        ids += [machine_id for machine_id in by_id if machine_id not in ids]
    return ids


def plot_roc(
    per_model: PerModel,
    path: str | Path,
    *,
    thresholds: Mapping[str, float] | None = None,
    max_fpr: float = MAX_FPR,
) -> Path:
    """ROC curve per machine ID, all models on the same axis of an ID.

    The region FPR <= `max_fpr` that pAUC measures is shaded; with
    `thresholds` (per model) the operating point of the decisions is marked.
    """
    if not per_model:
        raise ValueError("no model results to plot")
    ids = _machine_ids(per_model)
    rows, columns = _grid(len(ids))
    fig = Figure(figsize=(3.6 * columns, 3.5 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, machine_id in zip(axes[: len(ids)], ids, strict=True):
        ax.axvspan(0, max_fpr, color="0.9", label=f"pAUC region (FPR ≤ {max_fpr:g})")
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
        for color, (model, by_id) in zip(itertools.cycle(_MODEL_COLORS), per_model.items(), strict=False):
            if machine_id not in by_id:
                continue
            labels, scores = (np.asarray(a) for a in by_id[machine_id])
            fpr, tpr, _ = roc_curve(labels, scores)
            auc = roc_auc_score(labels, scores)
            pauc = roc_auc_score(labels, scores, max_fpr=max_fpr)
            ax.plot(fpr, tpr, color=color, linewidth=1.6, label=f"{model}: AUC {auc:.3f}, pAUC {pauc:.3f}")
            if thresholds is not None and model in thresholds:
                c = confusion_counts(labels, scores, thresholds[model])
                ax.plot(
                    c["fp"] / max(1, c["fp"] + c["tn"]),
                    c["tp"] / max(1, c["tp"] + c["fn"]),
                    marker="o",
                    color=color,
                    markeredgecolor="black",
                    linestyle="none",
                )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=f"ID {machine_id}",
        )
        ax.legend(loc="lower right", fontsize=7)
    for ax in axes[len(ids) :]:
        ax.set_visible(False)
    if thresholds:
        fig.suptitle("ROC per machine ID (dot: decisions at the model's threshold)", fontsize=10)
    return _save(fig, path)


def _histogram_bins(scores: np.ndarray, threshold: float | None, bins: int) -> tuple[np.ndarray, bool]:
    """Bin edges shared by the normal and anomalous histograms, and whether they are log-spaced."""
    values = scores if threshold is None else np.append(scores, threshold)
    lo, hi = float(values.min()), float(values.max())
    if lo > 0 and hi / lo > 20:
        # Reconstruction errors are right-skewed; linear bins would squeeze
        # the normal clips into one bar next to a few large anomalies.
        return np.geomspace(lo, hi, bins + 1), True
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1), False


def _histogram(
    ax: Axes, labels: np.ndarray, scores: np.ndarray, threshold: float | None, *, bins: int
) -> None:
    edges, log_x = _histogram_bins(scores, threshold, bins)
    ax.hist(
        scores[labels == 0],
        bins=edges.tolist(),
        color=NORMAL_COLOR,
        alpha=0.6,
        label=f"normal ({int(np.sum(labels == 0))})",
    )
    ax.hist(
        scores[labels == 1],
        bins=edges.tolist(),
        color=ANOMALY_COLOR,
        alpha=0.6,
        label=f"anomalous ({int(np.sum(labels == 1))})",
    )
    if threshold is not None:
        ax.axvline(
            threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4g}"
        )
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel="anomaly score", ylabel="clips")
    ax.legend(fontsize=7)


def plot_score_histograms(
    per_model: PerModel, thresholds: Mapping[str, float], path: str | Path, *, bins: int = 30
) -> Path:
    """Score histograms of normal and anomalous clips with the threshold drawn.

    One row per model (their score scales differ), one column per machine ID.
    """
    if not per_model:
        raise ValueError("no model results to plot")
    ids = _machine_ids(per_model)
    fig = Figure(figsize=(3.6 * len(ids), 3.0 * len(per_model)), layout="constrained")
    axes = fig.subplots(len(per_model), len(ids), squeeze=False)
    for row, (model, by_id) in zip(axes, per_model.items(), strict=True):
        for ax, machine_id in zip(row, ids, strict=True):
            if machine_id not in by_id:
                ax.set_visible(False)
                continue
            labels, scores = (np.asarray(a, dtype=np.float64) for a in by_id[machine_id])
            _histogram(ax, labels, scores, thresholds.get(model), bins=bins)
            ax.set_title(f"{model} · ID {machine_id}", fontsize=9)
    return _save(fig, path)


def _confusion(ax: Axes, counts: Mapping[str, int], title: str) -> None:
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=np.float64)
    # Colour by the rate within each actual class, so a large normal class
    # does not make the anomalous row look empty.
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            f"{int(count)}\n{rates[i, j]:.0%}",
            ha="center",
            va="center",
            fontsize=9,
            color="white" if rates[i, j] > 0.6 else "black",
        )
    ax.set_xticks([0, 1], ["normal", "anomalous"])
    ax.set_yticks([0, 1], ["normal", "anomalous"])
    ax.set(xlabel="predicted", ylabel="actual", title=title)


def plot_confusion_matrices(
    per_model: Mapping[str, Mapping[str, Mapping[str, int]]], path: str | Path
) -> Path:
    """Confusion matrices of the decisions at each model's threshold.

    ``per_model[model][machine_id]`` holds the counts ``tp``, ``fp``, ``tn``,
    ``fn``; one row per model, one column per ID plus a last column with the
    counts pooled over all IDs.
    """
    if not per_model:
        raise ValueError("no model results to plot")
    ids = _machine_ids(per_model)
    fig = Figure(figsize=(2.9 * (len(ids) + 1), 2.8 * len(per_model)), layout="constrained")
    axes = fig.subplots(len(per_model), len(ids) + 1, squeeze=False)
    for row, (model, by_id) in zip(axes, per_model.items(), strict=True):
        for ax, machine_id in zip(row[:-1], ids, strict=True):
            if machine_id not in by_id:
                ax.set_visible(False)
                continue
            _confusion(ax, by_id[machine_id], f"{model} · ID {machine_id}")
        pooled = {key: sum(int(c[key]) for c in by_id.values()) for key in ("tp", "fp", "tn", "fn")}
        _confusion(row[-1], pooled, f"{model} · all IDs")
    return _save(fig, path)


def plot_training_curves(
    history: Mapping[str, Sequence[float]], path: str | Path, *, title: str | None = None
) -> Path:
    """Training and validation loss against epoch.

    Parameters
    ----------
    history : mapping of name to per-epoch values, e.g. Keras' ``History.history``
        Must hold ``loss``; ``val_loss`` and any other key ending in ``loss``
        are drawn too, other keys (learning rate, ...) are ignored.
    """
    curves = {
        name: np.asarray(values, dtype=np.float64)
        for name, values in history.items()
        if name.endswith("loss") and len(values)
    }
    if "loss" not in curves:
        raise ValueError(f"history has no 'loss' values (keys: {sorted(history)})")
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    for name, values in curves.items():
        epochs = np.arange(1, values.size + 1)
        ax.plot(epochs, values, marker="o" if values.size <= 30 else None, markersize=3, label=name)
    if "val_loss" in curves and np.isfinite(curves["val_loss"]).any():
        best = int(np.nanargmin(curves["val_loss"]))
        ax.axvline(best + 1, color="0.5", linestyle=":", label=f"best val_loss (epoch {best + 1})")
    finite = np.concatenate([v[np.isfinite(v)] for v in curves.values()])
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
        ax.set_yscale("log")  # the first epochs would flatten the rest of the curve
    ax.set(xlabel="epoch", ylabel="loss (MSE)", title=title or "training curves")
    locator = ax.xaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # the default AutoLocator is one
        locator.set_params(integer=True)
    ax.legend()
    return _save(fig, path)


def plot_bin_errors(profiles: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> Path:
    """Mean squared error per mel bin of normal and anomalous clips, one panel per model.

    ``profiles[model]`` holds ``centre_hz``, ``bin_errors`` (clips x mels)
    and ``labels`` (0/1 per clip). The normal clips' band (mean ± one
    standard deviation) shows where in frequency the score's spread comes
    from; the anomalous mean shows where the faults add error.
    """
    if not profiles:
        raise ValueError("no model results to plot")
    fig = Figure(figsize=(7.0, 3.0 * len(profiles)), layout="constrained")
    axes = fig.subplots(len(profiles), 1, squeeze=False)[:, 0]
    for ax, (model, profile) in zip(axes, profiles.items(), strict=True):
        errors = np.asarray(profile["bin_errors"], dtype=np.float64)
        labels = np.asarray(profile["labels"])
        centres = np.asarray(profile["centre_hz"], dtype=np.float64)
        bins = np.arange(errors.shape[1])
        normal = errors[labels == 0]
        if len(normal):
            mean, sd = normal.mean(axis=0), normal.std(axis=0)
            ax.fill_between(bins, mean - sd, mean + sd, color=NORMAL_COLOR, alpha=0.25, linewidth=0)
            ax.plot(bins, mean, color=NORMAL_COLOR, label=f"normal ({len(normal)} clips, mean ± sd)")
        if (labels == 1).any():
            ax.plot(
                bins,
                errors[labels == 1].mean(axis=0),
                color=ANOMALY_COLOR,
                label=f"anomalous ({int((labels == 1).sum())} clips, mean)",
            )
        if np.isfinite(centres).all():
            # Mel bins on the axis (as the model sees them), labelled with the frequency of a few.
            ticks = sorted({int(np.argmin(np.abs(centres - f))) for f in _BIN_TICKS_HZ if f <= centres[-1]})
            ax.set_xticks(
                ticks,
                [f"{centres[t] / 1000:.2g}k" if centres[t] >= 1000 else f"{centres[t]:.0f}" for t in ticks],
            )
            ax.set_xlabel("mel bin, at its centre frequency (Hz)")
        else:
            ax.set_xlabel("mel bin")
        ax.set(ylabel="squared error", title=f"{model}: error per mel bin")
        ax.legend(fontsize=8)
    return _save(fig, path)
