"""Filtering of unreliable pseudo-labels (review, section 3.2).

- Heuristic filtering (DKU-DukeECE, VoxSRC-20): drop the samples least confident in their cluster (largest
  distance to the class centroid), then the clusters left with too few samples.
- Dynamic loss gate (DLG, Han et al., "Self-supervised speaker verification using dynamic loss-gate and label
  correction", Interspeech 2022): the per-sample training losses follow two populations, reliable labels (low loss)
  and unreliable ones (high loss). A 2-component Gaussian mixture is fitted on the losses and the gate threshold is
  the loss at which the high-loss component becomes the more probable one (posterior 0.5) between the two means.
  A fixed gate (LGL, Tao et al. 2022) uses a given threshold instead; both live in methods/pseudo_supervised.py.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
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
