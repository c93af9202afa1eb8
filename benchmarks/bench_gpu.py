"""Is the accelerator busy? For the three training jobs of benchmarks/bench_train.py (SimCLR Fast ResNet-34, DINO
Fast ResNet-34 2 x 4 s + 4 x 2 s, DINO ECAPA-TDNN 1024) in fp32 and bf16, torch.compile off and on, plus full-length
embedding extraction (batched, batch 1, bf16 + NHWC, bf16 compiled: first and warm pass) and faiss k-means at
1 M x 512: samples/s, the busy fraction (1 - the share of the step spent
waiting for the loader), peak device memory (peak PSS of the process tree on the CPU).

    sslsv demo-corpus --output data/demo                  # once
    python benchmarks/bench_gpu.py                        # on the GPU (cuda when present), under 10 minutes
    python benchmarks/bench_gpu.py --device cpu --quick   # the smoke test of tests/test_bench_smoke.py

--quick shrinks every job to seconds on a CPU (batch 4, short views, narrow encoders, 1 timed step, 20 000 x 64
k-means, 6 utterances extracted, bf16 for the first job only, one intra-op thread) and leaves torch.compile out on
a CPU (compilation alone takes minutes there): it checks that every path runs, its figures mean nothing. All jobs
run in this process, one after the other (the device's peak memory is reset before each).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import JOBS, PeakMemory, run_job  # noqa: E402

# Overrides that make each job a seconds-long CPU smoke run (--quick).
QUICK = {
    "simclr": ["dataset.views=[{count: 2, seconds: 0.5}]", "encoder.base_width=4", "encoder.embed_dim=32"],
    "dino": ["dataset.views=[{count: 2, seconds: 0.5}, {count: 2, seconds: 0.25}]", "encoder.base_width=4",
             "encoder.embed_dim=32", "method.out_dim=256", "method.hidden_dim=64", "method.bottleneck_dim=32",
             "features.n_mels=40"],
    "dino_ecapa": ["dataset.views=[{count: 2, seconds: 0.5}, {count: 2, seconds: 0.25}]", "encoder.channels=32",
                   "encoder.last_channels=96", "encoder.se_channels=16", "encoder.attention_channels=16",
                   "encoder.embed_dim=32", "method.out_dim=256", "method.hidden_dim=64", "method.bottleneck_dim=32",
                   "features.n_mels=40"],
}


def device_of(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# fp32, compile off, on top of the matrix: the per-step host read and SVD of before trainer.sync_every_steps /
# trainer.diagnostics_every_steps (what deferring them gains), and DINO's peak memory with activation checkpointing.
VARIANTS = {
    "simclr": [("sync every step", ["trainer.sync_every_steps=1", "trainer.diagnostics_every_steps=1"])],
    "dino": [("activation checkpointing", ["trainer.activation_checkpointing=true"])],
}


def training_rows(args, device) -> list[dict]:
    rows = []
    compile_options = [False, True] if (device.type == "cuda" or not args.quick) and not args.no_compile else [False]
    for number, job in enumerate(args.jobs):
        runs = [(amp, compiled, "", []) for amp in (("none", "bf16") if number == 0 or not args.quick else ("none",))
                for compiled in compile_options]
        runs += [("none", False, label, extra) for label, extra in VARIANTS.get(job, [])]
        for amp, compiled, label, extra in runs:
            overrides = [f"trainer.amp={amp}"] + (QUICK[job] if args.quick else []) + extra
            namespace = SimpleNamespace(
                child=job, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                workers=args.workers, log_every=5, data_root=args.data_root, device=str(device),
                set=overrides, compile=compiled)
            row = run_job(namespace)
            row["variant"] = label
            rows.append(row)
            print(f"{job:10s} {amp:4s} compile={'on ' if compiled else 'off'}{' ' + label if label else ''} "
                  f"{row['samples_per_s']:8.1f} "
                  f"samples/s  busy {row['busy_fraction']:.2f}  "
                  f"peak {'device' if row['peak_device_gb'] is not None else 'PSS'} "
                  f"{row['peak_device_gb'] if row['peak_device_gb'] is not None else row['peak_pss_gb']:.2f} GB",
                  flush=True)
    return rows


def extraction_row(args, device) -> dict:
    """Full-length embeddings of the demo test utterances with a (random-weights) Fast ResNet-34, batched by length
    (sslsv.evaluation.embeddings.extract_embeddings, as evaluation runs it) and one by one (batch 1)."""
    import torch

    from sslsv.config import load_config
    from sslsv.data.manifest import read_manifest
    from sslsv.encoders.base import build_speaker_model
    from sslsv.evaluation.embeddings import extract_embeddings
    from sslsv.evaluation.evaluate import extraction_layout

    config = load_config(ROOT / JOBS["simclr"], QUICK["simclr"][1:] if args.quick else [])
    model = build_speaker_model(config.encoder, config.features).to(device).eval()
    manifest = read_manifest(Path(args.data_root) / "demo" / "test.csv")
    files = list(manifest.files)[: 6 if args.quick else None]
    seconds = sum(manifest.durations[: len(files)]) if getattr(manifest, "durations", None) is not None else None
    row = {"job": "extraction", "utterances": len(files), "audio_s": seconds}
    # batched fp32, one by one, and batched in bf16 autocast with the NHWC layout (evaluate --amp bf16
    # --channels-last; the layout only for the length of the run)
    variants = [("batched", {}, False), ("batch_1", {"batch_size": 1}, False),
                ("batched_bf16_nhwc", {"amp": "bf16"}, True)]
    if not args.quick and not args.no_compile:  # evaluate --amp bf16 --compile: with its compilation, then warm
        variants += [("batched_bf16_compiled", {"amp": "bf16", "compile": True}, False),
                     ("batched_bf16_compiled_warm", {"amp": "bf16", "compile": True}, False)]
    for label, options, nhwc in variants:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with extraction_layout(model, nhwc), PeakMemory() as memory:
            start = time.perf_counter()
            extract_embeddings(model, files, config.features.sample_rate, device, root=args.data_root,
                               progress=False, num_workers=args.workers, **options)
            wall = time.perf_counter() - start
        device_peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
        row[label] = {"wall_s": wall, "utterances_per_s": len(files) / wall, "peak_pss_gb": memory.peak / 1e9,
                      "peak_device_gb": device_peak}
        print(f"extraction {label:26s} {len(files)} utterances: {wall:.2f} s ({len(files) / wall:.1f}/s)", flush=True)
    return row


def kmeans_row(args, device) -> dict:
    """faiss k-means (sslsv.pseudo_labels.clustering.kmeans, spherical, 20 iterations) of N x D random points."""
    import numpy as np

    from sslsv.pseudo_labels.clustering import kmeans

    n, d, k = (20_000, 64, 100) if args.quick else (1_000_000, 512, args.kmeans_clusters)
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gpu = device.type == "cuda"
    start = time.perf_counter()
    try:
        kmeans(x, k, iterations=5 if args.quick else 20, gpu=gpu)
    except Exception as error:  # noqa: BLE001 - e.g. faiss without GPU support: reported, not fatal
        print(f"k-means {n} x {d}, k={k}, gpu={gpu}: {error}", flush=True)
        return {"job": "kmeans", "n": n, "d": d, "k": k, "gpu": gpu, "error": str(error)}
    wall = time.perf_counter() - start
    print(f"k-means {n} x {d}, k={k}, gpu={gpu}: {wall:.2f} s", flush=True)
    return {"job": "kmeans", "n": n, "d": d, "k": k, "gpu": gpu, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (figures meaningless)")
    parser.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=list(JOBS), help="training jobs")
    parser.add_argument("--batch-size", type=int, help="utterances per step (default 128; 4 with --quick)")
    parser.add_argument("--steps", type=int, help="timed steps (default 10; 1 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps (default 3, compile included; 1 with --quick)")
    parser.add_argument("--workers", type=int, help="loader workers (default 8; 0 with --quick)")
    parser.add_argument("--kmeans-clusters", type=int, default=10_000, help="k of the 1 M x 512 k-means")
    parser.add_argument("--no-compile", action="store_true", help="leave the torch.compile runs out")
    parser.add_argument("--data-root", default="data", help="folder holding demo/ (default data)")
    parser.add_argument("-o", "--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    quick = {"batch_size": 4, "steps": 1, "warmup": 1, "workers": 0}
    full = {"batch_size": 128, "steps": 10, "warmup": 3, "workers": 8}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not (Path(args.data_root) / "demo" / "test.csv").is_file():
        raise SystemExit(f"{args.data_root}/demo is missing: run `sslsv demo-corpus --output {args.data_root}/demo`")
    device = device_of(args.device)
    import torch

    threads = torch.get_num_threads()
    if args.quick:
        torch.set_num_threads(1)  # tiny ops: a second OpenMP thread only waits (and spins on a loaded machine)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads)


def _run(args, device) -> int:
    print(f"# bench_gpu on {device}{' (quick)' if args.quick else ''}: batch {args.batch_size}, {args.steps} timed "
          f"steps, {args.workers} workers", flush=True)
    result = {"device": str(device), "training": training_rows(args, device),
              "extraction": extraction_row(args, device), "kmeans": kmeans_row(args, device)}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
