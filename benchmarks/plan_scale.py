"""Planning figures for large corpora: wall time and storage of SSL training, shards and pseudo-label clustering
for VoxCeleb2 (1 092 009 utterances, 2 442 h) and a 10 M-utterance corpus on N GPUs.

    python benchmarks/plan_scale.py                                  # DINO Fast ResNet-34, 1 8 32 64 GPUs
    python benchmarks/plan_scale.py --config configs/simclr/fast_resnet34.yml --gpus 8 64
    python benchmarks/plan_scale.py --gpu-samples-per-s 950           # a measured GPU figure (bench_gpu.py)
    python benchmarks/plan_scale.py --shards-json /tmp/shards.json    # read cost per utterance (bench_shards.py)

Inputs, all printed with the figures:
- training FLOPs per sample: sslsv.training.cost.training_macs_per_sample (the MAC count of all the method's
  forward passes on the config's views, teacher included) x 2, plus the student's backward (2 x its forward);
- a measured per-sample cost on this machine: a few forward + backward steps of the method on random views (no
  data loading), which gives this machine's effective FLOP/s;
- per GPU: --gpu-samples-per-s when measured (benchmarks/bench_gpu.py), else the FLOPs at --gpu-tflops x --mfu
  (defaults: 989 TFLOP/s, an H100/H200's dense bf16 peak, at 5 % utilisation: an assumption, say so when quoting);
  --scaling-efficiency for the all-reduce and stragglers across GPUs;
- data: shard storage = audio as 16-bit PCM WAV + 1 KiB of tar headers per utterance; the read rate each GPU needs
  is its samples/s x the bytes of a whole utterance (shards are read whole); CPU cores for loading from the measured
  per-utterance read cost of --shards-json (benchmarks/bench_shards.py), if given;
- clustering: embedding extraction of the whole corpus (the encoder's MACs per second of audio) and flat k-means
  (N x K x D multiply-adds per iteration) at --gpu-tflops x --kmeans-efficiency per GPU, sharded over N GPUs, and
  on this machine's CPU at its measured float32 GEMM rate ("k-means here").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sslsv.config import load_config  # noqa: E402
from sslsv.methods.base import Batch, TrainingInfo  # noqa: E402
from sslsv.training.cost import training_macs_per_sample  # noqa: E402
from sslsv.training.trainer import build_method  # noqa: E402

CORPORA = {"VoxCeleb2": (1_092_009, 2_442.0), "10 M utterances": (10_000_000, 2_442.0 * 10_000_000 / 1_092_009)}
SAMPLE_RATE = 16000


def measure_cpu(config, batch: int, steps: int) -> float:
    """Seconds per sample of forward + backward of the method on random views (this machine, no data loading)."""
    torch.manual_seed(0)
    info = TrainingInfo(num_speakers=1000, num_samples=1024, steps_per_epoch=1, epochs=1)
    method = build_method(config, info).train()
    batch = max(batch, method.min_batch_size())
    views = [torch.randn(batch, int(round(g.seconds * SAMPLE_RATE))) for g in config.dataset.views for _ in range(g.count)]
    labels = torch.arange(batch)
    method.on_epoch_start(0)
    timings = []
    for step in range(steps + 1):
        tick = time.perf_counter()
        method(Batch(views, labels, labels)).loss.backward()
        if step:  # the first step warms up
            timings.append(time.perf_counter() - tick)
    return min(timings) / batch


def gemm_flops() -> float:
    """This machine's float32 matrix-product rate (what flat k-means runs on: N x K x D per iteration)."""
    import numpy as np

    a, b = np.random.rand(4096, 512).astype(np.float32), np.random.rand(512, 4096).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(3))
    return 2.0 * 4096 * 512 * 4096 / best


def _timed(function) -> float:
    tick = time.perf_counter()
    function()
    return time.perf_counter() - tick


def embedding_macs_per_audio_second(config) -> float:
    from sslsv.encoders.base import build_speaker_model
    from sslsv.encoders.profile import counting_macs

    model = build_speaker_model(config.encoder, config.features).eval()
    with torch.no_grad(), counting_macs(model) as total:
        model(torch.randn(1, 4 * SAMPLE_RATE))
    return total[0] / 4.0


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/dino/fast_resnet34.yml", help="training config")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 32, 64], help="GPU counts (default 1 8 32 64)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the config's trainer.epochs)")
    parser.add_argument("--gpu-samples-per-s", type=float, help="measured training samples/s of one GPU")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="GPU peak TFLOP/s (default 989, bf16)")
    parser.add_argument("--mfu", type=float, default=0.05,
                        help="assumed training utilisation of --gpu-tflops (default 0.05: small convolutions, fp32 "
                             "features and augmentation keep speaker CNNs far from the bf16 peak)")
    parser.add_argument("--scaling-efficiency", type=float, default=0.9, help="multi-GPU efficiency (default 0.9)")
    parser.add_argument("--kmeans-clusters", type=int, default=50_000, help="k-means K (default 50 000)")
    parser.add_argument("--kmeans-iterations", type=int, default=20, help="k-means iterations (default 20)")
    parser.add_argument("--kmeans-efficiency", type=float, default=0.05,
                        help="fraction of --gpu-tflops faiss k-means reaches (fp32 GEMM; default 0.05)")
    parser.add_argument("--shards-json", help="bench_shards.py --output: measured read cost per utterance")
    parser.add_argument("--measured", help="a previous --output of this script: reuse its CPU measurement")
    parser.add_argument("--cpu-batch", type=int, default=4, help="batch of the CPU measurement (default 4)")
    parser.add_argument("--cpu-steps", type=int, default=2, help="timed CPU steps (default 2)")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.set)
    epochs = args.epochs or config.trainer.epochs
    cost = training_macs_per_sample(config)
    # every forward pass (student, teacher, heads) + the student's backward (about twice its forward)
    flops = 2.0 * cost["macs_per_sample"] + 4.0 * cost["student_macs_per_sample"]
    if args.measured:
        cpu_seconds = json.loads(Path(args.measured).read_text())["cpu_seconds_per_sample"]
    else:
        cpu_seconds = measure_cpu(config, args.cpu_batch, args.cpu_steps)
    cpu_flops = flops / cpu_seconds
    if args.gpu_samples_per_s:
        gpu_sps, gpu_source = args.gpu_samples_per_s, "measured (--gpu-samples-per-s)"
    else:
        gpu_sps = args.gpu_tflops * 1e12 * args.mfu / flops
        gpu_source = f"FLOPs at {args.gpu_tflops:g} TFLOP/s x {args.mfu:.0%} (assumed)"
    embed_macs = embedding_macs_per_audio_second(config)
    cpu_gemm = gemm_flops()
    dim = config.encoder.options.embed_dim if hasattr(config.encoder.options, "embed_dim") else 512
    read_cost = None
    if args.shards_json:
        figures = json.loads(Path(args.shards_json).read_text())
        best = max((r for r in figures["rows"] if r["reader"] == "shards"), key=lambda r: r["utterances_per_s"])
        read_cost = max(best["workers"], 1) / best["utterances_per_s"]  # core-seconds per utterance
    print(f"{args.config}: {cost['macs_per_sample'] / 1e9:.2f} GMACs forward per sample "
          f"({cost['audio_seconds']:g} s of views) -> {flops / 1e9:.1f} GFLOP per training sample")
    print(f"this machine: {1 / cpu_seconds:.2f} samples/s forward+backward (batch {args.cpu_batch}), "
          f"{cpu_flops / 1e9:.1f} GFLOP/s effective; float32 GEMM {cpu_gemm / 1e9:.0f} GFLOP/s (k-means here)")
    print(f"one GPU: {gpu_sps:.0f} samples/s ({gpu_source}); {epochs} epochs; embedding {embed_macs / 1e9:.2f} "
          f"GMACs per second of audio; k-means K={args.kmeans_clusters}, D={dim}, {args.kmeans_iterations} iterations")
    rows = []
    for name, (utterances, hours) in CORPORA.items():
        mean_seconds = hours * 3600 / utterances
        utt_bytes = mean_seconds * SAMPLE_RATE * 2 + 1024
        storage = utterances * utt_bytes
        extraction_flop = 2 * embed_macs * hours * 3600
        kmeans_flop = 2.0 * utterances * args.kmeans_clusters * dim * args.kmeans_iterations
        for gpus in args.gpus:
            throughput = gpu_sps * gpus * (args.scaling_efficiency if gpus > 1 else 1.0)
            train = epochs * utterances / throughput
            gpu_flops = args.gpu_tflops * 1e12
            extraction = extraction_flop / (gpu_flops * args.mfu * gpus)
            kmeans = kmeans_flop / (gpu_flops * args.kmeans_efficiency * gpus)
            row = {"corpus": name, "gpus": gpus, "train_s": train, "epoch_s": train / epochs,
                   "read_mb_s_per_gpu": gpu_sps * utt_bytes / 1e6, "storage_gb": storage / 1e9,
                   "extraction_s": extraction, "kmeans_s": kmeans, "kmeans_cpu_here_s": kmeans_flop / cpu_gemm}
            if read_cost is not None:
                row["loader_cores_per_gpu"] = gpu_sps * read_cost
            rows.append(row)
    header = "| corpus | GPUs | training | per epoch | read per GPU | shards | extraction | k-means | k-means here |"
    print(header + (" loader cores/GPU |" if read_cost is not None else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if read_cost is not None else ""))
    for r in rows:
        line = (f"| {r['corpus']} | {r['gpus']} | {duration(r['train_s'])} | {duration(r['epoch_s'])} | "
                f"{r['read_mb_s_per_gpu']:.0f} MB/s | {r['storage_gb']:.0f} GB | {duration(r['extraction_s'])} | "
                f"{duration(r['kmeans_s'])} | {duration(r['kmeans_cpu_here_s'])} |")
        if read_cost is not None:
            line += f" {r['loader_cores_per_gpu']:.1f} |"
        print(line)
    result = {"config": args.config, "flop_per_sample": flops, "cpu_seconds_per_sample": cpu_seconds,
              "gpu_samples_per_s": gpu_sps, "gpu_source": gpu_source, "epochs": epochs, "rows": rows}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
