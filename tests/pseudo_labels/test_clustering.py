"""k-means (faiss) + AHC of the centroids recover well-separated synthetic speakers; metrics; memory estimate."""
import numpy as np
import pytest

from sslsv.config import ConfigError
from sslsv.pseudo_labels.clustering import (ClusteringConfig, ahc, cluster, cluster_metrics, kmeans, memory_estimate,
                                            purity, two_level_kmeans)


def speakers(num_speakers=30, per_speaker=40, dim=32, noise=0.5, seed=0):
    """Speaker means on the sphere + isotropic within-speaker noise (cosine within about 1 / (1 + noise^2))."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((num_speakers, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_speakers), per_speaker)
    x = means[labels] + noise * rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
    return x.astype(np.float32), labels


@pytest.mark.parametrize("linkage", ["average", "ward"])
@pytest.mark.parametrize("neighbors", [0, 8])
def test_kmeans_then_ahc_recovers_speakers(linkage, neighbors):
    x, truth = speakers()
    cfg = ClusteringConfig(kmeans_clusters=120, num_classes=30, linkage=linkage, ahc_neighbors=neighbors,
                           max_points_per_centroid=64)
    result = cluster(x, cfg)
    metrics = cluster_metrics(result.labels, truth)
    assert metrics["clusters"] == 30 and metrics["nmi"] > 0.9 and metrics["purity"] > 0.9
    assert result.labels.shape == (len(x),) and result.labels.max() == 29
    # every utterance takes the class of its k-means centroid
    assert np.array_equal(result.labels, result.centroid_classes[result.kmeans_labels])
    assert result.confidence.dtype == np.float32 and np.all(result.confidence <= 1 + 1e-5)


def test_plain_kmeans_to_the_class_count():
    x, truth = speakers(num_speakers=10, per_speaker=50)
    result = cluster(x, ClusteringConfig(method="kmeans", kmeans_clusters=10, max_points_per_centroid=64))
    assert cluster_metrics(result.labels, truth)["nmi"] > 0.9


def test_ahc_merges_centroids_to_target_count():
    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((200, 16)).astype(np.float32)
    for neighbors in (0, 6):
        classes = ahc(centroids, 37, "average", neighbors)
        assert classes.shape == (200,) and len(np.unique(classes)) == 37 and classes.max() == 36


def test_kmeans_outputs():
    x, _ = speakers(num_speakers=5, per_speaker=30)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids, assignments, distances = kmeans(x, 5, max_points_per_centroid=64)
    assert centroids.shape == (5, 32) and centroids.dtype == np.float32
    assert assignments.shape == (150,) and distances.shape == (150,)
    nearest = ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(nearest, assignments)


def test_two_level_kmeans_matches_flat_quality_and_assigns_nearest_centroid():
    x, truth = speakers(num_speakers=40, per_speaker=50, dim=24, noise=0.6)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat_centroids, flat_assignments, flat_distances = kmeans(x, 160, max_points_per_centroid=64)
    centroids, assignments, distances = two_level_kmeans(x, 160, max_points_per_centroid=64, refine_iterations=2)
    assert centroids.shape == (160, 24) and assignments.shape == (2000,) and assignments.dtype == np.int64
    # the HNSW assignment is approximate, but on 160 centroids it finds the exact nearest one almost always
    exact = ((x[:, None] - centroids[None]) ** 2).sum(-1)
    assert np.mean(exact.argmin(1) == assignments) > 0.99
    assert np.allclose(distances, exact[np.arange(len(x)), assignments], atol=1e-4)
    # quantisation error within 5 % of flat k-means, and the clusters are as pure
    assert distances.mean() < 1.05 * flat_distances.mean()
    assert cluster_metrics(assignments, truth)["purity"] > 0.97
    assert len(np.unique(assignments)) > 150  # no mass of empty clusters


def test_kmeans_mode_auto_goes_two_level_for_large_k_on_cpu():
    assert ClusteringConfig(kmeans_clusters=50000).two_level(gpu=False)
    assert not ClusteringConfig(kmeans_clusters=50000).two_level(gpu=True)
    assert not ClusteringConfig(kmeans_clusters=5000, num_classes=750).two_level(gpu=False)
    assert ClusteringConfig(kmeans_clusters=120, num_classes=40, kmeans_mode="two_level").two_level(gpu=False)
    x, truth = speakers()
    result = cluster(x, ClusteringConfig(kmeans_clusters=120, num_classes=30, kmeans_mode="two_level",
                                         max_points_per_centroid=64, linkage="average"))
    assert cluster_metrics(result.labels, truth)["nmi"] > 0.9


def test_purity_and_nmi_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 1])
    predicted = np.array([0, 0, 1, 1, 1, 1])  # cluster 1 = {0, 1, 1, 1}: majority 3 of 4
    assert purity(predicted, truth) == pytest.approx(5 / 6)
    assert cluster_metrics(truth, truth) == {"clusters": 2, "nmi": 1.0, "purity": 1.0, "speakers": 2}
    assert cluster_metrics(predicted) == {"clusters": 2}


def test_config_checks_and_memory_estimate():
    with pytest.raises(ConfigError, match="num_classes"):
        ClusteringConfig(kmeans_clusters=10, num_classes=20)
    full = memory_estimate(1_092_009, 512, 50000, ClusteringConfig())
    assert full["total"] < 24 and full["embeddings"] == pytest.approx(1_092_009 * 512 * 4 / 2**30)
    exact = memory_estimate(1_092_009, 192, 50000, ClusteringConfig(ahc_neighbors=0))
    assert exact["ahc"] > 10  # the condensed distance matrix alone: 50k^2/2 x 8 bytes (x 2 for scipy's copy)
