"""Multi-stage pseudo-labelling driver (review, section 3.2): SSL run, then rounds of
extraction -> clustering -> filtering -> pseudo-labelled manifest -> supervised training -> evaluation.

    sslsv multistage configs/multistage/demo.yml [key=value ...]
    sslsv pseudo-label RUN --kmeans 50000 --ahc 7500          (one-shot labelling of a manifest)

Layout of the work directory:

    <workdir>/round_00/            the SSL run (unless `ssl.run_dir` names an existing one) + state.json
    <workdir>/round_RR/embeddings/ shard_XXXXX.npy, embeddings.npy (representations by the previous round's model)
    <workdir>/round_RR/clusters.npz, train.csv (File,Speaker=cluster id,Session,Duration), run/, state.json
    <workdir>/rounds.md            the per-round table (also printed)

Every step of a round is recorded in the round's state.json when it finishes; a rerun of the same command skips
finished steps, and the unfinished one resumes from its own partial outputs (extraction shards, training
checkpoints). A round's encoder is initialised from the previous round's weights (`init: previous`) by loading
them into `trainer.method.encoder` before `fit()`; a resumed training then overrides them with its checkpoint.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sslsv.config import ConfigError, apply_overrides, from_dict, override_list, read_yaml
from sslsv.data.manifest import Manifest, read_manifest, write_manifest
from sslsv.methods.heads import class_means
from sslsv.pseudo_labels.clustering import ClusteringConfig, cluster, cluster_metrics
from sslsv.pseudo_labels.extract import ExtractionConfig, extract_run
from sslsv.pseudo_labels.filtering import FilteringConfig, filter_labels
from sslsv import distributed

STEPS = ("extract", "cluster", "manifest", "train", "evaluate")


@dataclass
class SSLStage:
    """The single-stage SSL model that provides the first pseudo-labels."""

    run_dir: str | None = None  # an existing run (trained unless `config` is given); default <workdir>/round_00
    config: str | None = None  # train config of the SSL model (trained, or resumed, by the driver)
    # merged over that config: a mapping of sections ({trainer: {epochs: 10}}) or a list of "key.subkey=value" strings
    overrides: Any = field(default_factory=dict)
    evaluate: bool = True

    def __post_init__(self) -> None:
        if self.run_dir is None and self.config is None:
            raise ConfigError("ssl: needs 'run_dir' (an existing run) or 'config' (a train config), or both")
        self.overrides = _check_overrides(self.overrides, "ssl.overrides")


@dataclass
class RoundConfig:
    config: str  # train config of the supervised round (method pseudo_supervised or supervised)
    # merged over that config, e.g. {method: {name: pseudo_supervised, loss_gate: gmm}, trainer: {epochs: 10}}; a
    # list of "key.subkey=value" strings (the former form) is still accepted
    overrides: Any = field(default_factory=dict)
    init: Literal["previous", "scratch"] = "previous"  # previous: encoder starts from the previous round's weights
    # centroids: with init=previous, the AAM classifier starts at the pseudo-classes' mean representations (by the
    # previous model, the one the encoder starts from) instead of random rows; random: always random rows
    classifier_init: Literal["centroids", "random"] = "centroids"
    relabel: bool = True  # False: train on the previous round's pseudo-labels (e.g. a final LMFT round)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    evaluate: bool = True

    def __post_init__(self) -> None:
        self.overrides = _check_overrides(self.overrides, "overrides")  # from_dict prefixes "rounds[i]."


def _check_overrides(overrides: Any, key: str) -> dict | list:
    """A mapping of sections, or a list of "key.subkey=value" strings; anything else -> ConfigError naming `key`."""
    if overrides is None:
        return {}
    items = override_list(overrides, key)
    for item in items:
        if not isinstance(item, (str, dict)) or (isinstance(item, str) and "=" not in item):
            raise ConfigError(f"{key}: {item!r} is neither a mapping nor a 'key.subkey=value' string")
    return overrides


@dataclass
class MultistageConfig:
    workdir: str
    ssl: SSLStage
    rounds: list[RoundConfig]
    manifest: str | None = None  # manifest to pseudo-label, relative to data_root; default: the SSL run's
    data_root: str | None = None  # default: the SSL run's
    labels_known: bool = True  # the manifest's Speaker column holds true speakers: report NMI and purity
    trials: list[str] | None = None  # evaluation trial lists (the first is tabulated); default: each run's config
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)

    def __post_init__(self) -> None:
        if not self.rounds:
            raise ConfigError("rounds: at least one round is needed")


def load_multistage_config(path: str | Path, overrides: list[str] | None = None) -> MultistageConfig:
    """Strict loading (unknown keys -> ConfigError naming the key); `base:` inheritance and dotted overrides.
    The train configs of the SSL stage and of every round are resolved with their overrides here, so that a bad
    key stops the driver before any training, with the file and the round named."""
    from sslsv.config import load_config

    raw = apply_overrides(read_yaml(path), overrides or [])
    cfg = from_dict(MultistageConfig, raw, "")
    stages = [("ssl", cfg.ssl.config, cfg.ssl.overrides)] if cfg.ssl.config else []
    stages += [(f"rounds[{i}]", r.config, r.overrides) for i, r in enumerate(cfg.rounds)]
    for key, config, stage_overrides in stages:
        try:
            load_config(config, stage_overrides)
        except ConfigError as error:
            raise ConfigError(f"{path}: {key} ({config} + {key}.overrides): {error}") from None
    return cfg


# ------------------------------------------------------------------------------------------------ state


class RoundState:
    """`<round_dir>/state.json`: completed steps and their results, rewritten atomically after each step."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"completed": [], "results": {}}

    def done(self, step: str) -> bool:
        return step in self.data["completed"]

    def finish(self, step: str, **results) -> None:
        self.data["results"].update(results)
        if step not in self.data["completed"]:
            self.data["completed"].append(step)
        if distributed.is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2))
            os.replace(tmp, self.path)

    @property
    def results(self) -> dict:
        return self.data["results"]


# ------------------------------------------------------------------------------------------------ steps


def pseudo_manifest(manifest: Manifest, labels: np.ndarray, keep: np.ndarray, path: str | Path) -> Manifest:
    """Write File,Speaker(=cluster id),Session,Duration for the kept rows, atomically."""
    rows = np.flatnonzero(keep)
    out = manifest.subset(rows, str(path), speakers=[f"c{int(labels[i]):06d}" for i in rows])
    tmp = Path(str(path) + ".tmp")
    write_manifest(out, tmp)
    os.replace(tmp, path)
    return out


def label_step(x: np.ndarray, manifest: Manifest, clustering: ClusteringConfig, filtering: FilteringConfig,
               out_dir: Path, labels_known: bool) -> dict:
    """Clustering + filtering + manifest; writes clusters.npz and train.csv in out_dir; returns the metrics."""
    result = cluster(np.asarray(x), clustering)
    keep, counts = filter_labels(result.labels, result.confidence, filtering)
    truth = manifest.speaker_ids()[0] if labels_known else None
    metrics = {**cluster_metrics(result.labels, truth), **{f"filter_{k}": v for k, v in counts.items()},
               "timings": result.timings}
    if truth is not None and keep.any():
        kept = cluster_metrics(result.labels[keep], truth[keep])
        metrics.update({"kept_nmi": kept["nmi"], "kept_purity": kept["purity"]})
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "clusters.npz.tmp", "wb") as handle:
        np.savez(handle, labels=result.labels, kmeans_labels=result.kmeans_labels,
                 centroid_classes=result.centroid_classes, confidence=result.confidence, keep=keep)
    os.replace(out_dir / "clusters.npz.tmp", out_dir / "clusters.npz")
    pseudo_manifest(manifest, result.labels, keep, out_dir / "train.csv")
    return metrics


def pseudo_label_run(run_dir: str | Path, output: str | Path | None = None, manifest: str | None = None,
                     data_root: str | None = None, extraction: ExtractionConfig | None = None,
                     clustering: ClusteringConfig | None = None, filtering: FilteringConfig | None = None,
                     labels_known: bool = True) -> tuple[dict, Path, str]:
    """One-shot pseudo-labelling of a manifest with a trained run: extraction (sharded over ranks), clustering,
    filtering, `<output>/train.csv` and `<output>/summary.json`. Returns (metrics, output folder, data root);
    the metrics are empty on ranks other than the first."""
    from dataclasses import asdict

    from sslsv.runs import load_run_config

    config = load_run_config(run_dir)
    data_root = data_root or config.dataset.data_root
    rows = read_manifest(Path(data_root) / (manifest or config.dataset.manifest))
    out = Path(output) if output else Path(run_dir) / "pseudo_labels"
    clustering, filtering = clustering or ClusteringConfig(), filtering or FilteringConfig()
    if clustering.kmeans_clusters > len(rows):  # checked before the (long) extraction, not after it
        raise ConfigError(f"{rows.path}: {len(rows)} utterances cannot make {clustering.kmeans_clusters} k-means "
                          f"clusters; pass fewer (--kmeans N, and --ahc M <= N)")
    x = extract_run(run_dir, rows, data_root, out / "embeddings", extraction or ExtractionConfig())
    if not distributed.is_main():
        return {}, out, data_root
    metrics = label_step(x, rows, clustering, filtering, out, labels_known)
    summary = {"clustering": asdict(clustering), "filtering": asdict(filtering), **metrics}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return metrics, out, data_root


def class_centroids(x: np.ndarray, manifest: Manifest, pseudo: Manifest) -> np.ndarray:
    """Mean L2-normalised representation of every class of a pseudo-labelled manifest, (C, D) float32.

    x: (N, D) representations of `manifest`'s rows; `pseudo` holds a subset of those files with class names as
    speakers. Row c is the class of index c in `pseudo.speaker_ids()`, the order in which training numbers them.
    """
    row_of = {path: i for i, path in enumerate(manifest.files)}
    missing = [path for path in pseudo.files if path not in row_of]
    if missing:
        raise ConfigError(f"{pseudo.path}: {len(missing)} files are not in {manifest.path} (first: {missing[0]})")
    rows = np.fromiter((row_of[path] for path in pseudo.files), dtype=np.int64, count=len(pseudo))
    labels, names = pseudo.speaker_ids()
    return class_means(torch.from_numpy(np.asarray(x[rows], dtype=np.float64)), torch.from_numpy(labels),
                       len(names)).numpy()


def train_step(config_path: str, overrides: list, init_from: Path | None, use_average: bool,
               needs_labels: bool = False, classifier_rows: np.ndarray | None = None,
               classifier_kind: Literal["centroids", "classifier"] = "centroids") -> None:
    """Train (or resume) a run; optionally start its encoder from another run's weights and its classifier
    (pseudo-label rounds) from given rows: class centroids (C, D), or a previous round's classifier weights."""
    from sslsv.config import load_config
    from sslsv.evaluation.validation import build_trainer
    from sslsv.runs import run_weights
    from sslsv.training.trainer import InitialWeights, TrainingError

    config = load_config(config_path, overrides)
    initial = InitialWeights(encoder=run_weights(init_from, use_average) if init_from is not None else None,
                             classifier=classifier_rows, classifier_kind=classifier_kind)
    trainer = build_trainer(config, initial=initial)
    if needs_labels and not trainer.method.uses_labels:
        raise TrainingError(f"{config_path}: a pseudo-label round needs a label-using method, not '{config.method.name}'")
    trainer.fit()


def evaluate_step(run_dir: Path, trials: list[str] | None) -> dict:
    from sslsv.evaluation.evaluate import evaluate_run, slug
    from sslsv.runs import load_run_config

    names = trials or load_run_config(run_dir).evaluation.trials
    results = evaluate_run(run_dir, names, progress=False)
    first = results[f"test/{slug(names[0])}"]
    return {"trials": names[0], "eer": first["eer"], "min_dcf_001": first["min_dcf_001"]}


# ------------------------------------------------------------------------------------------------ driver


def round_dir(cfg: MultistageConfig, index: int) -> Path:
    return Path(cfg.workdir) / f"round_{index:02d}"


def _ssl_stage(cfg: MultistageConfig, quiet: list[str], main: bool) -> tuple[Path, dict]:
    """Round 0: train (or resume) and evaluate the SSL model; returns its run directory and table row."""
    ssl_dir = Path(cfg.ssl.run_dir) if cfg.ssl.run_dir else round_dir(cfg, 0)
    state = RoundState(round_dir(cfg, 0) / "state.json")
    if cfg.ssl.config and not state.done("train"):
        _say(main, f"round 0: training the SSL model {cfg.ssl.config} -> {ssl_dir}")
        train_step(cfg.ssl.config, override_list(cfg.ssl.overrides) + quiet + [f"run_dir={ssl_dir}"], None,
                   cfg.extraction.use_average)
        state.finish("train")
    if cfg.ssl.evaluate and not state.done("evaluate"):
        results = evaluate_step(ssl_dir, cfg.trials) if main else {}
        state.finish("evaluate", **results)
        distributed.barrier()
    return ssl_dir, {"round": 0, "model": str(ssl_dir), **_reread(state)}


def _train_round(cfg: MultistageConfig, spec: RoundConfig, folder: Path, previous: Path, manifest: Manifest,
                 data_root: str, quiet: list[str]) -> None:
    """The supervised training of one round on its pseudo-labelled manifest, from the previous round's encoder
    and (by default) a classifier started at the pseudo-classes' centroids."""
    overrides = override_list(spec.overrides) + quiet + [f"run_dir={folder / 'run'}", f"dataset.data_root={data_root}",
                                                         f"dataset.manifest={(folder / 'train.csv').resolve()}"]
    head, kind = None, "centroids"
    if spec.init == "previous" and spec.classifier_init == "centroids":
        if spec.relabel:
            embeddings = folder / "embeddings" / "embeddings.npy"  # by `previous`, the encoder's start
            head = class_centroids(np.load(embeddings, mmap_mode="r"), manifest, read_manifest(folder / "train.csv"))
        else:  # same labels as the previous round (e.g. LMFT): continue from its trained classifier
            head, kind = previous_classifier(previous), "classifier"
    train_step(spec.config, overrides, previous if spec.init == "previous" else None, cfg.extraction.use_average,
               needs_labels=True, classifier_rows=head, classifier_kind=kind)


def run_multistage(cfg: MultistageConfig, progress: bool = True) -> list[dict]:
    """Run (or resume) the SSL stage and every round; returns the table rows and writes <workdir>/rounds.md."""
    from sslsv.distributed import resolve_device
    from sslsv.runs import load_run_config

    distributed.init_distributed(resolve_device(cfg.extraction.device))
    main = distributed.is_main()
    workdir = Path(cfg.workdir)
    rows = []
    quiet = [] if progress else ["trainer.progress_bar=false"]  # --no-progress silences the trainings' bars too

    ssl_dir, row = _ssl_stage(cfg, quiet, main)
    rows.append(row)

    ssl_config = load_run_config(ssl_dir)
    data_root = cfg.data_root or ssl_config.dataset.data_root
    manifest_path = Path(data_root) / (cfg.manifest or ssl_config.dataset.manifest)
    manifest = read_manifest(manifest_path)
    previous = ssl_dir
    for index, spec in enumerate(cfg.rounds, start=1):
        folder = round_dir(cfg, index)
        run_dir = folder / "run"
        state = RoundState(folder / "state.json")
        if not spec.relabel and not state.done("cluster"):
            if index == 1:
                raise ConfigError("rounds[0].relabel: the first round has no previous pseudo-labels to reuse")
            if main:
                folder.mkdir(parents=True, exist_ok=True)
                previous_labels = read_manifest(round_dir(cfg, index - 1) / "train.csv")
                write_manifest(previous_labels, folder / "train.csv")
            state.finish("extract", reused=str(round_dir(cfg, index - 1) / "train.csv"))
            state.finish("cluster", clustering=RoundState(round_dir(cfg, index - 1) / "state.json").results.get("clustering", {}))
            state.finish("manifest", manifest=str(folder / "train.csv"))
            distributed.barrier()
        if not state.done("extract"):
            _say(main, f"round {index}: extracting {len(manifest)} representations with {previous}")
            extract_run(previous, manifest, data_root, folder / "embeddings", cfg.extraction, progress)
            state.finish("extract")
        if not state.done("cluster"):
            _say(main, f"round {index}: clustering ({spec.clustering.method}, {spec.clustering.classes} classes) "
                       f"and filtering")
            metrics = {}
            if main:
                x = np.load(folder / "embeddings" / "embeddings.npy", mmap_mode="r")
                metrics = label_step(x, manifest, spec.clustering, spec.filtering, folder, cfg.labels_known)
            state.finish("cluster", clustering=metrics)
            state.finish("manifest", manifest=str(folder / "train.csv"))
            distributed.barrier()
        if not state.done("train"):
            _say(main, f"round {index}: supervised training on {folder / 'train.csv'} -> {run_dir}")
            _train_round(cfg, spec, folder, previous, manifest, data_root, quiet)
            state.finish("train")
        if spec.evaluate and not state.done("evaluate"):
            results = evaluate_step(run_dir, cfg.trials) if main else {}
            state.finish("evaluate", **results)
            distributed.barrier()
        rows.append({"round": index, "model": str(run_dir), **_reread(state)})
        previous = run_dir

    table = format_rounds(rows)
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rounds.md").write_text(table + "\n")
        print(table)
    return rows


def previous_classifier(run_dir: Path) -> np.ndarray:
    """The classifier rows of a finished pseudo-label run (its last checkpoint), for a round on the same labels."""
    from sslsv.runs import RunLayout, load_checkpoint

    checkpoints = RunLayout(run_dir).list_checkpoints()
    if not checkpoints:
        raise ConfigError(f"{run_dir}/checkpoints: no checkpoint to take the classifier from (classifier_init: "
                          f"centroids on a round with relabel: false); use classifier_init: random")
    state = load_checkpoint(checkpoints[-1])["method"]
    if "classifier.weight" not in state:
        raise ConfigError(f"{checkpoints[-1]}: no classifier.weight (was {run_dir} a pseudo-label round?)")
    return state["classifier.weight"].float().numpy()


def _reread(state: RoundState) -> dict:
    results = dict(state.results)
    clustering = results.pop("clustering", {}) or {}
    return {**results, **{k: v for k, v in clustering.items() if k != "timings"}}


def _say(main: bool, message: str) -> None:
    if main:
        print(message, flush=True)


def format_rounds(rows: list[dict]) -> str:
    def number(value, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    lines = ["| round | classes | kept | NMI | purity | EER (%) | minDCF0.01 | model |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['round']} | {number(row.get('filter_clusters_after'), 'd')} | "
                     f"{number(row.get('filter_kept'), 'd')} | {number(row.get('nmi'), '.4f')} | "
                     f"{number(row.get('purity'), '.4f')} | {number(row.get('eer'), '.2f')} | "
                     f"{number(row.get('min_dcf_001'), '.4f')} | {row['model']} |")
    return "\n".join(lines)

