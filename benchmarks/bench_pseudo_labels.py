"""Pseudo-labelling at VoxCeleb2 scale on synthetic embeddings: k-means 50 000 -> AHC 7 500, time and memory.

    python benchmarks/bench_pseudo_labels.py --fraction 0.1 --dims 192        # quick: 109k points, 5k -> 750
    python benchmarks/bench_pseudo_labels.py --dims 192 512                   # full: 1 092 009 points
    python benchmarks/bench_pseudo_labels.py --fraction 0.1 --kmeans-mode two_level   # the full size's algorithm
    python benchmarks/bench_pseudo_labels.py --dims 192 --write docs/benchmarks.md    # + the table of each size

--write FILE replaces the table `pseudo-labels-<dim>` (`pseudo-labels-<dim>-<fraction>` below full size) of a
markdown file through benchmarks/doc_tables.py, which records the commit; the row header gives the load average.

Synthetic data shaped like VoxCeleb2 dev: 1 092 009 utterances of 5 994 speakers (counts per speaker drawn from a
log-normal, mean 182), speaker means uniform on the sphere (between-speaker cosine about 0), utterances = mean +
isotropic noise, L2-normalised, with the noise level set so that the within-speaker cosine is about 0.65 (the
spread of a good SSL model's embeddings). Generated in chunks, float32 only. `--fraction f` scales utterances,
speakers, k-means clusters and AHC classes together (same points per cluster). Prints the estimated memory of the
full-size run (it must fit 24 GiB), wall time per stage, peak RSS (resource.getrusage), NMI and purity against the
known speakers, and the effect of confidence filtering.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sslsv.pseudo_labels.clustering import (CHUNK, ClusteringConfig, ahc, class_confidence, cluster_metrics,  # noqa: E402
                                            kmeans, memory_estimate, two_level_kmeans, use_gpu,
                                            _consecutive)
from sslsv.pseudo_labels.filtering import FilteringConfig, filter_labels  # noqa: E402

VOX2_UTTERANCES, VOX2_SPEAKERS, KMEANS, CLASSES = 1_092_009, 5_994, 50_000, 7_500
GIB = 1024 ** 3


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: kilobytes


def synthetic(n: int, speakers: int, dim: int, within_cosine: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.lognormal(0.0, 0.5, speakers)
    counts = np.maximum(1, np.floor(counts / counts.sum() * n)).astype(np.int64)
    counts[: n - counts.sum()] += 1 if n > counts.sum() else 0
    while counts.sum() > n:  # rounding: trim the largest speakers
        counts[np.argmax(counts)] -= 1
    labels = rng.permutation(np.repeat(np.arange(speakers), counts))
    means = rng.standard_normal((speakers, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    # |noise|^2 = sigma^2 on average; cos(a, b) of two utterances ~ 1 / (1 + sigma^2)
    sigma = np.sqrt(1.0 / within_cosine - 1.0)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        block = means[labels[start : start + CHUNK]]
        block += (sigma / np.sqrt(dim)) * rng.standard_normal(block.shape, dtype=np.float32)
        x[start : start + CHUNK] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, labels


def measured_cosines(x: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed + 1)
    a, b = rng.integers(0, len(x), 20000), rng.integers(0, len(x), 20000)
    between = float(np.mean(np.sum(x[a] * x[b], axis=1)[labels[a] != labels[b]]))
    order = np.argsort(labels, kind="stable")
    same = order[:-1][labels[order[:-1]] == labels[order[1:]]]
    nxt = order[1:][labels[order[:-1]] == labels[order[1:]]]
    pick = rng.choice(len(same), min(20000, len(same)), replace=False)
    within = float(np.mean(np.sum(x[same[pick]] * x[nxt[pick]], axis=1)))
    return within, between


def run(dim: int, fraction: float, args) -> list[tuple[str, float, float]]:
    """One size; returns the (stage, wall seconds, peak RSS GiB after it) rows."""
    n, speakers = int(round(VOX2_UTTERANCES * fraction)), int(round(VOX2_SPEAKERS * fraction))
    k, classes = int(round(KMEANS * fraction)), int(round(CLASSES * fraction))
    cfg = ClusteringConfig(kmeans_clusters=k, num_classes=classes, linkage=args.linkage,
                           ahc_neighbors=args.ahc_neighbors, iterations=args.iterations,
                           max_points_per_centroid=args.max_points_per_centroid, gpu=args.gpu,
                           kmeans_mode=args.kmeans_mode, refine_iterations=args.refine_iterations)
    gpu = use_gpu(args.gpu)
    mode = (f"two-level + {cfg.refine_iterations} HNSW-assigned iterations" if cfg.two_level(gpu)
            else f"flat, {cfg.iterations} iterations")
    print(f"\n== {n:,} x {dim} embeddings, {speakers:,} speakers: k-means {k:,} ({mode}) -> AHC {classes:,} "
          f"({args.linkage}, {args.ahc_neighbors} neighbours), faiss GPU: {gpu}")
    timings = {}
    tick = time.perf_counter()
    x, truth = synthetic(n, speakers, dim, args.within_cosine, args.seed)
    timings["generate"] = time.perf_counter() - tick
    rss = {"generate": peak_rss_gib()}
    within, between = measured_cosines(x, truth, args.seed)
    print(f"   cosine within speakers {within:.3f}, between {between:.3f}; peak RSS {peak_rss_gib():.2f} GiB")

    tick = time.perf_counter()
    if cfg.two_level(gpu):
        centroids, assignments, _ = two_level_kmeans(x, k, cfg.iterations, True, cfg.seed, cfg.max_points_per_centroid,
                                                     cfg.refine_iterations, cfg.hnsw_ef_search)
    else:
        centroids, assignments, _ = kmeans(x, k, cfg.iterations, True, cfg.seed, cfg.max_points_per_centroid, gpu)
    timings["kmeans"] = time.perf_counter() - tick
    rss["kmeans"] = peak_rss_gib()
    print(f"   k-means      {timings['kmeans']:8.1f} s   peak RSS {peak_rss_gib():.2f} GiB")
    tick = time.perf_counter()
    centroid_classes = ahc(centroids, classes, cfg.linkage, cfg.ahc_neighbors, use_gpu(args.gpu))
    timings["ahc"] = time.perf_counter() - tick
    rss["ahc"] = peak_rss_gib()
    print(f"   AHC          {timings['ahc']:8.1f} s   peak RSS {peak_rss_gib():.2f} GiB")
    tick = time.perf_counter()
    labels = _consecutive(centroid_classes[assignments])
    confidence = class_confidence(x, labels, int(labels.max()) + 1)
    timings["propagate"] = time.perf_counter() - tick
    rss["propagate"] = peak_rss_gib()
    print(f"   propagate    {timings['propagate']:8.1f} s   peak RSS {peak_rss_gib():.2f} GiB")
    tick = time.perf_counter()
    kmeans_metrics = cluster_metrics(assignments, truth)
    metrics = cluster_metrics(labels, truth)
    keep, counts = filter_labels(labels, confidence, FilteringConfig(drop_fraction=0.1, min_cluster_size=8))
    kept = cluster_metrics(labels[keep], truth[keep])
    timings["metrics"] = time.perf_counter() - tick
    print(f"   metrics      {timings['metrics']:8.1f} s   peak RSS {peak_rss_gib():.2f} GiB")
    print(f"   k-means only: {kmeans_metrics['clusters']:,} clusters, NMI {kmeans_metrics['nmi']:.4f}, "
          f"purity {kmeans_metrics['purity']:.4f}")
    print(f"   k-means+AHC:  {metrics['clusters']:,} classes, NMI {metrics['nmi']:.4f}, purity {metrics['purity']:.4f}")
    print(f"   filtered (10 % least confident, clusters < 8): kept {counts['kept']:,}/{counts['total']:,}, "
          f"{counts['clusters_after']:,} classes, NMI {kept['nmi']:.4f}, purity {kept['purity']:.4f}")
    print(f"   total {sum(timings.values()):.1f} s (generation {timings['generate']:.1f} s); "
          f"peak RSS {peak_rss_gib():.2f} GiB")
    rss["metrics"] = peak_rss_gib()
    stages = {"generate": "generate embeddings", "kmeans": f"k-means {k:,} ({mode})",
              "ahc": f"AHC of the {k:,} centroids to {classes:,} classes", "propagate": "label propagation + confidences",
              "metrics": "NMI, purity, filtering"}
    rows = [(stages[key], timings[key], rss[key]) for key in stages]
    rows.append((f"total (NMI after AHC {metrics['nmi']:.4f}, purity {metrics['purity']:.4f})",
                 sum(timings.values()), peak_rss_gib()))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="scale of the run (0.1: quick)")
    parser.add_argument("--dims", type=int, nargs="+", default=[192, 512])
    parser.add_argument("--linkage", choices=["ward", "average"], default="ward")
    parser.add_argument("--ahc-neighbors", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--max-points-per-centroid", type=int, default=128)
    parser.add_argument("--within-cosine", type=float, default=0.65)
    parser.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--kmeans-mode", choices=["auto", "flat", "two_level"], default="auto",
                        help="auto: two-level for K >= 10 000 on CPU (the full size), flat otherwise")
    parser.add_argument("--refine-iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", metavar="FILE",
                        help="replace the pseudo-labels-<dim> table(s) of this markdown file")
    args = parser.parse_args(argv)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print("Estimated memory of the full-size run (GiB; float32 embeddings are the largest item):")
    for dim in (192, 512):
        for neighbors in (args.ahc_neighbors, 0):
            cfg = ClusteringConfig(ahc_neighbors=neighbors, max_points_per_centroid=args.max_points_per_centroid,
                                   linkage=args.linkage)
            est = memory_estimate(VOX2_UTTERANCES, dim, KMEANS, cfg)
            # + the generator's transient chunk and the metrics' label copies (small)
            parts = ", ".join(f"{key} {value:.2f}" for key, value in est.items() if key != "total")
            kind = f"kNN-graph {args.linkage} AHC ({neighbors} neighbours)" if neighbors else f"exact scipy {args.linkage} AHC"
            # 25 % headroom for the interpreter, torch/faiss/sklearn and transient copies
            verdict = "fits" if est["total"] < 0.75 * 24 else "does NOT fit (with headroom)"
            print(f"   {dim}-d, {kind}: {est['total']:.2f} ({parts}) -> {verdict} in 24 GiB")
    for dim in args.dims:
        load = os.getloadavg()[0]
        rows = run(dim, args.fraction, args)
        if args.write:
            from benchmarks.doc_tables import write_table

            name = f"pseudo-labels-{dim}" + ("" if args.fraction == 1.0 else f"-{args.fraction:g}")
            threads = args.threads or "default"
            head = (f"| stage ({os.cpu_count()} CPUs, {threads} faiss threads, load average {load:.1f} at the "
                    f"start) | wall time | peak RSS |")
            table = "\n".join([head, "|---|---:|---:|"]
                              + [f"| {stage} | {seconds:,.1f} s | {gib:.2f} GiB |" for stage, seconds, gib in rows])
            write_table(args.write, name, "benchmarks/bench_pseudo_labels.py", table,
                        code=["sslsv/pseudo_labels/clustering.py", "sslsv/pseudo_labels/filtering.py"])


if __name__ == "__main__":
    main()
