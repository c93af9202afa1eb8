"""Filtering of unreliable pseudo-labels (review, section 3.2).

- Heuristic filtering (DKU-DukeECE, VoxSRC-20): drop the samples least confident in their cluster (largest
  distance to the class centroid), then the clusters left with too few samples.
- Dynamic loss gate (DLG, Han et al., "Self-supervised speaker verification using dynamic loss-gate and label
  correction", Interspeech 2022): the per-sample training losses follow two populations, reliable labels (low loss)
  and unreliable ones (high loss). A 2-component Gaussian mixture is fitted on the losses and the gate threshold is
  the loss at which the high-loss component becomes the more probable one (posterior 0.5) between the two means.
  A fixed gate (LGL, Tao et al. 2022) uses a given threshold instead; both live in methods/pseudo_supervised.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslsv.config import ConfigError


@dataclass
class FilteringConfig:
    drop_fraction: float = 0.0  # the least confident fraction of all samples is dropped (0: none)
    min_cluster_size: int = 1  # clusters with fewer kept samples are dropped entirely (1: none)

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_fraction < 1.0:
            raise ConfigError("filtering.drop_fraction: must be in [0, 1)")
        if self.min_cluster_size < 1:
            raise ConfigError("filtering.min_cluster_size: must be at least 1")


def confidence_mask(confidence: np.ndarray, drop_fraction: float) -> np.ndarray:
    """Keep mask (N,) bool without the floor(drop_fraction x N) least confident samples (ties: lowest index first)."""
    keep = np.ones(len(confidence), dtype=bool)
    drop = int(np.floor(drop_fraction * len(confidence)))
    if drop > 0:
        keep[np.argsort(confidence, kind="stable")[:drop]] = False
    return keep


def cluster_size_mask(labels: np.ndarray, min_size: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Keep mask (N,) bool: `keep` (default all) minus the samples of clusters with < min_size kept samples."""
    keep = np.ones(len(labels), dtype=bool) if keep is None else keep.copy()
    if min_size <= 1:
        return keep
    sizes = np.bincount(labels[keep], minlength=int(labels.max()) + 1)
    return keep & (sizes[labels] >= min_size)


def filter_labels(labels: np.ndarray, confidence: np.ndarray, cfg: FilteringConfig) -> tuple[np.ndarray, dict[str, int]]:
    """Both filters in order (confidence, then cluster size). Returns the keep mask and counts."""
    by_confidence = confidence_mask(confidence, cfg.drop_fraction)
    keep = cluster_size_mask(labels, cfg.min_cluster_size, by_confidence)
    counts = {
        "total": int(len(labels)),
        "kept": int(keep.sum()),
        "dropped_confidence": int((~by_confidence).sum()),
        "dropped_small_clusters": int((by_confidence & ~keep).sum()),
        "clusters_before": int(len(np.unique(labels))),
        "clusters_after": int(len(np.unique(labels[keep]))) if keep.any() else 0,
    }
    return keep, counts


def fit_loss_gate(losses: np.ndarray, seed: int = 0, resolution: int = 4097) -> float:
    """Dynamic loss-gate threshold from per-sample losses (2-component GMM, DLG).

    Args:
        losses: (N,) per-sample losses of the previous epoch (NaN entries ignored).
    Returns:
        The loss above which a sample is more likely to belong to the high-loss component; +inf (keep everything)
        when fewer than 10 finite losses are given or the two components coincide.
    """
    from sklearn.mixture import GaussianMixture

    values = np.asarray(losses, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 10 or np.ptp(values) <= 1e-12:
        return float("inf")
    gmm = GaussianMixture(n_components=2, covariance_type="full", random_state=seed, max_iter=200, tol=1e-5)
    gmm.fit(values[:, None])
    means = gmm.means_[:, 0]
    low, high = int(np.argmin(means)), int(np.argmax(means))
    if means[high] - means[low] <= 1e-9:
        return float("inf")
    grid = np.linspace(means[low], means[high], resolution)
    posterior_high = gmm.predict_proba(grid[:, None])[:, high]
    above = np.nonzero(posterior_high >= 0.5)[0]
    return float(grid[above[0]] if len(above) else means[high])
