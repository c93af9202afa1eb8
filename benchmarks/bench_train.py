"""Where the time of a training step goes: per-phase timing, samples/s, CPU seconds per sample and peak memory of
the trainer's own step (sslsv.training.trainer.Trainer with a StepTimer attached), on the demo corpus.

    sslsv demo-corpus --output data/demo                         # once
    python benchmarks/bench_train.py                             # the three jobs, batch 64, 8 timed steps each
    python benchmarks/bench_train.py --jobs simclr --steps 15 --repeats 3
    python benchmarks/bench_train.py --jobs dino --set trainer.amp=bf16 --device cuda
    python benchmarks/bench_train.py --jobs simclr dino \
        --reference /path/to/theolepage-sslsv --reference-python /path/to/its/python

Jobs (the configs users compare first, with the demo corpus's MUSAN/RIR folders and validation off):
    simclr      configs/simclr/fast_resnet34.yml: Fast ResNet-34 SAP, 40 mels, 2 x 2 s views
    dino        configs/dino/fast_resnet34.yml: Fast ResNet-34, 80 mels, 2 x 4 s + 4 x 2 s views
    dino_ecapa  configs/dino/ecapa.yml: ECAPA-TDNN C=1024, 80 mels, 2 x 4 s + 4 x 2 s views

Each job runs in a fresh child process (its peak memory is its own). The first --warmup steps are not timed. Phases
(Trainer.timer, sslsv.training.trainer.StepTimer): data_wait is how long the step waited for the loader (audio read,
crop and augmentation plans run in the loader workers; `read_batch_1proc` is what one batch costs one process),
h2d, augment (reverb and noise, on the device), features and encoder (forward), head_loss (the rest of the forward),
backward, clip_check, sync (the one device->host read of the step), optimizer, after_step (EMA), diagnostics,
logging. CPU seconds count the whole process tree (main process and loader workers, from /proc), user and system
apart; peak memory is the largest sum of PSS over the tree (shared pages counted once) and the main process's peak
RSS. Our children run with the commands' process environment (sslsv.cli.PROCESS_ENVIRONMENT: the passive OpenMP
wait policy), as `python train.py` does; the reference's children with the caller's. With --reference, the same job
runs on the reference toolkit (theolepage/sslsv, benchmarks/ref_sslsv_job.py)
in alternation with ours, and the differences between the two jobs are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JOBS = {
    "simclr": "configs/simclr/fast_resnet34.yml",
    "dino": "configs/dino/fast_resnet34.yml",
    "dino_ecapa": "configs/dino/ecapa.yml",
}
PHASES = ["data_wait", "h2d", "augment", "features", "encoder", "head_loss", "backward", "clip_check", "sync",
          "optimizer", "after_step", "diagnostics", "logging"]
CLOCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ------------------------------------------------------------------------------------------------ process tree


def tree_pids(root: int) -> list[int]:
    """`root` and every live descendant (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def tree_cpu(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the live process tree under `root`."""
    user = system = 0.0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / CLOCK
        system += int(fields[12]) / CLOCK
    return user, system


def tree_pss(root: int) -> float:
    """Sum of the PSS (bytes) of the live process tree: pages shared by forked workers counted once."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class PeakMemory:
    """Samples the tree's PSS every `interval` seconds in a thread; `peak` in bytes."""

    def __init__(self, root: int | None = None, interval: float = 0.2):
        self.root, self.interval, self.peak = root or os.getpid(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss(self.root))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss(self.root))


def max_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# ------------------------------------------------------------------------------------------------ one job (child)


def job_overrides(args, run_dir: str) -> list[str]:
    values = {
        "run_dir": run_dir,
        "dataset.data_root": args.data_root,
        "dataset.manifest": "demo/train.csv",
        "dataset.batch_size": args.batch_size,
        "dataset.num_workers": args.workers,
        "augmentation.musan_dir": "demo/musan",
        "augmentation.rir_dir": "demo/rirs",
        "trainer.device": args.device,
        "trainer.progress_bar": "false",
        "trainer.validate_every": 0,
        "trainer.log_every_steps": args.log_every,
        "evaluation.trials": "[demo]",
    }
    return [f"{k}={v}" for k, v in values.items()] + list(args.set or [])


class _Done(BaseException):
    """Raised from the timer's step callback once the timed steps are done (stops the epoch loop)."""


def run_job(args) -> dict:
    """Build the trainer of job `args.child`, train warmup + steps steps with its StepTimer, return the figures."""
    import numpy as np
    import torch

    from sslsv.config import load_config
    from sslsv.data.dataset import collate
    from sslsv.training.trainer import StepTimer, Trainer

    config = load_config(ROOT / JOBS[args.child], job_overrides(args, tempfile.mkdtemp(prefix="bench_train_")))
    warmup = args.warmup
    if args.compile:
        # A log step computes the costly diagnostics (Method.diagnostics_due): a second graph for torch.compile. The
        # untimed steps must include one, or its compilation lands in a timed step.
        warmup = max(warmup, config.trainer.log_every_steps)
    with PeakMemory() as memory:
        trainer = Trainer(config)
        if args.compile:
            trainer.compile_model()
        # What one batch's items cost one process (the workers' job: read, crop, augmentation plans).
        rows = np.arange(config.dataset.batch_size) % len(trainer.dataset)
        start = time.perf_counter()
        collate([trainer.dataset[(int(r), 7)] for r in rows])
        read_batch = time.perf_counter() - start
        timer = StepTimer(trainer.device)
        trainer.timer = timer
        handles = timer.attach(trainer.method)
        marks: dict[str, tuple] = {}
        pid = os.getpid()

        def on_step_end(done: int) -> None:
            if done == warmup:
                marks["start"] = (time.perf_counter(), tree_cpu(pid))
            if done == warmup + args.steps:
                marks["end"] = (time.perf_counter(), tree_cpu(pid))
                raise _Done

        timer.on_step_end = on_step_end
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        if warmup == 0:
            marks["start"] = (time.perf_counter(), tree_cpu(pid))
        try:
            while True:
                trainer.train_epoch()
                trainer.position.epoch += 1
                trainer.position.step_in_epoch = 0
        except _Done:
            pass
        for handle in handles:
            handle.remove()
    steps = timer.steps[warmup :]
    (t0, (u0, s0)), (t1, (u1, s1)) = marks["start"], marks["end"]
    samples = args.steps * config.dataset.batch_size
    phases = {}
    for name in PHASES + ["forward"]:
        values = [step.get(name, 0.0) for step in steps]
        phases[name] = sum(values) / len(values)
    phases["head_loss"] = phases.pop("forward") - phases["features"] - phases["encoder"]
    return {
        "job": args.child, "toolkit": "sslsv (this)", "config": JOBS[args.child],
        "batch_size": config.dataset.batch_size, "steps": args.steps, "workers": config.dataset.num_workers,
        "views": [f"{g.count} x {g.seconds:g} s" for g in config.dataset.views], "n_mels": config.features.n_mels,
        "augmentation": config.augmentation.strategy, "amp": config.trainer.amp, "device": str(trainer.device),
        "sync_every_steps": config.trainer.sync_every_steps,
        "activation_checkpointing": config.trainer.activation_checkpointing,
        "channels_last": config.trainer.channels_last,
        "compile": bool(args.compile), "warmup": warmup,
        "wall_s": t1 - t0, "samples_per_s": samples / (t1 - t0), "cpu_user_s": u1 - u0, "cpu_sys_s": s1 - s0,
        "cpu_s_per_sample": (u1 - u0 + s1 - s0) / samples, "peak_pss_gb": memory.peak / 1e9,
        "peak_rss_main_gb": max_rss_bytes() / 1e9,
        "peak_device_gb": (torch.cuda.max_memory_allocated(trainer.device) / 1e9
                           if trainer.device.type == "cuda" else None),
        "read_batch_1proc_s": read_batch, "step_s": phases,
        "busy_fraction": 1.0 - phases["data_wait"] / max(sum(phases.values()), 1e-9),
        "torch_threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------------ parent


def run_child(args, job: str, reference: bool = False) -> dict:
    if reference:
        command = [args.reference_python, str(ROOT / "benchmarks" / "ref_sslsv_job.py"), "--sslsv", args.reference,
                   "--job", job, *common_arguments(args)]
    else:
        command = [sys.executable, __file__, "--child", job, *common_arguments(args)]
        command += ["--set", *args.set] if args.set else []
        command += ["--compile"] if args.compile else []
    env = dict(os.environ, **dict(item.split("=", 1) for item in args.env or []))
    if reference and args.reference_env is not None:
        env = dict(os.environ, **dict(item.split("=", 1) for item in args.reference_env))
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def common_arguments(args) -> list[str]:
    return ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--workers", str(args.workers), "--data-root", args.data_root, "--device", args.device,
            "--log-every", str(args.log_every)]


def median_row(rows: list[dict]) -> dict:
    """Medians of the numbers of several runs of one job (phases included)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in rows)
    out["step_s"] = {k: statistics.median(r["step_s"].get(k, 0.0) for r in rows) for k in rows[0]["step_s"]}
    out["runs"] = len(rows)
    return out


def table(rows: list[dict]) -> str:
    head = ["job", "toolkit", "samples/s", "CPU-s/sample (user+sys)", "wall s", "peak PSS GB", "peak RSS main GB",
            "peak device GB", "busy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        device = "-" if r.get("peak_device_gb") is None else f"{r['peak_device_gb']:.2f}"
        lines.append(f"| {r['job']} | {r['toolkit']} | {r['samples_per_s']:.1f} | {r['cpu_s_per_sample']:.3f} "
                     f"({r['cpu_user_s']:.0f}+{r['cpu_sys_s']:.0f}) | {r['wall_s']:.1f} | {r['peak_pss_gb']:.2f} | "
                     f"{r['peak_rss_main_gb']:.2f} | {device} | {r.get('busy_fraction', float('nan')):.2f} |")
    return "\n".join(lines)


def phase_table(rows: list[dict]) -> str:
    ours = [r for r in rows if r["toolkit"] == "sslsv (this)"]
    head = ["phase (s per step)"] + [r["job"] for r in ours]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in PHASES:
        lines.append(f"| {name} | " + " | ".join(f"{r['step_s'].get(name, 0.0):.3f}" for r in ours) + " |")
    lines.append("| **step (sum)** | " + " | ".join(f"{sum(r['step_s'].values()):.3f}" for r in ours) + " |")
    lines.append("| read_batch_1proc | " + " | ".join(f"{r['read_batch_1proc_s']:.3f}" for r in ours) + " |")
    return "\n".join(lines)


DIFFERENCE_KEYS = ["batch_size", "views", "n_mels", "augmentation", "workers", "amp", "device", "optimizer",
                   "encoder", "notes"]


def differences(ours: dict, ref: dict) -> list[str]:
    found = []
    for key in DIFFERENCE_KEYS:
        if key in ours and key in ref and ours[key] != ref[key]:
            found.append(f"{key}: ours {ours[key]} vs reference {ref[key]}")
    found += [f"reference: {note}" for note in ref.get("differences", [])]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=list(JOBS), help="jobs to measure")
    parser.add_argument("--batch-size", type=int, default=64, help="utterances per step (default 64)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers (default 2)")
    parser.add_argument("--log-every", type=int, default=5, help="trainer.log_every_steps (default 5)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per job (alternating with the reference); "
                                                               "medians are reported")
    parser.add_argument("--data-root", default="data", help="folder holding demo/ (default data)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the method (Trainer.compile_model)")
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="extra config overrides for our jobs")
    parser.add_argument("--reference", metavar="PATH", help="the reference toolkit's checkout (theolepage/sslsv): "
                                                            "run the same jobs on it too")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="python of the reference's environment (default: this one)")
    parser.add_argument("--env", nargs="*", metavar="NAME=VALUE",
                        help="environment of every child, e.g. OMP_WAIT_POLICY=PASSIVE (both toolkits)")
    parser.add_argument("--reference-env", nargs="*", metavar="NAME=VALUE",
                        help="environment of the reference's children instead of --env")
    parser.add_argument("-o", "--output", help="write every run and the medians as JSON here")
    parser.add_argument("--child", choices=sorted(JOBS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import sslsv.cli  # noqa: F401  (the commands' process environment, OMP_WAIT_POLICY: as users run training)

        print(json.dumps(run_job(args)))
        return 0
    if not (Path(args.data_root) / "demo" / "train.csv").is_file():
        raise SystemExit(f"{args.data_root}/demo/train.csv is missing: run `sslsv demo-corpus --output "
                         f"{args.data_root}/demo` first")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; batch {args.batch_size}, {args.steps} timed steps "
          f"(+{args.warmup}), {args.workers} workers, {args.repeats} run(s) per job; env {args.env or '-'}"
          + (f", reference env {args.reference_env}" if args.reference_env is not None else ""), flush=True)
    runs: list[dict] = []
    medians: list[dict] = []
    for job in args.jobs:
        ours, refs = [], []
        for _ in range(args.repeats):
            ours.append(run_child(args, job))
            print(f"{job} ours: {ours[-1]['samples_per_s']:.1f} samples/s, "
                  f"{ours[-1]['cpu_s_per_sample']:.3f} CPU-s/sample", flush=True)
            if args.reference:
                refs.append(run_child(args, job, reference=True))
                print(f"{job} reference: {refs[-1]['samples_per_s']:.1f} samples/s, "
                      f"{refs[-1]['cpu_s_per_sample']:.3f} CPU-s/sample", flush=True)
        runs += ours + refs
        medians.append(median_row(ours))
        if refs:
            medians.append(median_row(refs))
            o, r = medians[-2], medians[-1]
            print(f"{job}: ours / reference: samples/s x{o['samples_per_s'] / r['samples_per_s']:.2f}, CPU-s/sample "
                  f"x{o['cpu_s_per_sample'] / r['cpu_s_per_sample']:.2f}, "
                  f"peak PSS x{o['peak_pss_gb'] / r['peak_pss_gb']:.2f}")
            for line in differences(o, r):
                print(f"  differs: {line}")
    print(table(medians))
    print()
    print(phase_table(medians))
    if args.output:
        Path(args.output).write_text(json.dumps({"runs": runs, "medians": medians}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
