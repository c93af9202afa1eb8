"""Time AS-norm on a VoxCeleb1-E-sized problem: 580,000 trials over ~4,700 utterances, 6,000-row cohort, top 300.

python benchmarks/bench_asnorm.py [--device cuda] [--runs 3] [--write docs/benchmarks.md]
Prints the median wall time of `runs` runs of normalize_scores (cosine scoring included); --write replaces the
table `asnorm-timing` of a markdown file (benchmarks/doc_tables.py: the commit and the machine's load are recorded).
"""
import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from sslsv.evaluation.normalization import build_cohort, normalize_scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=580_000)
    parser.add_argument("--utterances", type=int, default=4_700)
    parser.add_argument("--cohort", type=int, default=6_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--top-n", type=int, default=300)
    parser.add_argument("--write", metavar="FILE", help="replace the asnorm-timing table of this markdown file")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]  # before the work: the load of the other jobs sharing the machine
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.standard_normal((args.utterances, args.dim), dtype=np.float32)).to(args.device)
    cohort = build_cohort(torch.from_numpy(rng.standard_normal((args.cohort, args.dim), dtype=np.float32))).to(args.device)
    enroll = rng.integers(0, args.utterances, args.trials)
    test = rng.integers(0, args.utterances, args.trials)
    times = []
    for _ in range(args.runs):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = normalize_scores(emb, enroll, test, cohort, "as", args.top_n)
        times.append(time.perf_counter() - start)
    assert np.isfinite(out).all()
    print(f"AS-norm top {args.top_n}: {args.trials:,} trials, {args.utterances:,} utterances, cohort {args.cohort:,} x "
          f"{args.dim} on {args.device} ({torch.get_num_threads()} threads): median {statistics.median(times):.3f} s "
          f"over {args.runs} runs ({', '.join(f'{t:.3f}' for t in times)})")
    if args.write:
        root = Path(__file__).resolve().parents[1]
        sys.path.insert(0, str(root))
        from benchmarks.doc_tables import write_table

        machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
                   f"{args.device}, load average {load:.1f} at the start")
        result = (f"{args.trials:,} trials, {args.utterances:,} utterances, cohort {args.cohort:,} x {args.dim}, "
                  f"top {args.top_n}: median {statistics.median(times):.2f} s over {args.runs} runs "
                  f"({', '.join(f'{t:.2f}' for t in times)})")
        table = f"| date | machine | result |\n|---|---|---|\n| {date.today()} | {machine} | {result} |"
        write_table(args.write, "asnorm-timing", "benchmarks/bench_asnorm.py", table,
                    code=["sslsv/evaluation/normalization.py"])


if __name__ == "__main__":
    main()
