"""Paper-ready figures of the evaluation: DET curves, and the helpers the other evaluation plots share (run names,
distinct colour/marker styles, saving).

DET curves (miss rate vs false-alarm rate on normal-deviate, "probit", axes) are fitted to the data: both axes
cover every point of every curve (down to `min_rate`) plus a margin, with standard probit ticks (0.1, 0.2, 0.5,
1, 2, 5, 10, 20, 40, 60, 80, 90, 95 % ...) thinned so that their labels never overlap. So a VoxCeleb-level
system (EER ~1 %) and a demo-level one (EER 25-45 %, false-rejection rates up to 99 %) both stay in frame.

Uses matplotlib's object API with the Agg canvas directly instead of pyplot, so it never touches the global
backend or leaks figures in long-running processes (the trainer may plot after every evaluation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

from sslsv.evaluation.metrics import _det_points, _eer_from_det, _validate

__all__ = ["det_figure", "det_limits", "plot_det", "probit_ticks", "run_names", "save_figure", "speaker_styles"]

# Standard DET ticks (percent), and the order in which they are kept when the axis is too short for all of them.
TICKS_PERCENT = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 98,
                 99, 99.5, 99.8, 99.9, 99.95, 99.98, 99.99, 99.995, 99.998, 99.999)
_TICK_PRIORITY = (1, 10, 40, 60, 90, 99, 0.1, 99.9, 0.01, 99.99, 0.001, 99.999, 5, 20, 80, 95, 2, 98, 0.5, 99.5,
                  0.2, 99.8, 0.05, 99.95, 0.02, 99.98, 0.005, 99.995, 0.002, 99.998)
MIN_RATE = 1e-5  # 0.001 %: rates below it (under one error in 100,000 trials) are left out of the frame
MAX_TICKS = 10  # at most about this many tick labels per axis: neighbours are >= (axis span / MAX_TICKS) apart
MIN_SPAN = 1.2  # normal deviates: the narrowest axis (a curve that is a single point still gets context)


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


def _deviate(rate) -> np.ndarray:
    # Clip far outside any visible range only to keep ppf finite (0 and 1 map to -inf / +inf); the axes crop,
    # so the curve leaves the plot where it really does (at a zero rate).
    return norm.ppf(np.clip(rate, 1e-12, 1.0 - 1e-12))


def det_limits(rates: Sequence[float] | np.ndarray, min_rate: float = MIN_RATE) -> tuple[float, float]:
    """Axis limits (normal deviates) that hold every rate in `rates` within [min_rate, 1 - min_rate], plus a
    margin of 8 % of the span (at least 0.2 deviates) on each side; at least MIN_SPAN wide. Rates of 0 or 1
    (at -/+ infinity) are ignored; with no usable rate the range is 0.1 % - 50 %."""
    rates = np.asarray(rates, dtype=np.float64)
    rates = np.clip(rates[(rates > 0) & (rates < 1)], min_rate, 1.0 - min_rate)
    if not len(rates):
        rates = np.array([1e-3, 0.5])
    low, high = norm.ppf(rates.min()), norm.ppf(rates.max())
    if high - low < MIN_SPAN:
        centre = (low + high) / 2
        low, high = centre - MIN_SPAN / 2, centre + MIN_SPAN / 2
    margin = max(0.2, 0.08 * (high - low))
    return float(low - margin), float(high + margin)


def probit_ticks(limits: tuple[float, float], max_ticks: int = MAX_TICKS) -> tuple[list[float], list[str]]:
    """Standard DET ticks inside `limits` (normal deviates), kept by priority (1, 10, 40, 60, 90, 99, 0.1 % ...)
    while each is at least span / max_ticks from the ones kept, so that labels never overlap. Returns the tick
    positions (deviates, increasing) and their labels in percent."""
    low, high = limits
    gap = (high - low) / max_ticks
    kept: list[tuple[float, float]] = []
    for percent in _TICK_PRIORITY:
        x = float(norm.ppf(percent / 100.0))
        if low <= x <= high and all(abs(x - k) >= gap for k, _ in kept):
            kept.append((x, percent))
    kept.sort()
    return [x for x, _ in kept], [f"{percent:g}" for _, percent in kept]


def det_figure(curves: Mapping[str, tuple], title: str | None = None, min_rate: float = MIN_RATE) -> Figure:
    """The DET figure of `plot_det` (one curve per system, EERs marked), not saved. See plot_det."""
    if not curves:
        raise ValueError("plot_det needs at least one system")
    fig = Figure(figsize=(6.0, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    seen: list[np.ndarray] = []
    for name, (scores, labels) in curves.items():
        scores, labels = _validate(scores, labels)
        fpr, fnr, thresholds = _det_points(scores, labels)
        eer, _ = _eer_from_det(fpr, fnr, thresholds)
        x, y = _corners(fpr, fnr)
        # rates of 0 and 1 are at -/+ infinity: there the curve leaves the frame
        inside = (x > 0) & (y > 0) & (x < 1) & (y < 1)
        seen += [x[inside], y[inside], np.array([eer])]
        (line,) = ax.plot(_deviate(x), _deviate(y), linewidth=1.5, label=f"{name} (EER {100.0 * eer:.2f} %)")
        ax.plot(_deviate(eer), _deviate(eer), marker="o", markersize=6, color=line.get_color(),
                markeredgecolor="black", linestyle="none", gid="eer")
    limits = det_limits(np.concatenate(seen), min_rate)
    ax.plot(limits, limits, color="gray", linestyle=":", linewidth=0.8, label="_FNR = FPR")  # EERs lie on it
    ticks, labels_text = probit_ticks(limits)
    ax.set_xticks(ticks, labels_text)
    ax.set_yticks(ticks, labels_text)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel("False acceptance rate (%)")
    ax.set_ylabel("False rejection rate (%)")
    ax.grid(True, linestyle="--", linewidth=0.5, alpha=0.6)
    ax.set_aspect("equal")
    # Below the axes, never over a curve; the EER marker is explained once.
    handles, names = ax.get_legend_handles_labels()
    marker = ax.plot([], [], marker="o", markersize=6, color="white", markeredgecolor="black",
                     linestyle="none")[0]
    ax.legend(handles + [marker], names + ["EER (where FAR = FRR)"], loc="upper center",
              bbox_to_anchor=(0.5, -0.12), fontsize="small", ncol=1, frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def plot_det(curves: Mapping[str, tuple], path: str | Path, title: str | None = None,
             min_rate: float = MIN_RATE) -> None:
    """Plot one DET curve per system, mark each EER, and save a PNG.

    Axes are probit-scaled (scipy.stats.norm.ppf of the rates) so that systems with Gaussian-like score
    distributions give straight lines, with standard ticks labelled in percent. Both axes share one range,
    fitted to the data: every DET point whose rates are both in (0, 1) (and at least `min_rate` from 0 and 1)
    is inside, with a margin (det_limits); the legend is below the axes.

    Args:
        curves: {system name: (scores, labels)}, scores (num_trials,) and 0/1 labels
            (num_trials,) per system; trial lists may differ between systems.
        path: output PNG path (parent directories are created).
        title: optional figure title.
        min_rate: the smallest rate shown (default 0.001 %).

    Raises:
        ValueError: `curves` is empty, or a system's scores / labels are invalid.
    """
    save_figure(det_figure(curves, title, min_rate), path)


def save_figure(fig: Figure, path: str | Path, dpi: int | None = None) -> Path:
    """Save as PNG, creating the folder; the bounding box is tight so that legends outside the axes are kept.
    Written to a temporary file renamed over `path`, so an interrupted save never leaves half a figure. Callers
    that must not replace an existing figure check first (sslsv.evaluation.evaluate.check_new_outputs)."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_names(runs: Sequence[str | Path]) -> list[str]:
    """Short, distinct legend names of run folders: the last two path components (simclr/fast_resnet34_demo, as
    evaluate's tables), or more for runs they do not tell apart (finetune/a/ssl vs finetune/b/ssl keep a/ssl and
    b/ssl: the last component alone, e.g. `ssl`, names no system). The same run given twice gets a #2 suffix."""
    resolved = [Path(run).resolve() for run in runs]
    parts = [p.parts[1:] if p.anchor else p.parts for p in resolved]  # without the root "/"
    depth = [min(2, len(p)) for p in parts]
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = [i for i, n in enumerate(names) if depth[i] < len(parts[i])
                    and any(m == n and resolved[j] != resolved[i] for j, m in enumerate(names))]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


# Matplotlib's qualitative tab10 colours, crossed with markers: 10 x 9 distinct (colour, marker) pairs.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<")


def speaker_styles(count: int) -> list[tuple[tuple[float, float, float, float], str]]:
    """`count` distinct (RGBA colour, marker) pairs for scatter plots: the ten tab10 colours with a circle, then
    with squares, triangles, ... (90 pairs); beyond 90, `count` colours sampled from the turbo colour map, each
    with a marker in turn, so that every pair still differs."""
    from matplotlib import colormaps

    if count <= 10 * len(_MARKERS):
        tab10 = colormaps["tab10"]
        return [(tab10(i % 10), _MARKERS[i // 10]) for i in range(count)]
    turbo = colormaps["turbo"]
    return [(turbo(i / max(1, count - 1)), _MARKERS[i % len(_MARKERS)]) for i in range(count)]
