"""DET plots (miss rate vs false-alarm rate on normal-deviate axes), written as PNG.

Uses matplotlib's object API with the Agg canvas directly instead of pyplot, so it
never touches the global backend or leaks figures in long-running processes (the
trainer may plot after every evaluation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

from sslsv.evaluation.metrics import _det_points, _eer_from_det, _validate

__all__ = ["plot_det"]

TICKS_PERCENT = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40]
LIMITS_PERCENT = (0.05, 60.0)  # 60 % so that chance-level systems (EER ~ 50 %) stay visible


def _corners(fpr: np.ndarray, fnr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop DET points in the middle of straight horizontal / vertical runs.

    The staircase of 500k+ trials has as many points as distinct scores, but only the
    corners (where the direction changes) matter for drawing; this keeps the PNG exact
    while plotting ~2 * min(#targets, #non-targets) points.
    """
    if len(fpr) <= 2:
        return fpr, fnr
    step = np.stack([np.sign(np.diff(fpr)), np.sign(np.diff(fnr))], axis=1)
    same_as_next = np.all(step[:-1] == step[1:], axis=1)
    keep = np.r_[True, ~same_as_next, True]
    return fpr[keep], fnr[keep]


def plot_det(curves: Mapping[str, tuple], path: str | Path, title: str | None = None) -> None:
    """Plot one DET curve per system, mark each EER, and save a PNG.

    Axes are probit-scaled (scipy.stats.norm.ppf of the rates) so that systems with
    Gaussian-like score distributions give straight lines, with ticks labelled in
    percent. The visible range is 0.05 % to 60 % on both axes.

    Args:
        curves: {system name: (scores, labels)}, scores (num_trials,) and 0/1 labels
            (num_trials,) per system; trial lists may differ between systems.
        path: output PNG path (parent directories are created).
        title: optional figure title.

    Raises:
        ValueError: `curves` is empty, or a system's scores / labels are invalid.
    """
    if not curves:
        raise ValueError("plot_det needs at least one system")
    low, high = (p / 100.0 for p in LIMITS_PERCENT)

    def deviate(rate: np.ndarray | float) -> np.ndarray:
        # Clip far outside the visible range only to keep ppf finite (0 and 1 map to
        # -inf / +inf); the axes crop, so the curve leaves the plot where it really does.
        return norm.ppf(np.clip(rate, 1e-9, 1.0 - 1e-9))

    fig = Figure(figsize=(6.0, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (scores, labels) in curves.items():
        scores, labels = _validate(scores, labels)
        fpr, fnr, thresholds = _det_points(scores, labels)
        eer, _ = _eer_from_det(fpr, fnr, thresholds)
        x, y = _corners(fpr, fnr)
        (line,) = ax.plot(deviate(x), deviate(y), linewidth=1.5, label=f"{name} (EER {100.0 * eer:.2f} %)")
        ax.plot(deviate(eer), deviate(eer), marker="o", markersize=6, color=line.get_color(),
                markeredgecolor="black", linestyle="none")
    ticks = np.asarray(TICKS_PERCENT) / 100.0
    limits = norm.ppf([low, high])
    ax.plot(limits, limits, color="gray", linestyle=":", linewidth=0.8)  # FNR = FPR: EERs lie on it
    labels_text = [f"{t:g}" for t in TICKS_PERCENT]
    ax.set_xticks(norm.ppf(ticks), labels_text)
    ax.set_yticks(norm.ppf(ticks), labels_text)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel("False positive rate (%)")
    ax.set_ylabel("False negative rate (%)")
    ax.grid(True, linestyle="--", linewidth=0.5, alpha=0.6)
    ax.set_aspect("equal")
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
