"""Read throughput of the training data path: tar shards (sslsv.data.shards.ShardStream) vs files (TrainDataset +
EpochBatchSampler), on the demo corpus: utterances/s and crops/s of whole epochs through the trainer's DataLoader
(views, crops and collation as in training; no model).

    sslsv demo-corpus --output data/demo                   # once
    python benchmarks/bench_shards.py                      # 2 x 2 s views, batch 32, 0 and 2 workers, 3 epochs
    python benchmarks/bench_shards.py --workers 0 --epochs 1 --output /tmp/shards.json

The shards are written to a temporary folder first (the write time is reported too). Both readers find the files
in the page cache after the first epoch; on a network file system the files' random reads are what shards avoid,
and this benchmark does not measure that (it measures the CPU cost of each path).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch.utils.data import DataLoader  # noqa: E402

from sslsv.config import ViewGroup  # noqa: E402
from sslsv.data.dataset import EpochBatchSampler, TrainDataset, collate  # noqa: E402
from sslsv.data.manifest import read_manifest  # noqa: E402
from sslsv.data.shards import LIST_FILE, ShardStream, open_shards, write_shards  # noqa: E402


def epochs_per_second(loader, sampler, epochs: int) -> tuple[int, float]:
    """Samples read over `epochs` epochs and the seconds it took (the loader's workers started each epoch)."""
    samples, start = 0, time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            samples += len(batch["indices"])
    return samples, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data", help="data root (default data)")
    parser.add_argument("--manifest", default="demo/train.csv", help="manifest under the data root")
    parser.add_argument("--views", type=int, default=2, help="crops per utterance (default 2)")
    parser.add_argument("--seconds", type=float, default=2.0, help="crop length (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (default 0 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per reader (default 3)")
    parser.add_argument("--utts-per-shard", type=int, default=100, help="utterances per shard (default 100)")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    root = Path(args.data_root)
    manifest = read_manifest(root / args.manifest)
    views = [ViewGroup(args.views, args.seconds)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tick = time.perf_counter()
        write_shards(manifest, root, tmp, args.utts_per_shard, workers=1)
        write_seconds = time.perf_counter() - tick
        shards = open_shards(Path(tmp) / LIST_FILE, 16000)
        shard_bytes = sum(s.bytes for s in shards.shards)
        for workers in args.workers:
            files = TrainDataset(manifest, root, views, 16000)
            sampler = EpochBatchSampler(len(manifest), args.batch_size, seed=0)
            loader = DataLoader(files, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
            n, seconds = epochs_per_second(loader, sampler, args.epochs)
            rows.append({"reader": "files", "workers": workers, "utterances": n, "seconds": seconds})
            stream = ShardStream(shards, views, 16000, args.batch_size, seed=0, num_workers=workers)
            loader = DataLoader(stream, batch_size=stream.local_batch, collate_fn=collate, num_workers=workers)
            n, seconds = epochs_per_second(loader, stream, args.epochs)
            rows.append({"reader": "shards", "workers": workers, "utterances": n, "seconds": seconds})
    for row in rows:
        row["utterances_per_s"] = row["utterances"] / row["seconds"]
        row["crops_per_s"] = row["utterances_per_s"] * args.views
    result = {"manifest": str(root / args.manifest), "utterances": len(manifest), "views": args.views,
              "seconds_per_view": args.seconds, "batch_size": args.batch_size, "epochs": args.epochs,
              "shard_write_seconds": write_seconds, "shard_bytes": shard_bytes, "rows": rows}
    print(f"{len(manifest)} utterances, {args.views} x {args.seconds:g} s crops, batch {args.batch_size}, "
          f"{args.epochs} epochs; shards written in {write_seconds:.1f} s ({shard_bytes / 1e6:.1f} MB)")
    print("| reader | workers | utterances/s | crops/s |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['reader']} | {row['workers']} | {row['utterances_per_s']:.0f} | {row['crops_per_s']:.0f} |")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
