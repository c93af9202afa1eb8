"""Label-efficient fine-tuning: how much do self-supervised weights help when only a fraction of labels exists?

For each fraction f of the run's training manifest (speaker-stratified: every speaker keeps round(f * its
utterances), at least one, drawn with a fixed seed), two supervised AAM-softmax runs (method `supervised`) are
trained on the same subset for the same number of epochs: one initialised from the SSL run's weights
(model_avg.pt or model.pt), one from random initialisation. Both are evaluated on the trial lists, and a table
(fraction, init, EER, minDCF) is printed and written to <out>/table.md (and table.json). The SSL run itself,
without fine-tuning, is the first row.

Layout of <out> (default <RUN>/finetune):
    frac0.5/train.csv          the subset manifest (File,Speaker[,Session][,Duration])
    frac0.5/ssl/, frac0.5/random/    the two runs (config.yml, weights, results.json, scores; no plots: run
                                     `python evaluate.py` on them for DET curves)
    table.md, table.json

Runs resume from their checkpoints when the command is repeated (--restart trains them again).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from sslsv.data.manifest import Manifest, read_manifest, write_manifest

__all__ = ["finetune_run", "finetune_main", "stratified_subset"]


def stratified_subset(manifest: Manifest, fraction: float, seed: int = 0) -> np.ndarray:
    """Rows of a speaker-stratified random subset: each speaker keeps max(1, round(fraction * n_speaker)) rows.

    Args:
        manifest: the full training manifest.
        fraction: in (0, 1]; 1 keeps every row.
        seed: the draw depends on (seed, speaker), so a speaker's rows do not change with the other speakers.

    Returns:
        Sorted int64 row indices.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fractions must be in (0, 1], got {fraction}")
    labels, names = manifest.speaker_ids()
    keep = []
    for index in range(len(names)):
        rows = np.flatnonzero(labels == index)
        count = max(1, int(round(fraction * len(rows))))
        rng = np.random.default_rng([seed, index])
        keep.append(rng.choice(rows, count, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


def _subset(manifest: Manifest, rows: np.ndarray, path: str) -> Manifest:
    pick = lambda values: None if values is None else [values[i] for i in rows]  # noqa: E731
    return Manifest([manifest.files[i] for i in rows], [manifest.speakers[i] for i in rows], pick(manifest.sessions),
                    pick(manifest.durations), path)


def _train(run_dir: Path, raw: dict, overrides: list[str], init_weights: Path | None, restart: bool) -> None:
    from sslsv.config import load_config
    from sslsv.training import checkpoint as ckpt
    from sslsv.training.trainer import Trainer, TrainingError

    config = load_config(data=raw, overrides=overrides)
    trainer = Trainer(config, restart=restart)
    if init_weights is not None and not ckpt.list_checkpoints(trainer.checkpoint_dir):
        try:
            trainer.method.encoder.load_state_dict(ckpt.load_checkpoint(init_weights), strict=True)
        except RuntimeError as error:
            raise TrainingError(f"cannot initialise {run_dir} from {init_weights}: the encoders differ ({error})") from None
        print(f"{run_dir}: encoder initialised from {init_weights}")
    trainer.fit()


def finetune_run(run_dir: str | Path, fractions: list[float], epochs: int, trials: list[str] | None = None,
                 output: str | Path | None = None, seed: int = 0, overrides: list[str] | None = None,
                 inits: tuple[str, ...] = ("ssl", "random"), restart: bool = False, use_average: bool = True,
                 progress: bool = False) -> list[dict]:
    """Fine-tune on labelled fractions from SSL vs random init, evaluate, and write <out>/table.md.

    Args:
        run_dir: the self-supervised run (config.yml and weights).
        fractions: labelled fractions of its training manifest, each in (0, 1].
        epochs: training epochs of every fine-tuning run.
        trials: trial lists (default: the run's evaluation.trials).
        output: output folder (default <run_dir>/finetune).
        seed: seed of the subsets.
        overrides: extra dotted config overrides for the fine-tuning runs (e.g. trainer.lr=1e-4).
        inits: which initialisations to train, among "ssl" and "random".
        restart: retrain runs that have checkpoints instead of resuming them.
        use_average: initialise from (and evaluate the SSL run with) the averaged weights when present.
        progress: progress bars while embedding.

    Returns:
        The table rows: dicts with trials, fraction, utterances, speakers, init, eer, min_dcf_001, run.
    """
    from sslsv.evaluation.evaluate import (RunError, evaluate_run, load_model, load_run_config, resolve_device,
                                           run_weights, score_trials, slug)
    from sslsv.evaluation.metrics import compute_metrics

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    unknown = [i for i in inits if i not in ("ssl", "random")]
    if unknown or not inits:
        raise RunError(f"init must be 'ssl' and/or 'random', got {list(inits)}")
    if epochs < 1:
        raise RunError(f"--epochs must be at least 1, got {epochs}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise RunError(f"--fractions must be in (0, 1], got {fractions}")
    names = list(trials or config.evaluation.trials)
    out = Path(output) if output is not None else run_dir / "finetune"
    weights = run_weights(run_dir, use_average)
    root = Path(config.dataset.data_root)
    manifest = read_manifest(root / config.dataset.manifest)
    raw = yaml.safe_load((run_dir / "config.yml").read_text())

    rows = []
    device = resolve_device(config.evaluation.device)
    model, model_config, _ = load_model(run_dir, use_average, device)  # reference row; nothing written to the run
    for name in names:
        trials_list, scores = score_trials(model, name, model_config, device, progress)
        m = compute_metrics(scores, trials_list.labels)
        rows.append({"trials": name, "fraction": 0.0, "utterances": 0, "speakers": 0, "init": "ssl (no fine-tuning)",
                     "eer": m.eer, "min_dcf_001": m.min_dcf_001, "run": str(run_dir)})
    del model
    for fraction in fractions:
        subset_rows = stratified_subset(manifest, fraction, seed)
        folder = out / f"frac{fraction:g}"
        subset_path = (folder / "train.csv").resolve()
        subset = _subset(manifest, subset_rows, str(subset_path))
        write_manifest(subset, subset_path)
        speakers = len(set(subset.speakers))
        batch = min(config.dataset.batch_size, len(subset))
        if batch < config.dataset.batch_size:
            print(f"fraction {fraction:g}: {len(subset)} utterances, batch size lowered to {batch}")
        for init in inits:
            sub_run = folder / init
            settings = [
                "method.name=supervised",
                f"dataset.manifest={subset_path}",  # absolute: data_root / absolute path is the path itself
                f"dataset.batch_size={batch}",
                f"run_dir={sub_run}",
                f"trainer.epochs={epochs}",
                "trainer.validate_every=0",
                f"evaluation.trials={json.dumps(names)}",
                *(overrides or []),
            ]
            print(f"fine-tuning: fraction {fraction:g} ({len(subset)} utterances, {speakers} speakers), init {init} "
                  f"-> {sub_run}")
            _train(sub_run, raw, settings, weights if init == "ssl" else None, restart)
            results = evaluate_run(sub_run, names, progress=progress, plots=False)
            for name in names:
                m = results[f"test/{slug(name)}"]
                rows.append({"trials": name, "fraction": fraction, "utterances": len(subset), "speakers": speakers,
                             "init": init, "eer": m["eer"], "min_dcf_001": m["min_dcf_001"], "run": str(sub_run)})
    out.mkdir(parents=True, exist_ok=True)
    table = format_finetune_table(rows, run_dir, epochs)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(rows, indent=2))
    print(table)
    print(f"-> {out / 'table.md'}")
    return rows


def format_finetune_table(rows: list[dict], run_dir: str | Path, epochs: int) -> str:
    lines = [f"Label-efficient fine-tuning of {run_dir} (supervised AAM-softmax, {epochs} epoch(s) per run)", "",
             "| trials | fraction | utterances | speakers | init | EER (%) | minDCF0.01 |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        fraction = "-" if r["init"].startswith("ssl (") else f"{r['fraction']:g}"
        count = "-" if r["init"].startswith("ssl (") else str(r["utterances"])
        speakers = "-" if r["init"].startswith("ssl (") else str(r["speakers"])
        lines.append(f"| {r['trials']} | {fraction} | {count} | {speakers} | {r['init']} | {r['eer']:.2f} | "
                     f"{r['min_dcf_001']:.4f} |")
    return "\n".join(lines)


def finetune_main(argv: list[str] | None = None) -> int:
    """sslsv finetune RUN --fractions 0.1 0.5 1.0 --epochs E [--trials demo] [key=value ...]"""
    from sslsv.cli import _run

    parser = argparse.ArgumentParser(
        prog="sslsv finetune",
        description="Label-efficient fine-tuning: supervised (AAM-softmax) runs on speaker-stratified labelled "
                    "fractions of the run's training manifest, initialised from the SSL weights and from random "
                    "weights; prints and writes RUN/finetune/table.md.")
    parser.add_argument("run", help="self-supervised run directory")
    parser.add_argument("overrides", nargs="*", help="extra key.subkey=value for the fine-tuning runs")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--epochs", type=int, required=True, help="epochs of each fine-tuning run")
    parser.add_argument("--trials", nargs="+", help="trial lists (default: the run's evaluation.trials)")
    parser.add_argument("--init", nargs="+", default=["ssl", "random"], choices=["ssl", "random"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the labelled subsets")
    parser.add_argument("--output", help="output folder (default RUN/finetune)")
    parser.add_argument("--last", action="store_true", help="start from the last epoch's weights, not the average")
    parser.add_argument("--restart", action="store_true", help="retrain runs that already have checkpoints")
    args = parser.parse_intermixed_args(argv)

    def run() -> None:
        finetune_run(args.run, args.fractions, args.epochs, args.trials, args.output, args.seed, args.overrides,
                     tuple(args.init), args.restart, use_average=not args.last)

    return _run(run)
