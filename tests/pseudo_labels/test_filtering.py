"""Confidence and cluster-size filtering counts; the GMM loss gate separates two loss populations."""
import numpy as np
import pytest

from sslsv.methods.pseudo_supervised import fit_loss_gate
from sslsv.pseudo_labels.filtering import FilteringConfig, cluster_size_mask, confidence_mask, filter_labels


def test_confidence_mask_drops_least_confident_fraction():
    confidence = np.array([0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6, 0.4, 0.95])
    keep = confidence_mask(confidence, 0.3)
    assert keep.sum() == 7 and set(np.flatnonzero(~keep)) == {1, 5, 3}
    assert confidence_mask(confidence, 0.0).all()


def test_cluster_size_mask():
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert cluster_size_mask(labels, 2).tolist() == [True] * 5 + [False]
    keep = np.array([True, True, True, True, False, True])
    assert cluster_size_mask(labels, 2, keep).tolist() == [True, True, True, False, False, False]


def test_filter_labels_counts():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.9, 0.1, 0.2, 0.9, 0.8, 0.9])
    keep, counts = filter_labels(labels, confidence, FilteringConfig(drop_fraction=0.2, min_cluster_size=2))
    # confidence drops rows 5 and 6 (cluster 1 left with 1 sample -> dropped), then cluster 3 (size 1)
    assert keep.tolist() == [True] * 4 + [False] * 3 + [True, True, False]
    assert counts == {"total": 10, "kept": 6, "dropped_confidence": 2, "dropped_small_clusters": 2,
                      "clusters_before": 4, "clusters_after": 2}


def test_gmm_gate_separates_two_loss_populations():
    rng = np.random.default_rng(0)
    clean = rng.normal(2.0, 0.5, 4000)  # correct pseudo-labels: low loss
    noisy = rng.normal(8.0, 1.0, 1000)  # wrong pseudo-labels: high loss
    threshold = fit_loss_gate(np.concatenate([clean, noisy, [np.nan]]))
    assert 3.0 < threshold < 6.5
    assert (clean <= threshold).mean() > 0.99 and (noisy > threshold).mean() > 0.99


def test_gmm_gate_degenerate_inputs_keep_everything():
    assert fit_loss_gate(np.array([1.0, 2.0])) == float("inf")
    assert fit_loss_gate(np.full(100, 3.0)) == float("inf")
