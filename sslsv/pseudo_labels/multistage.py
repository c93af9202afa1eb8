"""Multi-stage pseudo-labelling driver (review, section 3.2): SSL run, then rounds of
extraction -> clustering -> filtering -> pseudo-labelled manifest -> supervised training -> evaluation.

    python -m sslsv.pseudo_labels.multistage configs/multistage/demo.yml [key=value ...]
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
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from sslsv.config import ConfigError, apply_overrides, from_dict, read_yaml
from sslsv.data.manifest import Manifest, read_manifest, write_manifest
from sslsv.pseudo_labels.clustering import ClusteringConfig, cluster, cluster_metrics
from sslsv.pseudo_labels.extract import ExtractionConfig, extract_run
from sslsv.pseudo_labels.filtering import FilteringConfig, filter_labels
from sslsv.training import distributed

STEPS = ("extract", "cluster", "manifest", "train", "evaluate")


@dataclass
class SSLStage:
    """The single-stage SSL model that provides the first pseudo-labels."""

    run_dir: str | None = None  # an existing run (trained unless `config` is given); default <workdir>/round_00
    config: str | None = None  # train config of the SSL model (trained, or resumed, by the driver)
    overrides: list[str] = field(default_factory=list)  # dotted overrides of that config
    evaluate: bool = True

    def __post_init__(self) -> None:
        if self.run_dir is None and self.config is None:
            raise ConfigError("ssl: needs 'run_dir' (an existing run) or 'config' (a train config), or both")


@dataclass
class RoundConfig:
    config: str  # train config of the supervised round (method pseudo_supervised or supervised)
    overrides: list[str] = field(default_factory=list)
    init: Literal["previous", "scratch"] = "previous"  # previous: encoder starts from the previous round's weights
    # centroids: with init=previous, the AAM classifier starts at the pseudo-classes' mean representations (by the
    # previous model, the one the encoder starts from) instead of random rows; random: always random rows
    classifier_init: Literal["centroids", "random"] = "centroids"
    relabel: bool = True  # False: train on the previous round's pseudo-labels (e.g. a final LMFT round)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    evaluate: bool = True


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
    """Strict loading (unknown keys -> ConfigError naming the key); `base:` inheritance and dotted overrides."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return from_dict(MultistageConfig, raw, "")


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
    out = Manifest(
        files=[manifest.files[i] for i in rows],
        speakers=[f"c{int(labels[i]):06d}" for i in rows],
        sessions=[manifest.sessions[i] for i in rows] if manifest.sessions is not None else None,
        durations=[manifest.durations[i] for i in rows] if manifest.durations is not None else None,
        path=str(path),
    )
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
    points = np.asarray(x[rows], dtype=np.float64)
    points /= np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((len(names), points.shape[1]))
    np.add.at(sums, labels, points)
    return (sums / np.bincount(labels, minlength=len(names))[:, None]).astype(np.float32)


def train_step(config_path: str, overrides: list[str], init_from: Path | None, use_average: bool,
               needs_labels: bool = False, classifier_rows: np.ndarray | None = None,
               classifier_kind: Literal["centroids", "classifier"] = "centroids") -> None:
    """Train (or resume) a run; optionally start its encoder from another run's weights and its classifier
    (pseudo-label rounds) from given rows: class centroids (C, D), or a previous round's classifier weights."""
    import torch

    from sslsv.config import load_config
    from sslsv.evaluation.evaluate import run_weights
    from sslsv.training import checkpoint as ckpt
    from sslsv.training.trainer import Trainer, TrainingError

    config = load_config(config_path, overrides)
    trainer = Trainer(config)
    if needs_labels and not trainer.method.uses_labels:
        raise TrainingError(f"{config_path}: a pseudo-label round needs a label-using method, not '{config.method.name}'")
    if init_from is not None and not ckpt.list_checkpoints(trainer.checkpoint_dir):
        weights = run_weights(init_from, use_average)
        state = ckpt.load_checkpoint(weights)
        try:
            trainer.method.encoder.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise TrainingError(f"cannot initialise {config.run_dir} from {weights}: the encoders differ ({error})") from None
        if distributed.is_main():
            print(f"initialised the encoder from {weights}")
        if classifier_rows is not None:
            classifier = getattr(trainer.method, "classifier", None)
            if not hasattr(classifier, "init_from_centroids"):
                raise TrainingError(f"{config_path}: classifier_init=centroids needs method pseudo_supervised, "
                                    f"not '{config.method.name}' (or set classifier_init: random)")
            rows = torch.as_tensor(np.asarray(classifier_rows))
            if classifier_kind == "classifier":
                if rows.shape != classifier.weight.shape:
                    raise TrainingError(f"{config_path}: the previous round's classifier is {tuple(rows.shape)}, this "
                                        f"one {tuple(classifier.weight.shape)}; same labels need the same "
                                        f"method.subcenters (or set classifier_init: random)")
                with torch.no_grad():
                    classifier.weight.copy_(rows)
            else:
                classifier.init_from_centroids(rows, seed=config.trainer.seed)
            if distributed.is_main():
                source = "the previous round's classifier" if classifier_kind == "classifier" else "class centroids"
                print(f"initialised the classifier from {source} ({len(rows)} rows)")
    trainer.fit()


def evaluate_step(run_dir: Path, trials: list[str] | None) -> dict:
    from sslsv.evaluation.evaluate import evaluate_run, load_run_config, slug

    names = trials or load_run_config(run_dir).evaluation.trials
    results = evaluate_run(run_dir, names, progress=False)
    first = results[f"test/{slug(names[0])}"]
    return {"trials": names[0], "eer": first["eer"], "min_dcf_001": first["min_dcf_001"]}


# ------------------------------------------------------------------------------------------------ driver


def round_dir(cfg: MultistageConfig, index: int) -> Path:
    return Path(cfg.workdir) / f"round_{index:02d}"


def run_multistage(cfg: MultistageConfig, progress: bool = True) -> list[dict]:
    """Run (or resume) the SSL stage and every round; returns the table rows and writes <workdir>/rounds.md."""
    from sslsv.evaluation.evaluate import load_run_config
    from sslsv.training.trainer import resolve_device

    distributed.init_distributed(resolve_device(cfg.extraction.device))
    main = distributed.is_main()
    workdir = Path(cfg.workdir)
    rows = []
    quiet = [] if progress else ["trainer.progress_bar=false"]  # --no-progress silences the trainings' bars too

    # Round 0: the SSL model.
    ssl_dir = Path(cfg.ssl.run_dir) if cfg.ssl.run_dir else round_dir(cfg, 0)
    state = RoundState(round_dir(cfg, 0) / "state.json")
    if cfg.ssl.config and not state.done("train"):
        _say(main, f"round 0: training the SSL model {cfg.ssl.config} -> {ssl_dir}")
        train_step(cfg.ssl.config, cfg.ssl.overrides + quiet + [f"run_dir={ssl_dir}"], None, cfg.extraction.use_average)
        state.finish("train")
    if cfg.ssl.evaluate and not state.done("evaluate"):
        results = evaluate_step(ssl_dir, cfg.trials) if main else {}
        state.finish("evaluate", **results)
        distributed.barrier()
    rows.append({"round": 0, "model": str(ssl_dir), **_reread(state)})

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
            overrides = spec.overrides + quiet + [f"run_dir={run_dir}", f"dataset.data_root={data_root}",
                                          f"dataset.manifest={(folder / 'train.csv').resolve()}"]
            head, kind = None, "centroids"
            if spec.init == "previous" and spec.classifier_init == "centroids":
                if spec.relabel:
                    embeddings = folder / "embeddings" / "embeddings.npy"  # by `previous`, the encoder's start
                    head = class_centroids(np.load(embeddings, mmap_mode="r"), manifest,
                                           read_manifest(folder / "train.csv"))
                else:  # same labels as the previous round (e.g. LMFT): continue from its trained classifier
                    head, kind = previous_classifier(previous), "classifier"
            train_step(spec.config, overrides, previous if spec.init == "previous" else None, cfg.extraction.use_average,
                       needs_labels=True, classifier_rows=head, classifier_kind=kind)
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
    from sslsv.training import checkpoint as ckpt

    checkpoints = ckpt.list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise ConfigError(f"{run_dir}/checkpoints: no checkpoint to take the classifier from (classifier_init: "
                          f"centroids on a round with relabel: false); use classifier_init: random")
    state = ckpt.load_checkpoint(checkpoints[-1])["method"]
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


# ------------------------------------------------------------------------------------------------ CLIs


def main(argv: list[str] | None = None) -> int:
    """python -m sslsv.pseudo_labels.multistage CONFIG [key=value ...]"""
    from sslsv.cli import _run

    parser = argparse.ArgumentParser(prog="python -m sslsv.pseudo_labels.multistage",
                                     description="Multi-stage pseudo-labelling: SSL run, then rounds of clustering "
                                                 "and supervised training. Rerun the same command to resume.")
    parser.add_argument("config", help="multistage YAML, e.g. configs/multistage/demo.yml")
    parser.add_argument("overrides", nargs="*", help="key.subkey=value (e.g. workdir=models/ms_try)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.registry import load_all

        load_all()
        cfg = load_multistage_config(args.config, args.overrides)
        try:
            run_multistage(cfg, progress=not args.no_progress)
        finally:
            distributed.cleanup()

    return _run(run)


def pseudo_label_main(argv: list[str] | None = None) -> int:
    """Pseudo-label a manifest with a trained run: extraction, k-means (+ AHC), filtering, labelled manifest."""
    from sslsv.cli import _run

    parser = argparse.ArgumentParser(prog="sslsv pseudo-label", description=pseudo_label_main.__doc__)
    parser.add_argument("run", help="trained run directory")
    parser.add_argument("--kmeans", type=int, default=50000, help="k-means clusters (default 50000)")
    parser.add_argument("--ahc", type=int, default=7500, help="AHC target classes; 0: plain k-means (default 7500)")
    parser.add_argument("--linkage", choices=["ward", "average"], default="ward")
    parser.add_argument("--ahc-neighbors", type=int, default=32, help="kNN graph size for AHC; 0: exact linkage")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--manifest", help="manifest relative to the data root (default: the run's training manifest)")
    parser.add_argument("--data-root", help="default: the run's data root")
    parser.add_argument("--out", help="output folder (default: RUN/pseudo_labels)")
    parser.add_argument("--drop-fraction", type=float, default=0.0, help="drop the least confident fraction")
    parser.add_argument("--min-cluster-size", type=int, default=1)
    parser.add_argument("--crop-seconds", type=float, help="embed one fixed crop per file instead of full length")
    parser.add_argument("--shard-size", type=int, default=50000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-labels", action="store_true", help="the Speaker column is not the true speaker")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.evaluation.evaluate import load_run_config
        from sslsv.training.trainer import resolve_device

        distributed.init_distributed(resolve_device(args.device))
        config = load_run_config(args.run)
        data_root = args.data_root or config.dataset.data_root
        manifest = read_manifest(Path(data_root) / (args.manifest or config.dataset.manifest))
        out = Path(args.out) if args.out else Path(args.run) / "pseudo_labels"
        extraction = ExtractionConfig(shard_size=args.shard_size, crop_seconds=args.crop_seconds, device=args.device)
        clustering = ClusteringConfig(method="kmeans_ahc" if args.ahc else "kmeans", kmeans_clusters=args.kmeans,
                                      num_classes=args.ahc or 2, linkage=args.linkage,
                                      ahc_neighbors=args.ahc_neighbors, iterations=args.iterations)
        filtering = FilteringConfig(args.drop_fraction, args.min_cluster_size)
        x = extract_run(args.run, manifest, data_root, out / "embeddings", extraction)
        if distributed.is_main():
            metrics = label_step(x, manifest, clustering, filtering, out, not args.no_labels)
            (out / "summary.json").write_text(json.dumps({"clustering": asdict(clustering), "filtering": asdict(filtering),
                                                          **metrics}, indent=2))
            shown = {k: v for k, v in metrics.items() if k != "timings"}
            print(json.dumps(shown, indent=2))
            print(f"pseudo-labelled manifest: {out / 'train.csv'} (data root {data_root})")
        distributed.cleanup()

    return _run(run)


if __name__ == "__main__":
    raise SystemExit(main())
