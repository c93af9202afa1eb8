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

__all__ = ["RunAnalysis", "SRRResult", "analyze_run", "nmi", "plot_projection", "plot_score_histograms",
           "speaker_recording_ratio"]


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_score_histograms(systems: dict[str, tuple], path: str | Path, bins: int = 100) -> None:
    """Target and non-target score densities, one panel per system, saved as PNG.

    Args:
        systems: {name: (scores (T,), labels (T,))}.
        path: output PNG.
        bins: histogram bins.
    """
    if not systems:
        raise ValueError("plot_score_histograms needs at least one system")
    fig = Figure(figsize=(5.0 * len(systems), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    for i, (name, (scores, labels)) in enumerate(systems.items()):
        scores, labels = _numpy(scores).astype(np.float64), _numpy(labels).astype(bool)
        if len(scores) != len(labels):
            raise ValueError(f"{name}: {len(scores)} scores for {len(labels)} labels")
        if not np.isfinite(scores).all():
            raise EvaluationError(f"{name}: {int((~np.isfinite(scores)).sum())} of {len(scores)} scores are NaN/Inf")
        ax = fig.add_subplot(1, len(systems), i + 1)
        edges = np.histogram_bin_edges(scores, bins=bins)
        ax.hist(scores[~labels], bins=edges, density=True, alpha=0.6, label=f"non-target ({(~labels).sum()})")
        ax.hist(scores[labels], bins=edges, density=True, alpha=0.6, label=f"target ({labels.sum()})")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("score")
        ax.legend(fontsize="small")
    _save(fig, path)


def plot_projection(embeddings, speakers: Sequence, path: str | Path, method: str = "pca",
                    max_speakers: int = 20, seed: int = 0) -> np.ndarray:
    """2-D PCA or t-SNE of L2-normalised embeddings of the first `max_speakers` speakers, coloured by speaker.

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
    if method == "pca":
        from sklearn.decomposition import PCA

        points = PCA(n_components=2, random_state=seed).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        points = TSNE(n_components=2, random_state=seed, init="pca",
                      perplexity=min(30.0, max(2.0, (len(x) - 1) / 3))).fit_transform(x)
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    fig = Figure(figsize=(6.0, 6.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in chosen:
        mask = speakers == name
        ax.scatter(points[mask, 0], points[mask, 1], s=8, label=str(name))
    ax.set_title(f"{method.upper()} of {len(x)} embeddings, {len(chosen)} speakers", fontsize="medium")
    if len(chosen) <= 20:
        ax.legend(fontsize="x-small", markerscale=2, ncol=2)
    _save(fig, path)
    return points


@dataclass
class RunAnalysis:
    """What `analyze_run` measured: the SRR / NMI figures and where the projection plot went."""

    run_dir: str
    source: str
    manifest: str
    num_utterances: int
    srr: SRRResult
    projection: Path


def analyze_run(run_dir: str | Path, manifest: str | Path, projection: str = "pca", device: str = "auto",
                output: str | Path | None = None, progress: bool = False) -> RunAnalysis:
    """SRR and NMI (Eq. 14-15) of a run's embeddings of a labelled manifest, plus a 2-D projection plot.

    Args:
        run_dir: trained run directory.
        manifest: labelled manifest (Speaker and Session columns), relative to the run's data root.
        projection: "pca" or "tsne".
        device: "auto", "cpu", "cuda" or "cuda:N".
        output: projection PNG (default RUN/projection_<manifest stem>.png).
        progress: show the extraction progress bar.

    Raises:
        RunError, ManifestError, AudioError: unusable run, manifest or audio.
    """
    from sslsv.data.manifest import read_manifest
    from sslsv.distributed import resolve_device
    from sslsv.evaluation.embeddings import extract_embeddings
    from sslsv.runs import load_model

    torch_device = resolve_device(device)
    model, config, source = load_model(run_dir, device=torch_device)
    root = Path(config.dataset.data_root)
    table = read_manifest(root / manifest)
    embeddings = extract_embeddings(model, [str(root / f) for f in table.files], config.features.sample_rate,
                                    torch_device, batch_seconds=config.evaluation.batch_seconds,
                                    max_trim=config.evaluation.max_trim, progress=progress)
    result = speaker_recording_ratio(embeddings, table.speakers, table.sessions)
    out = Path(output) if output else Path(run_dir) / f"projection_{Path(manifest).stem}.png"
    plot_projection(embeddings, table.speakers, out, method=projection)
    return RunAnalysis(str(run_dir), str(source), str(manifest), len(table), result, out)
