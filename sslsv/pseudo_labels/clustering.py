"""Clustering of training representations into pseudo-speakers: k-means (faiss), then AHC of the centroids.

Review (Lepage & Dehak, arXiv:2602.10829), section 7.2 and Table 15: k-means straight to C = 6000-7500 classes, or k-means to 50 000 clusters followed
by agglomerative hierarchical clustering (AHC) of the centroids down to 7500 classes; each utterance takes the class
of its k-means cluster.

Memory at VoxCeleb2 scale (1 092 009 x D float32; see benchmarks/bench_pseudo_labels.py for measured figures):

- k-means: faiss trains on at most `max_points_per_centroid * K` points (a random subsample drawn by faiss) and
  initialises from a random subset of them, so nothing of size N x K is ever built (the distance blocks are
  4096 x 1024 floats). Only float32 is used: the embeddings (N x D x 4 bytes) are the largest object.
- Time: one exact (flat) Lloyd iteration costs N x K x D multiply-adds, 1e13 at VoxCeleb2 size (K = 50 000,
  D = 192): tens of minutes per iteration on a 2-core CPU, hours for 20 iterations. `kmeans_mode: two_level` (the
  default on CPU for K >= 10 000) first clusters into sqrt(K) coarse cells, then each cell into its share of the K
  centroids (faiss.contrib.clustering.two_level_clustering: N x 2 sqrt(K) x D per iteration), and then runs
  `refine_iterations` full Lloyd iterations whose nearest-centroid search goes through an HNSW graph of the
  centroids instead of a flat scan (faiss's recipe for k-means with many centroids); the final assignment uses the
  same graph. The graph search is approximate (`hnsw_ef_search` trades speed for recall). On a GPU the flat
  search is fast enough and `auto` keeps it.
- AHC of K = 50 000 centroids: an exact linkage needs the condensed distance matrix, K^2 / 2 x 8 bytes = 10 GB in
  float64, plus scipy's working copies. Instead (`ahc_neighbors > 0`, the default) the merges are restricted to a
  symmetric k-nearest-neighbour graph of the centroids (faiss exact kNN, cosine), and sklearn's
  AgglomerativeClustering runs on that sparse graph: memory O(K x neighbours). Deviation from exact AHC: two
  clusters can only merge when some of their members are graph neighbours, and "average" linkage averages the
  cosine distance over the connected pairs only. With 32 neighbours per centroid and 6-7 centroids per class this
  changes little (NMI measured in the benchmark); `ahc_neighbors: 0` gives the exact scipy linkage for small K.
  Ward (the default) needs O(K x (D + neighbours)); sklearn's "average" with a graph also materialises both end
  points of every edge (2 x E x D floats, 7 GiB at 192-d and 19 GiB at 512-d for K = 50 000): small K only.
- "ward" on L2-normalised centroids is Ward's criterion for the cosine geometry (|a - b|^2 = 2 - 2 cos); centroids
  are not weighted by their cluster sizes (neither sklearn nor scipy take weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sslsv.config import ConfigError

CHUNK = 65536  # rows per block for chunked passes over the embeddings
TWO_LEVEL_FROM = 10000  # kmeans_mode=auto: K from which CPU k-means is two-level


@dataclass
class ClusteringConfig:
    """How training representations become pseudo-labels (review Table 15)."""

    method: Literal["kmeans", "kmeans_ahc"] = "kmeans_ahc"
    kmeans_clusters: int = 50000  # K of k-means (the class count itself for method=kmeans)
    num_classes: int = 7500  # AHC target (ignored for method=kmeans)
    # ward (on normalised centroids): memory O(K x (D + neighbours)). average (cosine): sklearn also copies both
    # end points of every graph edge, 2 x E x D floats (E ~ 2 K x neighbours): 7-20 GiB at K = 50 000.
    linkage: Literal["ward", "average"] = "ward"
    ahc_neighbors: int = 32  # kNN graph size for memory-lean AHC; 0: exact scipy linkage (K^2/2 x 8 bytes)
    spherical: bool = True  # cosine k-means: L2-normalised points and centroids
    iterations: int = 20
    max_points_per_centroid: int = 128  # faiss trains on at most this many points per centroid (random subsample)
    # flat: exact Lloyd iterations; two_level: coarse/fine init + HNSW-assigned refinement (large K on CPU);
    # auto: two_level for K >= 10 000 without a faiss GPU, flat otherwise
    kmeans_mode: Literal["auto", "flat", "two_level"] = "auto"
    refine_iterations: int = 3  # two_level: full Lloyd iterations after the two-level initialisation
    hnsw_ef_search: int = 64  # two_level: HNSW search breadth for the nearest-centroid queries
    gpu: Literal["auto", "yes", "no"] = "auto"  # auto: use faiss GPUs when faiss has any
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kmeans_clusters < 2:
            raise ConfigError("clustering.kmeans_clusters: must be at least 2")
        if self.method == "kmeans_ahc" and not 2 <= self.num_classes <= self.kmeans_clusters:
            raise ConfigError("clustering.num_classes: must be in [2, kmeans_clusters]")
        if self.ahc_neighbors < 0:
            raise ConfigError("clustering.ahc_neighbors: must be >= 0")
        if self.iterations < 1:
            raise ConfigError("clustering.iterations: must be at least 1")
        if self.max_points_per_centroid < 1:
            raise ConfigError("clustering.max_points_per_centroid: must be at least 1")
        if self.refine_iterations < 0:
            raise ConfigError("clustering.refine_iterations: must be >= 0")
        if self.hnsw_ef_search < 1:
            raise ConfigError("clustering.hnsw_ef_search: must be at least 1")

    def two_level(self, gpu: bool) -> bool:
        """Whether k-means uses the two-level initialisation and HNSW assignment (see the module docstring)."""
        if self.kmeans_mode == "auto":
            return self.kmeans_clusters >= TWO_LEVEL_FROM and not gpu
        return self.kmeans_mode == "two_level"

    @property
    def classes(self) -> int:
        return self.kmeans_clusters if self.method == "kmeans" else self.num_classes


@dataclass
class ClusteringResult:
    labels: np.ndarray  # (N,) int64 class of each utterance, 0..C-1 (consecutive)
    kmeans_labels: np.ndarray  # (N,) int64 k-means cluster of each utterance
    centroid_classes: np.ndarray  # (K,) int64 class of each k-means centroid
    confidence: np.ndarray  # (N,) float32 cosine between an utterance and its class centroid
    timings: dict[str, float]


# ------------------------------------------------------------------------------------------------ helpers


def l2_normalize(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Row-wise L2 normalisation in float32, chunked (no float64 copy of a large array)."""
    out = x if inplace else np.empty(x.shape, dtype=np.float32)
    for start in range(0, len(x), CHUNK):
        block = np.asarray(x[start : start + CHUNK], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + CHUNK] = block / np.maximum(norms, 1e-12)
    return out


def _is_normalized(x: np.ndarray, sample: int = 2048) -> bool:
    rows = x[np.linspace(0, len(x) - 1, min(sample, len(x))).astype(np.int64)]
    return bool(np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-3))


def use_gpu(choice: str) -> bool:
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if choice == "yes" and gpus == 0:
        raise ConfigError("clustering.gpu: 'yes' but this faiss build sees no GPU (install faiss-gpu or use auto)")
    return choice != "no" and gpus > 0


def to_gpus(index):
    """A CPU faiss index moved to the GPUs faiss sees (call only when `use_gpu` said yes): one GPU through
    StandardGpuResources; several as one index sharded across them (GpuMultipleClonerOptions.shard: each GPU holds
    1/G of the vectors, here the centroids; a query goes to every shard and the results are merged), so that K
    centroids need K x D x 4 / G bytes per GPU. The search results are those of the CPU index up to float rounding."""
    import faiss

    if faiss.get_num_gpus() <= 1:
        resources = faiss.StandardGpuResources()
        moved = faiss.index_cpu_to_gpu(resources, 0, index)
        moved.referenced_objects = [*getattr(moved, "referenced_objects", []), resources]  # pool lives with it
        return moved
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


# ------------------------------------------------------------------------------------------------ k-means


def kmeans(x: np.ndarray, k: int, iterations: int = 20, spherical: bool = True, seed: int = 0,
           max_points_per_centroid: int = 128, gpu: bool = False, verbose: bool = False
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss k-means.

    Args:
        x: (N, D) float32 points (L2-normalised when spherical).
        k: number of clusters (N >= k).
    Returns:
        centroids (k, D) float32, assignments (N,) int64, squared L2 distance to the centroid (N,) float32.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"k-means with {k} clusters needs at least {k} points, got {len(x)}")
    model = faiss.Kmeans(x.shape[1], k, niter=iterations, spherical=spherical, seed=seed, verbose=verbose,
                         max_points_per_centroid=max_points_per_centroid)
    if gpu:  # the same Lloyd iterations, subsample and initialisation (drawn on the CPU); the searches on GPUs
        model.index = to_gpus(model.index)
    model.train(x)  # faiss subsamples to max_points_per_centroid * k points and initialises from random points
    distances, assignments = model.index.search(x, 1)  # blocked search: memory O(N), not O(N x K)
    return model.centroids.astype(np.float32), assignments[:, 0].astype(np.int64), distances[:, 0]


def two_level_kmeans(x: np.ndarray, k: int, iterations: int = 20, spherical: bool = True, seed: int = 0,
                     max_points_per_centroid: int = 128, refine_iterations: int = 3, ef_search: int = 64,
                     verbose: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means for large K on CPU: two-level initialisation, then Lloyd iterations with HNSW assignment.

    Same inputs and outputs as `kmeans`. The initialisation trains on at most `max_points_per_centroid * k` points
    (a seeded random subsample); the refinement and the final assignment see every point.
    """
    import faiss
    from faiss.contrib.clustering import two_level_clustering

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    if n < k:
        raise ValueError(f"k-means with {k} clusters needs at least {k} points, got {n}")
    rng = np.random.default_rng(seed)
    train = x if n <= max_points_per_centroid * k else x[np.sort(rng.choice(n, max_points_per_centroid * k, replace=False))]
    coarse = max(2, int(round(np.sqrt(k))))
    # rebalance: each coarse cell gets fine centroids in proportion to its points (about N / K points each)
    centroids, _ = two_level_clustering(train, coarse, k, rebalance=True, clustering_niter=iterations,
                                        spherical=spherical, seed=seed, verbose=verbose, min_points_per_centroid=1)
    del train
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if refine_iterations:
        # faiss.Clustering continues from the given centroids; the HNSW index is rebuilt on them every iteration
        clustering = faiss.Clustering(dim, k)
        clustering.niter, clustering.spherical, clustering.seed = refine_iterations, spherical, seed
        clustering.max_points_per_centroid = max(1, -(-n // k))  # every point: no subsampling
        clustering.verbose, clustering.min_points_per_centroid = verbose, 1  # N / K ~ 22 at VoxCeleb2 size
        faiss.copy_array_to_vector(centroids.ravel(), clustering.centroids)
        clustering.train(x, _hnsw_index(dim, ef_search))
        centroids = faiss.vector_to_array(clustering.centroids).reshape(k, dim).astype(np.float32)
    index = _hnsw_index(dim, ef_search)
    index.add(centroids)
    distances = np.empty(n, dtype=np.float32)
    assignments = np.empty(n, dtype=np.int64)
    for start in range(0, n, CHUNK * 4):
        block_distances, block_assignments = index.search(x[start : start + CHUNK * 4], 1)
        distances[start : start + CHUNK * 4] = block_distances[:, 0]
        assignments[start : start + CHUNK * 4] = block_assignments[:, 0]
    return centroids, assignments, distances


def _hnsw_index(dim: int, ef_search: int):
    """HNSW graph (L2) over centroids; on unit vectors its L2 order is the cosine order."""
    import faiss

    index = faiss.IndexHNSWFlat(dim, 32)
    index.hnsw.efConstruction = 40
    index.hnsw.efSearch = ef_search
    return index


# ------------------------------------------------------------------------------------------------ AHC


def knn_graph(points: np.ndarray, neighbors: int, gpu: bool = False):
    """Symmetric sparse kNN connectivity (cosine) of L2-normalised points, as a scipy CSR matrix."""
    import faiss
    from scipy import sparse

    n = len(points)
    k = min(neighbors + 1, n)
    index = faiss.IndexFlatIP(points.shape[1])
    if gpu:
        index = to_gpus(index)
    index.add(np.ascontiguousarray(points, dtype=np.float32))
    _, nearest = index.search(np.ascontiguousarray(points, dtype=np.float32), k)  # (n, k), self first
    rows = np.repeat(np.arange(n), k)
    cols = nearest.reshape(-1)
    valid = (cols >= 0) & (cols != rows)
    graph = sparse.coo_matrix((np.ones(valid.sum(), dtype=np.float32), (rows[valid], cols[valid])), shape=(n, n))
    return (graph + graph.T).tocsr()


def ahc(centroids: np.ndarray, num_classes: int, linkage: str = "average", neighbors: int = 32,
        gpu: bool = False) -> np.ndarray:
    """Agglomerative clustering of (normalised) centroids into `num_classes` classes.

    Args:
        centroids: (K, D) float32.
        neighbors: > 0: merges restricted to a kNN graph (memory O(K x neighbours)); 0: exact scipy linkage.
    Returns:
        (K,) int64 class of each centroid, 0..num_classes-1.
    """
    points = l2_normalize(centroids)
    if num_classes >= len(points):
        return np.arange(len(points), dtype=np.int64)
    if neighbors == 0:
        from scipy.cluster.hierarchy import fcluster, linkage as scipy_linkage

        # Exact: condensed distance matrix of K(K-1)/2 float64 values.
        tree = scipy_linkage(points.astype(np.float64), method=linkage, metric="euclidean" if linkage == "ward" else "cosine")
        labels = fcluster(tree, t=num_classes, criterion="maxclust") - 1
        return _consecutive(labels)
    import warnings

    from sklearn.cluster import AgglomerativeClustering

    graph = knn_graph(points, neighbors, gpu)
    model = AgglomerativeClustering(n_clusters=num_classes, linkage=linkage, connectivity=graph,
                                    metric="euclidean" if linkage == "ward" else "cosine")
    with warnings.catch_warnings():
        # a disconnected kNN graph is completed by sklearn (with a warning): that is the intended behaviour
        warnings.filterwarnings("ignore", message=".*connected components.*")
        labels = model.fit_predict(points)
    return _consecutive(labels)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int64)


# ------------------------------------------------------------------------------------------------ pipeline


def class_confidence(x: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Cosine between each point and the (normalised) mean of its class, computed in chunks.

    Returns (N,) float32; higher = more confident (DKU-DukeECE's distance to centroid, review section 3.2).
    """
    import torch

    sums = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    for start in range(0, len(x), CHUNK):
        block = torch.from_numpy(np.ascontiguousarray(x[start : start + CHUNK], dtype=np.float32))
        sums.index_add_(0, torch.from_numpy(labels[start : start + CHUNK]), block.double())
    centres = torch.nn.functional.normalize(sums, dim=1).float()
    out = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), CHUNK):
        block = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(x[start : start + CHUNK], dtype=np.float32)), dim=1)
        own = centres[torch.from_numpy(labels[start : start + CHUNK])]
        out[start : start + CHUNK] = (block * own).sum(dim=1).numpy()
    return out


def cluster(x: np.ndarray, cfg: ClusteringConfig, verbose: bool = False) -> ClusteringResult:
    """k-means (+ AHC of the centroids), labels propagated to every point, confidences."""
    import time

    timings: dict[str, float] = {}
    tick = time.perf_counter()
    if cfg.spherical and not _is_normalized(x):
        x = l2_normalize(x)  # one float32 copy; callers with large arrays pass normalised data
    timings["normalize"] = time.perf_counter() - tick
    gpu = use_gpu(cfg.gpu)
    tick = time.perf_counter()
    if cfg.two_level(gpu):
        centroids, assignments, _ = two_level_kmeans(x, cfg.kmeans_clusters, cfg.iterations, cfg.spherical, cfg.seed,
                                                     cfg.max_points_per_centroid, cfg.refine_iterations,
                                                     cfg.hnsw_ef_search, verbose)
    else:
        centroids, assignments, _ = kmeans(x, cfg.kmeans_clusters, cfg.iterations, cfg.spherical, cfg.seed,
                                           cfg.max_points_per_centroid, gpu, verbose)
    timings["kmeans"] = time.perf_counter() - tick
    tick = time.perf_counter()
    if cfg.method == "kmeans":
        centroid_classes = np.arange(cfg.kmeans_clusters, dtype=np.int64)
    else:
        centroid_classes = ahc(centroids, cfg.num_classes, cfg.linkage, cfg.ahc_neighbors, gpu)
    timings["ahc"] = time.perf_counter() - tick
    labels = _consecutive(centroid_classes[assignments])  # empty k-means clusters leave no gaps
    tick = time.perf_counter()
    confidence = class_confidence(x, labels, int(labels.max()) + 1)
    timings["confidence"] = time.perf_counter() - tick
    return ClusteringResult(labels, assignments, centroid_classes, confidence, timings)


# ------------------------------------------------------------------------------------------------ metrics


def purity(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of points whose cluster's majority true class is their own."""
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(truth, predicted, sparse=True).tocsc()  # (classes, clusters)
    return float(table.max(axis=0).sum() / len(predicted))


def cluster_metrics(predicted: np.ndarray, truth: np.ndarray | None = None) -> dict[str, float]:
    """Number of clusters, and NMI / purity when the true labels are known."""
    out: dict[str, float] = {"clusters": int(len(np.unique(predicted)))}
    if truth is not None:
        from sklearn.metrics import normalized_mutual_info_score

        out["nmi"] = float(normalized_mutual_info_score(truth, predicted))
        out["purity"] = purity(predicted, truth)
        out["speakers"] = int(len(np.unique(truth)))
    return out


def memory_estimate(n: int, dim: int, k: int, cfg: ClusteringConfig) -> dict[str, float]:
    """Bytes needed by the main arrays of `cluster` (float32 embeddings, faiss sample, AHC), in GiB."""
    gib = 1024 ** 3
    training_points = min(n, cfg.max_points_per_centroid * k)
    estimate = {
        "embeddings": n * dim * 4 / gib,
        "kmeans_sample": (training_points * dim * 4 if training_points < n else 0) / gib,
        "assignments": n * (8 + 4 + 8 + 4) / gib,  # labels, distances, propagated labels, confidence
        "centroids": k * dim * 4 / gib,
    }
    if cfg.method == "kmeans_ahc":
        if cfg.ahc_neighbors:
            edges = 2 * k * cfg.ahc_neighbors  # symmetric kNN graph, both directions
            estimate["ahc"] = (edges * (8 + 8 + 4) * 4 + k * dim * 8 * 2) / gib  # graph + sklearn copies, moments
            if cfg.linkage == "average":
                estimate["ahc"] += 2 * edges * dim * 4 / gib  # sklearn's paired_distances(X[rows], X[cols])
        else:
            estimate["ahc"] = k * (k - 1) / 2 * 8 * 2 / gib  # condensed matrix + scipy working copy
    estimate["total"] = sum(estimate.values())
    return estimate
