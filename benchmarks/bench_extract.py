"""Full-length test-embedding extraction: this toolkit against the reference toolkit (theolepage/sslsv, batch 1),
and how its time grows with the number and the length of the utterances.

    sslsv demo-corpus --output data/demo                                     # once
    python benchmarks/bench_extract.py --count 300 --repeats 3 \
        --reference /path/to/theolepage-sslsv --reference-python /path/to/its/python
    python benchmarks/bench_extract.py --scaling --counts 50 100 200 --lengths 2 4 8 16
    python benchmarks/bench_extract.py --count 300 --amp bf16 --channels-last          # ours, bf16 + NHWC
    python benchmarks/bench_extract.py --count 300 --compile                           # ours, torch.compile

The utterances are made once under DATA_ROOT/bench_extract/ by joining demo test utterances end to end (speech,
not noise) up to lengths drawn like VoxCeleb1's test set (log-normal, median 6.3 s, mean about 8 s, clipped to
4-30 s; `--scaling --lengths` uses fixed lengths instead). Both toolkits embed the same files with the same
architecture (Fast ResNet-34, SAP, 40 log-mels: configs/simclr/fast_resnet34.yml and the authors'
`simclr_proj-2048-BN-R-2048-BN-R-512_t-0.03`), random weights, in eval mode, with the same number of loader workers.
Ours runs `sslsv.evaluation.extract_embeddings` as `sslsv evaluate` does (length-sorted, padding-free batches),
and also at batch 1 (`--batch-1`); the reference runs its own `BaseEvaluation._extract_embeddings` with
`frame_length: null`, which forces batch 1 (benchmarks/ref_sslsv_job.py --job extract). Every run is a fresh child
process; runs alternate; medians and ratios are printed. CPU seconds count the whole process tree (loader workers
included); the model build and imports are outside the timed part in both. `--amp bf16|fp16` and
`--channels-last` run ours with that precision (extract_embeddings(amp=...)) and an NHWC model (evaluation.amp and
evaluation.channels_last of `sslsv evaluate`); `--compile` compiles our encoder (evaluation.compile): the timed run
includes the compilation, and a second pass in the same process gives the warm figure a large test set approaches.
The reference always runs float32 eager.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import PeakMemory, tree_cpu  # noqa: E402  (pure /proc helpers)

CONFIG = "configs/simclr/fast_resnet34.yml"
SAMPLE_RATE = 16_000


def utterance_lengths(count: int, fixed: float | None, seed: int = 0) -> list[float]:
    """Seconds of each utterance: `fixed`, or VoxCeleb1-test-like (log-normal, median 6.3 s, clipped to 4-30 s)."""
    import numpy as np

    if fixed is not None:
        return [float(fixed)] * count
    rng = np.random.default_rng(seed)
    return [float(x) for x in np.clip(rng.lognormal(np.log(6.3), 0.45, count), 4.0, 30.0)]


def make_utterances(data_root: Path, count: int, fixed: float | None) -> list[str]:
    """The benchmark's wav files (made once, reused), as paths relative to `data_root`."""
    import numpy as np
    import soundfile

    from sslsv.data.manifest import read_manifest

    name = f"n{count}_" + (f"{fixed:g}s" if fixed is not None else "vox1like")
    folder = data_root / "bench_extract" / name
    lengths = utterance_lengths(count, fixed)
    paths = [f"bench_extract/{name}/{i:05d}.wav" for i in range(count)]
    if (folder / "done").exists():
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(data_root / "demo" / "test.csv")
    speech = [soundfile.read(data_root / f, dtype="float32")[0] for f in manifest.files]
    source = 0
    for path, seconds in zip(paths, lengths):
        need, parts = int(seconds * SAMPLE_RATE), []
        while need > 0:
            chunk = speech[source % len(speech)][:need]
            parts.append(chunk)
            need -= len(chunk)
            source += 1
        soundfile.write(data_root / path, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    (folder / "done").write_text(json.dumps({"lengths_s": lengths}))
    return paths


# ------------------------------------------------------------------------------------------------ child


def child(args) -> int:
    """One extraction by this toolkit; prints one JSON line."""
    import torch

    from sslsv.config import load_config
    from sslsv.encoders.base import build_speaker_model
    from sslsv.evaluation.embeddings import extract_embeddings

    files = Path(args.files).read_text().split()
    config = load_config(ROOT / CONFIG)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_speaker_model(config.encoder, config.features).to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    def extract() -> torch.Tensor:
        return extract_embeddings(model, files, config.features.sample_rate, device, root=args.data_root,
                                  progress=False, num_workers=args.workers, batch_size=1 if args.batch_1 else None,
                                  amp=args.amp, compile=args.compile)

    with PeakMemory() as memory:
        (u0, s0), start = tree_cpu(os.getpid()), time.perf_counter()
        embeddings = extract()
        wall, (u1, s1) = time.perf_counter() - start, tree_cpu(os.getpid())
    warm = None
    if args.compile:  # the same extraction again in this process: the steady state a large test set sees
        start = time.perf_counter()
        extract()
        warm = time.perf_counter() - start
    variant = "".join([f" {args.amp}" if args.amp != "none" else "", " NHWC" if args.channels_last else "",
                       " compiled" if args.compile else "", " batch 1" if args.batch_1 else ""])
    print(json.dumps({"toolkit": "sslsv (this)" + variant, "utterances": len(files),
                      "dim": embeddings.shape[1], "wall_s": wall, "warm_wall_s": warm, "cpu_user_s": u1 - u0,
                      "cpu_sys_s": s1 - s0,
                      "peak_pss_gb": memory.peak / 1e9, "torch_threads": torch.get_num_threads()}))
    return 0


# ------------------------------------------------------------------------------------------------ parent


def run(command: list[str], env: dict) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ours(args, files_list: Path, batch_1: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", "--files", str(files_list), "--data-root", args.data_root,
               "--workers", str(args.workers), "--device", args.device, "--amp", args.amp]
    command += (["--batch-1"] if batch_1 else []) + (["--channels-last"] if args.channels_last else [])
    command += ["--compile"] if args.compile else []
    return run(command, dict(os.environ, **dict(item.split("=", 1) for item in args.env or [])))


def reference(args, files_list: Path) -> dict:
    command = [args.reference_python, str(ROOT / "benchmarks" / "ref_sslsv_job.py"), "--sslsv", args.reference,
               "--job", "extract", "--files", str(files_list), "--data-root", args.data_root,
               "--workers", str(args.workers), "--device", args.device]
    env = dict(os.environ, **dict(item.split("=", 1) for item in (args.reference_env if args.reference_env is not None
                                                                   else args.env) or []))
    return run(command, env)


def files_list(args, count: int, fixed: float | None) -> tuple[Path, float]:
    paths = make_utterances(Path(args.data_root), count, fixed)
    listing = Path(args.data_root) / "bench_extract" / f"list_{count}_{fixed}.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing, sum(utterance_lengths(count, fixed))


def summary(rows: list[dict], audio_s: float) -> dict:
    wall = statistics.median(r["wall_s"] for r in rows)
    cpu = statistics.median(r["cpu_user_s"] + r["cpu_sys_s"] for r in rows)
    return {"toolkit": rows[0]["toolkit"], "runs": len(rows), "wall_s": wall, "walls": [r["wall_s"] for r in rows],
            "cpu_s": cpu, "peak_pss_gb": statistics.median(r["peak_pss_gb"] for r in rows),
            "utterances_per_s": rows[0]["utterances"] / wall, "realtime_factor": audio_s / wall,
            "warm_wall_s": (statistics.median(r["warm_wall_s"] for r in rows)
                            if rows[0].get("warm_wall_s") is not None else None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="utterances (default 300)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="fixed utterance length (default: VoxCeleb1-test-like lengths)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each toolkit, alternating; medians")
    parser.add_argument("--batch-1", action="store_true", help="also run ours at batch 1")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of both toolkits (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                        help="precision of our extraction: float32 (none, default), bf16 or fp16 (CUDA only) autocast")
    parser.add_argument("--channels-last", action="store_true",
                        help="run our model channels_last (NHWC), as evaluation.channels_last / --channels-last do")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile our encoder, as evaluation.compile / --compile do: the timed run includes "
                             "the compilation; a second pass in the same process is reported as the warm wall time")
    parser.add_argument("--data-root", default="data", help="folder holding demo/ (default data)")
    parser.add_argument("--reference", metavar="PATH", help="the reference toolkit's checkout (theolepage/sslsv)")
    parser.add_argument("--reference-python", default=sys.executable, help="python of the reference's environment")
    parser.add_argument("--env", nargs="*", metavar="NAME=VALUE", help="environment of every child")
    parser.add_argument("--reference-env", nargs="*", metavar="NAME=VALUE",
                        help="environment of the reference's children instead of --env")
    parser.add_argument("--scaling", action="store_true",
                        help="ours only: time against --counts (at --seconds or VoxCeleb1-like lengths) and --lengths")
    parser.add_argument("--counts", type=int, nargs="*", default=[50, 100, 200], help="counts for --scaling")
    parser.add_argument("--lengths", type=float, nargs="*", default=[2, 4, 8, 16],
                        help="fixed lengths (s) for --scaling, at --count utterances")
    parser.add_argument("-o", "--output", help="write every run and the medians as JSON here")
    # child mode (internal)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import sslsv.cli  # noqa: F401  (the commands' process environment, OMP_WAIT_POLICY: as `sslsv evaluate` runs)

        return child(args)

    out: dict = {"command": sys.argv, "cpu_count": os.cpu_count()}
    if args.scaling:
        rows = []
        for count in args.counts:
            listing, audio = files_list(args, count, args.seconds)
            rows.append({"count": count, "seconds": args.seconds, "audio_s": audio, **summary([ours(args, listing)], audio)})
        for seconds in args.lengths:
            listing, audio = files_list(args, args.count, seconds)
            rows.append({"count": args.count, "seconds": seconds, "audio_s": audio,
                         **summary([ours(args, listing)], audio)})
        print("| utterances | length s | audio s | wall s | CPU s | utterances/s | x real time |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            length = f"{r['seconds']:g}" if r["seconds"] is not None else "VoxCeleb1-like"
            print(f"| {r['count']} | {length} | {r['audio_s']:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                  f"{r['utterances_per_s']:.1f} | {r['realtime_factor']:.0f} |")
        out["scaling"] = rows
    else:
        listing, audio = files_list(args, args.count, args.seconds)
        runs: dict[str, list[dict]] = {"ours": [], "ours_batch_1": [], "reference": []}
        for _ in range(args.repeats):
            runs["ours"].append(ours(args, listing))
            if args.batch_1:
                runs["ours_batch_1"].append(ours(args, listing, batch_1=True))
            if args.reference:
                runs["reference"].append(reference(args, listing))
        medians = {key: summary(rows, audio) for key, rows in runs.items() if rows}
        print(f"{args.count} utterances, {audio / 60:.1f} min of audio, {args.workers} loader workers, {args.device}")
        print("| toolkit | runs | wall s (median) | walls | CPU s | peak PSS GB | utterances/s | x real time |")
        print("|---|---:|---:|---|---:|---:|---:|---:|")
        for row in medians.values():
            walls = ", ".join(f"{w:.1f}" for w in row["walls"])
            print(f"| {row['toolkit']} | {row['runs']} | {row['wall_s']:.1f} | {walls} | {row['cpu_s']:.1f} | "
                  f"{row['peak_pss_gb']:.2f} | {row['utterances_per_s']:.2f} | {row['realtime_factor']:.0f} |")
        if "reference" in medians:
            ref = medians["reference"]
            print(f"ours / reference: {ref['wall_s'] / medians['ours']['wall_s']:.2f}x faster (wall), "
                  f"{medians['ours']['cpu_s'] / ref['cpu_s']:.2f}x the CPU seconds")
        warm = medians["ours"]["warm_wall_s"]
        if warm is not None:
            print(f"ours, compiled code warm (second pass in the process): {warm:.1f} s, {audio / warm:.0f}x real time"
                  + (f", {medians['reference']['wall_s'] / warm:.2f}x the reference" if "reference" in medians else ""))
        out.update({"runs": runs, "medians": medians, "audio_s": audio})
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
