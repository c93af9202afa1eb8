"""DINO against SimCLR on the demo corpus: validation EER over training time, teacher entropies, test EER.

    sslsv demo-corpus --output data/demo                       # once
    python benchmarks/dino_learning_curve.py                   # DINO 30 epochs, SimCLR 60 (about the same compute)
    python benchmarks/dino_learning_curve.py --dino-epochs 4 --simclr-epochs 8 --plot /tmp/curve.png   # a quick look

Both runs train in this process with the shipped demo configs (configs/dino/fast_resnet34_demo.yml,
configs/simclr/fast_resnet34_demo.yml) and only their epoch counts changed, validating on the demo's validation
trials after every `--validate-every` epochs. The training clock excludes validation. A DINO demo step costs about
two SimCLR steps (twice the audio through the student plus the teacher's pass), so SimCLR gets twice the epochs by
default; the plot's x axis is the measured training time, so equal wall time can be read off it. The figure (EER
curves, teacher entropy and usage entropy against log K) goes to --plot, the figures to stdout and --json.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslsv.config import load_config  # noqa: E402  (after the path insert)
from sslsv.evaluation.evaluate import evaluate_run  # noqa: E402
from sslsv.evaluation.validation import trial_validator  # noqa: E402
from sslsv.training.diagnostics import read_metrics  # noqa: E402
from sslsv.training.trainer import Trainer  # noqa: E402


def train_with_clock(name: str, config_path: str, epochs: int, validate_every: int, extra: list[str] = ()) -> dict:
    """Train one run from scratch; returns its validation curve against training seconds and its run directory."""
    run_dir = ROOT / "models" / "bench" / f"curve_{name}"
    overrides = [f"run_dir={run_dir}", f"trainer.epochs={epochs}", f"trainer.validate_every={validate_every}",
                 "trainer.progress_bar=false", "trainer.early_stopping_patience=0", *extra]
    config = load_config(ROOT / config_path, overrides)
    validate = trial_validator(config)
    curve: list[dict] = []
    clock = {"start": time.perf_counter(), "validating": 0.0}

    def timed_validation(model):
        began = time.perf_counter()
        trained = began - clock["start"] - clock["validating"]
        metrics = validate(model)
        clock["validating"] += time.perf_counter() - began
        curve.append({"train_seconds": trained, "val_eer": metrics["val/eer"]})
        return metrics

    Trainer(config, restart=True, validate=timed_validation).fit()
    total = time.perf_counter() - clock["start"] - clock["validating"]
    return {"name": name, "config": config_path, "epochs": epochs, "run_dir": str(run_dir), "curve": curve,
            "train_seconds": total}


def test_eer(run_dir: str) -> tuple[float, float]:
    """Test EER (demo trials) of the run's averaged weights, and of the same encoder with random weights."""
    results = evaluate_run(run_dir, ["demo"], random_baseline=True, progress=False, plots=False)
    return results["test/demo"]["eer"], results["test/demo_random"]["eer"]


def entropy_series(run_dir: str) -> dict[str, list]:
    records = [r for r in read_metrics(run_dir) if "train/teacher_entropy" in r]
    return {"step": [r["step"] for r in records],
            "teacher_entropy": [r["train/teacher_entropy"] for r in records],
            "usage_entropy": [r["train/teacher_usage_entropy"] for r in records]}


def plot(runs: list[dict], entropies: dict, out_dim: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for run, marker in zip(runs, "os"):
        minutes = [p["train_seconds"] / 60 for p in run["curve"]]
        left.plot(minutes, [p["val_eer"] for p in run["curve"]], marker=marker, label=f"{run['name']} (validation)")
    left.axhline(runs[0]["random_eer"], color="grey", linestyle="--", label="random weights (test)")
    left.set_xlabel("training time (min, validation excluded)")
    left.set_ylabel("EER (%)")
    left.set_title("Validation EER, demo corpus")
    left.legend(loc="upper right", fontsize=8)
    right.plot(entropies["step"], entropies["teacher_entropy"], label="teacher entropy (per sample)")
    right.plot(entropies["step"], entropies["usage_entropy"], label="usage entropy (batch mean)")
    right.axhline(math.log(out_dim), color="grey", linestyle="--", label=f"log K = {math.log(out_dim):.2f} (uniform)")
    right.set_xlabel("step")
    right.set_ylabel("entropy (nats)")
    right.set_title("DINO teacher")
    right.legend(loc="center right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dino-epochs", type=int, default=30)
    parser.add_argument("--simclr-epochs", type=int, default=60)
    parser.add_argument("--dino-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the DINO demo config for this comparison (e.g. method.teacher_temperature=0.04)")
    parser.add_argument("--validate-every", type=int, default=3, help="epochs between validations (default 3)")
    parser.add_argument("--plot", default="docs/figures/dino_demo_curve.png")
    parser.add_argument("--json", default="models/bench/dino_learning_curve.json")
    parser.add_argument("--write", metavar="FILE",
                        help="replace the dino-learning-curve table of this markdown file (benchmarks/doc_tables.py)")
    args = parser.parse_args(argv)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    runs = [train_with_clock("dino", "configs/dino/fast_resnet34_demo.yml", args.dino_epochs, args.validate_every,
                             args.dino_set),
            train_with_clock("simclr", "configs/simclr/fast_resnet34_demo.yml", args.simclr_epochs,
                             args.validate_every)]
    for run in runs:
        run["test_eer"], run["random_eer"] = test_eer(run["run_dir"])
    entropies = entropy_series(runs[0]["run_dir"])
    out_dim = load_config(ROOT / runs[0]["config"], []).method.options.out_dim
    plot(runs, entropies, out_dim, ROOT / args.plot)
    report = {"commit": commit.strip(), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
              "runs": runs, "dino_entropies": entropies, "out_dim": out_dim}
    Path(ROOT / args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(ROOT / args.json).write_text(json.dumps(report, indent=1))
    print(f"commit {report['commit']}")
    lines = ["| run | epochs | training time | final validation EER | test EER | random weights |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {run['name']} | {run['epochs']} | {run['train_seconds'] / 60:.1f} min | "
              f"{run['curve'][-1]['val_eer']:.2f} % | {run['test_eer']:.2f} % | {run['random_eer']:.2f} % |"
              for run in runs]
    print("\n".join(lines))
    if args.write:
        from benchmarks.doc_tables import write_table

        write_table(args.write, "dino-learning-curve", "benchmarks/dino_learning_curve.py", "\n".join(lines),
                    [run["config"] for run in runs], ["sslsv/methods/dino.py", "sslsv/methods/simclr.py"])
    print("DINO validation curve (min, EER %): " + ", ".join(
        f"{p['train_seconds'] / 60:.1f}: {p['val_eer']:.2f}" for p in runs[0]["curve"]))
    print(f"DINO teacher entropy first/last: {entropies['teacher_entropy'][0]:.3f} / "
          f"{entropies['teacher_entropy'][-1]:.3f}, usage entropy {entropies['usage_entropy'][0]:.3f} / "
          f"{entropies['usage_entropy'][-1]:.3f} (log K = {math.log(out_dim):.3f})")


if __name__ == "__main__":
    main()
