"""What the representations encode: speaker-to-recording ratio (SRR), NMI, score histograms, 2-D projections.

SRR (review, Eq. 14-15): cluster the test embeddings with k-means into as many clusters as there are speakers
(1251 on VoxCeleb1), then compare the cluster assignments S^ with the speaker labels and with the recording
(video, i.e. session) labels:

    NMI(S^, S) = 2 I(S^; S) / (H(S^) + H(S))                       (Eq. 15)
    SRR = NMI(S^, S_speakers) / NMI(S^, S_recordings)               (Eq. 14)

A higher SRR means the clusters follow speakers more than recordings: the representation has learned who speaks
rather than the channel of the video, which is the bias of same-utterance positive sampling.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sslsv.evaluation.errors import EvaluationError

__all__ = ["SRRResult", "nmi", "plot_projection", "plot_score_histograms",
           "projection_figure", "score_histogram_figure", "speaker_recording_ratio"]


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _finite_embeddings(embeddings, what: str) -> np.ndarray:
    """(N, D) float64 embeddings, or EvaluationError when some are NaN/Inf (k-means, PCA and t-SNE would fail
    deep inside scikit-learn)."""
    x = _numpy(embeddings).astype(np.float64)
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise EvaluationError(f"{what}: {int(bad.sum())} of {len(x)} embeddings are non-finite (NaN/Inf), e.g. row "
                              f"{int(np.flatnonzero(bad)[0])}")
    return x


def nmi(assignments: Sequence, labels: Sequence) -> float:
    """Eq. 15: 2 I / (H1 + H2), i.e. sklearn's NMI with the arithmetic-mean normaliser."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels, assignments, average_method="arithmetic"))


@dataclass
class SRRResult:
    nmi_speakers: float
    nmi_recordings: float
    srr: float
    num_clusters: int


def speaker_recording_ratio(embeddings, speakers: Sequence, recordings: Sequence, num_clusters: int | None = None,
                            seed: int = 0, n_init: int = 3) -> SRRResult:
    """k-means on L2-normalised embeddings, then NMI vs speakers and vs recordings and their ratio (Eq. 14).

    Args:
        embeddings: (N, D) test embeddings (numpy or tensor).
        speakers: (N,) speaker label of each embedding.
        recordings: (N,) recording label (VoxCeleb: speaker/video, the Session column; labels are made unique
            per speaker so that two speakers' "video 1" are not merged).
        num_clusters: default the number of speakers, as in the review.
        seed: k-means seed.
        n_init: k-means restarts.

    Raises:
        EvaluationError: some embeddings are NaN/Inf.
        ValueError: lengths differ, or fewer than two speakers.
    """
    from sklearn.cluster import KMeans

    x = _finite_embeddings(embeddings, "speaker_recording_ratio")
    speakers, recordings = np.asarray(speakers), np.asarray(recordings)
    if not len(x) == len(speakers) == len(recordings):
        raise ValueError(f"{len(x)} embeddings, {len(speakers)} speaker labels, {len(recordings)} recording labels")
    k = num_clusters or len(np.unique(speakers))
    if k < 2:
        raise ValueError("SRR needs at least two speakers / clusters")
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    assignments = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    per_speaker_recordings = np.char.add(np.char.add(speakers.astype(str), "/"), recordings.astype(str))
    a = nmi(assignments, speakers)
    b = nmi(assignments, per_speaker_recordings)
    return SRRResult(a, b, a / b if b > 0 else float("inf"), k)


def _save(fig: Figure, path: str | Path) -> None:
    from sslsv.evaluation.plots import save_figure

    save_figure(fig, path)


def _grid(count: int) -> tuple[int, int]:
    """(rows, columns) of a panel grid: at most three columns, 2 x 2 for four."""
    cols = 2 if count == 4 else min(3, count)
    return -(-count // cols), cols


def score_histogram_figure(systems: dict[str, tuple], bins: int = 100) -> Figure:
    """The figure of `plot_score_histograms`, not saved."""
    from matplotlib.ticker import MaxNLocator

    from sslsv.evaluation.metrics import compute_eer

    if not systems:
        raise ValueError("plot_score_histograms needs at least one system")
    rows, cols = _grid(len(systems))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), dpi=110)
    FigureCanvasAgg(fig)
    handles = []
    for i, (name, (scores, labels)) in enumerate(systems.items()):
        scores, labels = _numpy(scores).astype(np.float64), _numpy(labels).astype(bool)
        if len(scores) != len(labels):
            raise ValueError(f"{name}: {len(scores)} scores for {len(labels)} labels")
        if not np.isfinite(scores).all():
            raise EvaluationError(f"{name}: {int((~np.isfinite(scores)).sum())} of {len(scores)} scores are NaN/Inf")
        ax = fig.add_subplot(rows, cols, i + 1)
        # At most `bins`, fewer for few trials (about 2 sqrt(T)): 100 bins of 200 trials are mostly empty.
        edges = np.histogram_bin_edges(scores, bins=int(min(bins, max(10, round(2 * np.sqrt(len(scores)))))))
        non_target = ax.hist(scores[~labels], bins=edges, density=True, alpha=0.6, color="tab:blue")[2]
        target = ax.hist(scores[labels], bins=edges, density=True, alpha=0.6, color="tab:orange")[2]
        handles = [non_target[0] if len(non_target) else None, target[0] if len(target) else None]
        if labels.any() and (~labels).any():
            _, threshold = compute_eer(scores, labels)
            handles.append(ax.axvline(threshold, color="black", linestyle="--", linewidth=1.0))
        ax.set_title(f"{name}\n{int(labels.sum())} target, {int((~labels).sum())} non-target trials",
                     fontsize="small")
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.tick_params(labelsize="small")
        ax.grid(True, linestyle=":", linewidth=0.5, alpha=0.6)
    fig.tight_layout()
    names = ["non-target", "target", "EER threshold"]
    shown = [(h, n) for h, n in zip(handles, names) if h is not None]
    # One legend for the grid, above the panels (outside every histogram).
    fig.legend([h for h, _ in shown], [n for _, n in shown], loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=len(shown), fontsize="small", frameon=False)
    return fig


def plot_score_histograms(systems: dict[str, tuple], path: str | Path, bins: int = 100) -> None:
    """Target and non-target score densities, one panel per system in a grid of at most three columns, saved as
    PNG. Each panel has labelled axes (score, density), at most about five ticks per axis, its trial counts in
    the title and the EER threshold as a dashed line; one legend above the grid.

    Args:
        systems: {name: (scores (T,), labels (T,))}.
        path: output PNG.
        bins: most histogram bins per panel (fewer for few trials: about 2 sqrt(number of trials)).

    Raises:
        ValueError: no system, or scores and labels of different lengths.
        EvaluationError: NaN/Inf scores.
    """
    _save(score_histogram_figure(systems, bins), path)


_PROJECTION_LEGEND_MAX = 60  # speakers: a longer legend is omitted (the colours still differ)


def projection_figure(points: np.ndarray, speakers: Sequence, method: str = "pca",
                      explained: Sequence[float] | None = None) -> Figure:
    """Scatter of 2-D points, one (colour, marker) pair per speaker (plots.speaker_styles), legend to the right of
    the axes. `explained`: PCA's explained variance ratio of the two axes, written in the axis labels."""
    from sslsv.evaluation.plots import speaker_styles

    points, speakers = np.asarray(points), np.asarray(speakers)
    chosen = list(dict.fromkeys(speakers.tolist()))
    fig = Figure(figsize=(7.5, 6.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (colour, marker) in zip(chosen, speaker_styles(len(chosen))):
        mask = speakers == name
        ax.scatter(points[mask, 0], points[mask, 1], s=14, color=colour, marker=marker, label=str(name),
                   linewidths=0.3, edgecolors="black", alpha=0.85)
    axis = {"pca": "PCA component", "tsne": "t-SNE dimension"}.get(method, method)
    for i, set_label in enumerate((ax.set_xlabel, ax.set_ylabel)):
        share = f" ({100.0 * explained[i]:.1f} % of variance)" if explained is not None else ""
        set_label(f"{axis} {i + 1}{share}")
    ax.set_title(f"{method.upper() if method == 'pca' else 't-SNE'} of {len(points)} embeddings, "
                 f"{len(chosen)} speakers", fontsize="medium")
    ax.grid(True, linestyle=":", linewidth=0.5, alpha=0.6)
    if len(chosen) <= _PROJECTION_LEGEND_MAX:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small", markerscale=1.5,
                  ncol=1 + (len(chosen) - 1) // 25, title="speaker", title_fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def plot_projection(embeddings, speakers: Sequence, path: str | Path, method: str = "pca",
                    max_speakers: int = 20, seed: int = 0) -> np.ndarray:
    """2-D PCA or t-SNE of L2-normalised embeddings of the first `max_speakers` speakers, saved as PNG.

    Every speaker has its own (colour, marker) pair (ten colours, then markers; see plots.speaker_styles), the
    legend sits to the right of the axes (omitted above 60 speakers) and the axes are labelled (PCA: with the
    share of variance of each component).

    Returns:
        (M, 2) projected points of the plotted embeddings.
    """
    x = _finite_embeddings(embeddings, "plot_projection")
    speakers = np.asarray(speakers)
    if len(x) != len(speakers):
        raise ValueError(f"{len(x)} embeddings for {len(speakers)} speaker labels")
    chosen = np.unique(speakers)[:max_speakers]
    keep = np.isin(speakers, chosen)
    x, speakers = x[keep], speakers[keep]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    explained = None
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(x)
        explained = pca.explained_variance_ratio_
    elif method == "tsne":
        from sklearn.manifold import TSNE

        points = TSNE(n_components=2, random_state=seed, init="pca",
                      perplexity=min(30.0, max(2.0, (len(x) - 1) / 3))).fit_transform(x)
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    order = np.argsort(np.searchsorted(chosen, speakers), kind="stable")  # legend in speaker order
    _save(projection_figure(points[order], speakers[order], method, explained), path)
    return points
