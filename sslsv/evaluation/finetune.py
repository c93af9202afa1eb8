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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from sslsv.data.manifest import Manifest, read_manifest, write_manifest

__all__ = ["FinetuneRecipe", "finetune_run", "labelled_centroids", "stratified_subset"]


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


@dataclass
class FinetuneRecipe:
    """How the runs initialised from the SSL weights are fine-tuned (the random-init runs train plainly).

    A random AAM head on pre-trained features sends large, meaningless gradients into the encoder during the first
    steps and undoes what SSL learnt (on the demo corpus, 25.6 % -> 33.0 % EER with 10 % of the labels). Instead:
    classifier rows start at the labelled classes' centroids of the SSL embeddings (the initial logits are the
    cosines to each class mean), the encoder stays fixed while the head warms up for `freeze_epochs`
    (trainer.freeze_encoder_epochs, at most half the epochs), then learns at `encoder_lr_scale` x the head's rate
    (trainer.encoder_lr_scale). Dotted overrides given to finetune_run come after these and win.
    """

    classifier_init: str = "centroids"  # centroids | random
    freeze_epochs: float = 1.0
    encoder_lr_scale: float = 0.03

    def __post_init__(self) -> None:
        from sslsv.runs import RunError

        if self.classifier_init not in ("centroids", "random"):
            raise RunError(f"--classifier-init must be centroids or random, got {self.classifier_init!r}")
        if self.freeze_epochs < 0 or self.encoder_lr_scale < 0:
            raise RunError("--freeze-epochs and --encoder-lr-scale must be >= 0")

    def overrides(self, epochs: int) -> list[str]:
        return [f"trainer.freeze_encoder_epochs={min(self.freeze_epochs, epochs / 2):g}",
                f"trainer.encoder_lr_scale={self.encoder_lr_scale:g}"]


def labelled_centroids(model, subset: Manifest, root: Path, config, device) -> np.ndarray:
    """(C, D) mean L2-normalised embedding of each speaker of `subset` (rows in the order training numbers the
    speakers: Manifest.speaker_ids), embedded by the SSL model as evaluation embeds."""
    import torch

    from sslsv.evaluation.evaluate import Backends, embed_utterances
    from sslsv.methods.heads import class_means

    x = embed_utterances(model, [str(root / f) for f in subset.files], config, device, Backends(), progress=False)
    labels, names = subset.speaker_ids()
    return class_means(x, torch.as_tensor(labels), len(names)).numpy()


def _train(run_dir: Path, raw: dict, overrides: list[str], init_weights: Path | None, restart: bool,
           classifier: np.ndarray | None = None) -> None:
    from sslsv.config import load_config
    from sslsv.evaluation.validation import build_trainer
    from sslsv.training.trainer import InitialWeights

    config = load_config(data=raw, overrides=overrides)
    build_trainer(config, restart=restart, initial=InitialWeights(encoder=init_weights, classifier=classifier)).fit()


def _reference_rows(run_dir: Path, names: list[str], use_average: bool, device, progress: bool,
                    best: bool = False) -> list[dict]:
    """The table's first rows: the SSL run itself, without fine-tuning (nothing is written to the run)."""
    from sslsv.evaluation.evaluate import evaluate_model
    from sslsv.runs import load_model

    model, config, _ = load_model(run_dir, use_average, device, best=best)
    rows = []
    for name in names:
        m = evaluate_model(model, name, config, device, progress=progress)
        rows.append({"trials": name, "fraction": 0.0, "utterances": 0, "speakers": 0, "init": "ssl (no fine-tuning)",
                     "eer": m.eer, "min_dcf_001": m.min_dcf_001, "run": str(run_dir)})
    return rows


def _check_finetune_request(fractions: list[float], epochs: int, inits: tuple[str, ...]) -> None:
    from sslsv.runs import RunError

    unknown = [i for i in inits if i not in ("ssl", "random")]
    if unknown or not inits:
        raise RunError(f"init must be 'ssl' and/or 'random', got {list(inits)}")
    if epochs < 1:
        raise RunError(f"--epochs must be at least 1, got {epochs}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise RunError(f"--fractions must be in (0, 1], got {fractions}")


def finetune_run(run_dir: str | Path, fractions: list[float], epochs: int, trials: list[str] | None = None,
                 output: str | Path | None = None, seed: int = 0, overrides: list[str] | None = None,
                 inits: tuple[str, ...] = ("ssl", "random"), restart: bool = False, use_average: bool = True,
                 progress: bool = False, best: bool = False, recipe: FinetuneRecipe | None = None) -> list[dict]:
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
        best: initialise from (and evaluate with) model_best.pt instead.
        recipe: how the SSL-initialised runs fine-tune (default FinetuneRecipe(): centroid classifier, frozen
            warm-up, encoder at 0.03 x the head's rate).

    Returns:
        The table rows: dicts with trials, fraction, utterances, speakers, init, eer, min_dcf_001, run.
    """
    from sslsv.distributed import resolve_device
    from sslsv.evaluation.evaluate import check_trials, evaluate_run, slug
    from sslsv.runs import RunLayout, load_run_config, run_weights

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    _check_finetune_request(fractions, epochs, inits)
    names = list(trials or config.evaluation.trials)
    for name in names:  # before any training: a bad list would otherwise fail after the first fine-tuning run
        check_trials(name, config)
    out = Path(output) if output is not None else run_dir / "finetune"
    weights = run_weights(run_dir, use_average, best)
    root = Path(config.dataset.data_root)
    manifest = read_manifest(root / config.dataset.manifest)
    raw = yaml.safe_load(RunLayout(run_dir).config.read_text())

    recipe = recipe or FinetuneRecipe()
    device = resolve_device(config.evaluation.device)
    rows = _reference_rows(run_dir, names, use_average, device, progress, best)
    for fraction in fractions:
        subset_rows = stratified_subset(manifest, fraction, seed)
        folder = out / f"frac{fraction:g}"
        subset_path = (folder / "train.csv").resolve()
        subset = manifest.subset(subset_rows, str(subset_path))
        write_manifest(subset, subset_path)
        speakers = len(set(subset.speakers))
        batch = min(config.dataset.batch_size, len(subset))
        if batch < config.dataset.batch_size:
            print(f"fraction {fraction:g}: {len(subset)} utterances, batch size lowered to {batch}")
        centroids = None
        if "ssl" in inits and recipe.classifier_init == "centroids":
            from sslsv.runs import load_model

            model, _, _ = load_model(run_dir, use_average, device, best=best)
            centroids = labelled_centroids(model, subset, root, config, device)
            del model
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
                *(recipe.overrides(epochs) if init == "ssl" else []),
                *(overrides or []),
            ]
            print(f"fine-tuning: fraction {fraction:g} ({len(subset)} utterances, {speakers} speakers), init {init} "
                  f"-> {sub_run}")
            _train(sub_run, raw, settings, weights if init == "ssl" else None, restart,
                   centroids if init == "ssl" else None)
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

