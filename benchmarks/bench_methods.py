"""Every SSL method on the demo corpus with Fast ResNet-34: EER, minDCF and wall time, against random weights.

    sslsv demo-corpus --output data/demo                    # once
    python benchmarks/bench_methods.py                   # all methods, configs/<method>/fast_resnet34_demo.yml
    python benchmarks/bench_methods.py --methods simclr moco --epochs 5
    python benchmarks/bench_methods.py --ablations       # the collapse ablations of the review, section 6.1
    python benchmarks/bench_methods.py --ablations --methods dino_no_centering --epochs 4
    python benchmarks/bench_methods.py --write docs/methods.md   # replace the results table of that file

Each run trains in a subprocess (train.py, so exactly what a user runs), then evaluate.py's code scores the demo
trials. Runs go to models/bench/<name>/ and are restarted from scratch each time; each run's row is kept in
models/bench/<name>/bench_row.json, so the table written by --write holds every method measured so far (in the
order of METHODS / ABLATIONS), whichever invocation measured it. Its "measured" column gives the date.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslsv.training.diagnostics import read_metrics  # noqa: E402  (after the path insert)

from sslsv.registry import METHODS as REGISTERED  # noqa: E402

# Every registered method that ships a demo config (pseudo-label rounds and distillation are stages of other
# recipes and ship none), in registry order.
METHODS = [m for m in REGISTERED.names() if (ROOT / "configs" / m / "fast_resnet34_demo.yml").is_file()]
# Options of a framework, each a row beside the framework's own (same demo settings otherwise): name -> config.
VARIANTS = {
    "simclr_ssps": "configs/simclr/fast_resnet34_ssps_demo.yml",
    "simclr_margin": "configs/simclr/fast_resnet34_margin_demo.yml",
    "dino_ssps": "configs/dino/fast_resnet34_ssps_demo.yml",
}
METHODS += [name for name, path in VARIANTS.items() if (ROOT / path).is_file()]

# (name, method config, overrides): the review's section 6.1 collapse cases, detected by the collapse watch. A demo
# run has 50 steps, so the watch must react within 10 consecutive steps instead of the default 50; every step is
# logged, so metrics.jsonl holds exactly the values the watch saw.
WATCH = ["collapse.patience_steps=10", "trainer.log_every_steps=1"]
ABLATIONS = [
    ("moco_no_ema", "moco", ["method.use_momentum_encoder=false", *WATCH]),
    ("moco_high_temperature", "moco", ["method.temperature=1.0", *WATCH]),
    # The review's tau_t (0.04), whatever the demo config uses: the sharpening drives the one-hot collapse.
    ("dino_no_centering", "dino", ["method.centering=false", "method.teacher_temperature=0.04", *WATCH]),
    ("dino_no_sharpening", "dino", ["method.sharpening=false", *WATCH]),
]
BENCH = ROOT / "models" / "bench"
RANDOM_LABEL = "random weights (Fast ResNet-34)"
RANDOM_CONFIG = "configs/simclr/fast_resnet34_demo.yml"  # the encoder of the random-weights row
# Methods whose demo config reads the representation out differently from the other methods (CPC: the mean of the
# frame features, no head), so that random weights of the same read-out are their fair baseline: a row of its own.
OWN_BASELINE = {"cpc"}


def train(name: str, method: str, overrides: list[str], epochs: int | None) -> tuple[Path, float, str]:
    run_dir = BENCH / name
    config = VARIANTS.get(method, f"configs/{method}/fast_resnet34_demo.yml")
    command = [sys.executable, "train.py", config, f"run_dir={run_dir}",
               "trainer.progress_bar=false", "--restart", *overrides]
    if epochs:
        command.append(f"trainer.epochs={epochs}")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer: nothing on stderr
        return run_dir, elapsed, f"failed: killed by signal {-result.returncode}"
    if result.returncode != 0:
        return run_dir, elapsed, "failed: " + (result.stderr.strip().splitlines() or ["?"])[-1]
    return run_dir, elapsed, ""


def collapse_messages(run_dir: Path) -> list[str]:
    if not (run_dir / "metrics.jsonl").exists():
        return []
    records = read_metrics(run_dir)
    return list(dict.fromkeys(r["collapse"] for r in records if "collapse" in r))  # in order of appearance


def short_detail(detail: str) -> str:
    """The first collapse report of a run and how often it was repeated (each report names its step)."""
    reports, last = detail, ""
    if " (last step: " in detail:
        reports, last = detail.split(" (last step: ", 1)
        last = " (last step: " + last
    parts = reports.split("; collapse suspected at ")
    more = f"; reported {len(parts)} times in all" if len(parts) > 1 else ""
    return parts[0] + more + last


def last_signals(run_dir: Path) -> str:
    train = [r for r in read_metrics(run_dir) if "train/loss" in r]
    if not train:
        return ""
    keys = ("train/embedding_std", "train/contrastive_entropy", "train/teacher_entropy", "train/cluster_entropy")
    return ", ".join(f"{k[6:]} {train[-1][k]:.3g}" for k in keys if k in train[-1])


def evaluate(run_dir: Path, random_weights: bool = False):
    import torch

    from sslsv.evaluation.evaluate import evaluate_model
    from sslsv.runs import load_model

    model, config, _ = load_model(run_dir, device="cpu", random_weights=random_weights)
    return evaluate_model(model, "demo", config, torch.device("cpu"), progress=False)


def evaluate_random_reference():
    """The random-weights row: RANDOM_CONFIG's Fast ResNet-34 (SAP, 512-d, 40 mels) at its seed, whichever method
    ran first (the DINO configs, for one, pool with ASP, whose random weights score differently)."""
    import torch

    from sslsv.config import load_config
    from sslsv.encoders.base import build_speaker_model
    from sslsv.evaluation.evaluate import evaluate_model
    from sslsv.registry import load_all

    load_all()
    config = load_config(ROOT / RANDOM_CONFIG)
    config.dataset.data_root = str(ROOT / "data")
    torch.manual_seed(config.trainer.seed)  # as evaluate.py --random-baseline: the run's own initialisation
    model = build_speaker_model(config.encoder, config.features).eval()
    return evaluate_model(model, "demo", config, torch.device("cpu"), progress=False)


def row_of(name: str, metrics, elapsed: float, detail: str, epochs: int | None = None) -> dict:
    row = {"name": name, "elapsed": elapsed, "detail": detail, "date": time.strftime("%Y-%m-%d"), "epochs": epochs}
    if metrics is not None:
        row.update(eer=metrics.eer, min_dcf_001=metrics.min_dcf_001, min_dcf_005=metrics.min_dcf_005,
                   trials=metrics.num_trials)
    return row


def saved_row(name: str) -> dict | None:
    path = BENCH / name / "bench_row.json"
    return json.loads(path.read_text()) if path.exists() else None


def table_rows(path: Path, marker: str) -> dict[str, str]:
    """The rows already in table `marker` of `path` (benchmarks/doc_tables.py markers): first cell -> whole line."""
    from benchmarks.doc_tables import table_text

    section = table_text(path, marker)
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| run |")]
    return {line.split("|")[1].strip(): line for line in rows}


def render(names: list[str], args, kept: dict[str, str] | None = None) -> str:
    """The markdown table of the saved rows of `names` (in that order), with the random-weights row first. A name
    with no saved row keeps its line from `kept` (the table already in the file being written), so a table
    measured over several sessions, whose run directories are gone, loses nothing."""
    import torch

    kept = kept or {}
    lines = ["| run | EER (%) | minDCF (0.01) | minDCF (0.05) | epochs | train wall time (s) | measured | collapse watch |",
             "|---|---|---|---|---|---|---|---|"]
    rows = []
    for name in ["random_weights", *[n for m in names for n in ([m, f"random_{m}"] if m in OWN_BASELINE else [m])]]:
        row = saved_row(name)
        label = RANDOM_LABEL if name == "random_weights" else own_baseline_label(name[7:]) if name.startswith(
            "random_") else name
        if row is None and label in kept:
            lines.append(kept[label])
        elif row is not None:
            rows.append(row)
            lines.append(format_row(row))
    trials = next((row["trials"] for row in rows if "trials" in row), "?")
    header = (f"Measured by `python benchmarks/bench_methods.py{' --ablations' if args.ablations else ''}` "
              f"(epochs \"config\": the demo config's, otherwise `--epochs`) on {platform.machine()} "
              f"({os.cpu_count()} CPUs, often shared by several runs: compare wall times only loosely), torch "
              f"{torch.__version__}; configs `configs/<method>/fast_resnet34_demo.yml`; demo trials ({trials}).")
    return header + "\n\n" + "\n".join(lines)


def own_baseline_label(method: str) -> str:
    return f"random weights ({method} read-out)"


def format_row(row: dict) -> str:
    epochs = row.get("epochs") or ("" if row["name"].startswith("random") else "config")
    if "eer" not in row:
        return (f"| {row['name']} | - | - | - | {epochs} | {row['elapsed']:.0f} | {row['date']} | "
                f"{short_detail(row['detail'])} |")
    return (f"| {row['name']} | {row['eer']:.2f} | {row['min_dcf_001']:.4f} | {row['min_dcf_005']:.4f} | "
            f"{epochs} | {row['elapsed']:.0f} | {row['date']} | {short_detail(row['detail'])} |")


# What the tables depend on besides this script and the configs (benchmarks/doc_tables.py checks freshness)
TABLE_CODE = ["sslsv/methods", "sslsv/encoders", "sslsv/audio", "sslsv/training", "sslsv/data"]


def write(path: Path, marker: str, table: str) -> bool:
    """Replace table `marker` of `path` through benchmarks/doc_tables.py (which records the commit); False."""
    from benchmarks.doc_tables import write_table

    configs = sorted({VARIANTS.get(m, f"configs/{m}/fast_resnet34_demo.yml") for m in METHODS} | {RANDOM_CONFIG})
    write_table(path, marker, "benchmarks/bench_methods.py", table, configs, TABLE_CODE)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to run (default all); with --ablations, ablation names (default all)")
    parser.add_argument("--epochs", type=int, default=None, help="override every config's trainer.epochs")
    parser.add_argument("--ablations", action="store_true", help="run the collapse ablations instead")
    parser.add_argument("--write", help="markdown file whose results section (between markers) is replaced")
    args = parser.parse_args(argv)
    if not (ROOT / "data/demo/train.csv").exists():
        print("build the demo corpus first: sslsv demo-corpus --output data/demo", file=sys.stderr)
        return 2

    runs = [(a, m, o) for a, m, o in ABLATIONS] if args.ablations else [(m, m, []) for m in METHODS]
    if args.methods:
        unknown = set(args.methods) - {name for name, _, _ in runs}
        if unknown:
            print(f"--methods: unknown {sorted(unknown)}; choose from {[name for name, _, _ in runs]}", file=sys.stderr)
            return 2
        runs = [run for run in runs if run[0] in args.methods]
    order = [a for a, _, _ in ABLATIONS] if args.ablations else METHODS
    marker = "methods-ablations" if args.ablations else "methods-results"
    kept = table_rows(Path(args.write), marker) if args.write else {}
    for name, method, overrides in runs:
        run_dir, elapsed, error = train(name, method, overrides, args.epochs)
        if error:
            row = row_of(name, None, elapsed, error, args.epochs)
        else:
            detail = "; ".join(collapse_messages(run_dir)) or "no collapse flagged"
            if args.ablations:
                detail += f" (last step: {last_signals(run_dir)})"
            row = row_of(name, evaluate(run_dir), elapsed, detail, args.epochs)
            if not args.ablations and name not in OWN_BASELINE and saved_row("random_weights") is None:
                (BENCH / "random_weights").mkdir(parents=True, exist_ok=True)
                baseline = row_of(RANDOM_LABEL, evaluate_random_reference(), 0, "")
                (BENCH / "random_weights" / "bench_row.json").write_text(json.dumps(baseline))
            if name in OWN_BASELINE:
                (BENCH / f"random_{name}").mkdir(parents=True, exist_ok=True)
                baseline = row_of(own_baseline_label(name), evaluate(run_dir, random_weights=True), 0, "")
                (BENCH / f"random_{name}" / "bench_row.json").write_text(json.dumps(baseline))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "bench_row.json").write_text(json.dumps(row))
        print(f"{name}: {row.get('eer', 'n/a')} % EER, {elapsed:.0f} s", flush=True)
        table = render(order, args, kept)  # rewritten after every run: a long benchmark keeps partial results
        if args.write and write(Path(args.write), marker, table):
            return 2
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
