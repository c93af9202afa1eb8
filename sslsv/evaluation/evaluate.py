"""Evaluate a run: embeddings (full length or multi-crop), cosine scores, optional cohort score normalisation
(Z/T/S/AS-norm), EER / minDCF / actDCF / Cllr, score files, results.json, DET plots and score histograms."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from sslsv.config import Config, ConfigError, build_config
from sslsv.data.manifest import read_manifest
from sslsv.data.trials import Trials, resolve_trials
from sslsv.encoders.base import SpeakerModel, build_speaker_model
from sslsv.evaluation.embeddings import extract_embeddings
from sslsv.evaluation.analysis import plot_score_histograms
from sslsv.evaluation.metrics import (VerificationMetrics, compute_act_dcf, compute_cllr, compute_metrics,
                                      compute_min_cllr)
from sslsv.evaluation.multicrop import crop_cohort_statistics, extract_multicrop_embeddings, multicrop_scores
from sslsv.evaluation.normalization import build_cohort
from sslsv.evaluation.plots import plot_det
from sslsv.evaluation.scoring import cosine_scores, index_trials, write_scores
from sslsv.registry import load_all
from sslsv.training.checkpoint import list_epoch_weights, load_checkpoint


class RunError(RuntimeError):
    """A run directory that cannot be evaluated, with the reason."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def latest_run(models_dir: str | Path = "models") -> Path:
    """The most recently trained run under `models_dir` (by the time of its newest weights)."""
    candidates = []
    for config in Path(models_dir).rglob("config.yml"):
        run = config.parent
        weights = [p for p in [run / "model_avg.pt", run / "model.pt"] if p.exists()] + list_epoch_weights(run / "checkpoints")
        if weights:
            candidates.append((max(p.stat().st_mtime for p in weights), run))
    if not candidates:
        raise RunError(f"no trained run found under {models_dir}/ (train one with: python train.py CONFIG)")
    return max(candidates)[1]


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.yml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory: {path} is missing")
    load_all()
    try:
        return build_config(yaml.safe_load(path.read_text()))
    except ConfigError as error:
        raise RunError(f"{path}: {error}") from None


def run_weights(run_dir: str | Path, use_average: bool = True, best: bool = False) -> Path:
    """The weights to evaluate: model_best.pt (best: the best validation score, saved by the trainer), else
    model_avg.pt (use_average), model.pt, or the newest epoch's weights."""
    run_dir = Path(run_dir)
    if best:
        if not (run_dir / "model_best.pt").exists():
            raise RunError(f"{run_dir / 'model_best.pt'} is missing: the trainer saves it at each validation that "
                           f"improves trainer.tracked_metric (set trainer.validation_trials and validate_every)")
        return run_dir / "model_best.pt"
    order = (["model_avg.pt"] if use_average else []) + ["model.pt"]
    for name in order:
        if (run_dir / name).exists():
            return run_dir / name
    epochs = list_epoch_weights(run_dir / "checkpoints")
    if epochs:
        return epochs[-1]
    raise RunError(f"{run_dir} has no weights yet (model_avg.pt, model.pt or checkpoints/weights_e*.pt)")


def load_model(run_dir: str | Path, use_average: bool = True, device: str | torch.device = "cpu",
               random_weights: bool = False, best: bool = False) -> tuple[SpeakerModel, Config, str]:
    """The run's embedding model in eval mode, its config, and which weights were loaded."""
    config = load_run_config(run_dir)
    torch.manual_seed(config.trainer.seed)  # the random-weights baseline is the run's own initialisation
    model = build_speaker_model(config.encoder, config.features)
    source = "random weights"
    if not random_weights:
        path = run_weights(run_dir, use_average, best)
        state = load_checkpoint(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RunError(f"{path} does not match the run's encoder: missing {missing[:5]}, unexpected {unexpected[:5]}")
        source = str(path)
    return model.to(device).eval(), config, source


def score_trials(model: torch.nn.Module, trials_name: str, config: Config, device: torch.device,
                 progress: bool = True):
    """Embed every utterance of a trial list and return (trials, scores)."""
    trials, audio_dir = resolve_trials(trials_name, config.dataset.data_root)
    utterances = trials.utterances()
    paths = [str(Path(audio_dir) / u) for u in utterances]
    was_training = model.training
    model.eval()
    embeddings = extract_embeddings(model, paths, config.features.sample_rate, device,
                                    batch_seconds=config.evaluation.batch_seconds,
                                    max_trim=config.evaluation.max_trim, progress=progress,
                                    num_workers=min(config.dataset.num_workers, 4))
    model.train(was_training)
    enroll, test = index_trials(trials.enroll, trials.test, utterances)
    return trials, cosine_scores(embeddings, enroll, test)


def evaluate_model(model: torch.nn.Module, trials_name: str, config: Config, device: torch.device,
                   progress: bool = True) -> VerificationMetrics:
    trials, scores = score_trials(model, trials_name, config, device, progress)
    return compute_metrics(scores, trials.labels)


NORMS = {"znorm": "z", "tnorm": "t", "snorm": "s", "asnorm": "as"}


@dataclass
class Backends:
    """How trials are scored: full-length or multi-crop embeddings, then optional cohort normalisations.

    Attributes:
        norms: any of znorm, tnorm, snorm, asnorm ("none" entries are ignored); each adds a back-end.
        cohort_size: random training utterances in the cohort (seeded by cohort_seed); None or 0 = all.
        top_n: cohort scores kept per utterance by AS-norm (clipped to the cohort size).
        cohort_labels: average the cohort per speaker using the manifest's speaker labels (default: one row per
            utterance, no labels used).
        cohort_seed: seed of the cohort draw.
        crops: N crops per utterance (multi-crop scoring) instead of full-length embeddings; None = full length.
        crop_seconds: L, the length of a crop.
    """

    norms: tuple[str, ...] = ()
    cohort_size: int | None = 6000
    top_n: int = 300
    cohort_labels: bool = False
    cohort_seed: int = 0
    crops: int | None = None
    crop_seconds: float = 3.0

    def __post_init__(self) -> None:
        norms = tuple(n for n in (self.norms or ()) if n != "none")
        unknown = [n for n in norms if n not in NORMS]
        if unknown:
            raise RunError(f"unknown normalisation {unknown[0]!r}: choose from none, {', '.join(NORMS)}")
        self.norms = tuple(dict.fromkeys(norms))
        if self.crops is not None and (self.crops < 1 or self.crop_seconds <= 0):
            raise RunError(f"--crops must be >= 1 and --crop-seconds positive, got {self.crops} and {self.crop_seconds}")
        if self.top_n < 1:
            raise RunError(f"--top-n must be >= 1, got {self.top_n}")
        if self.cohort_size is not None and self.cohort_size < 0:
            raise RunError(f"--cohort-size must be >= 0, got {self.cohort_size}")

    @property
    def base(self) -> str:
        """Name of the un-normalised back-end: cosine (full length) or crops<N>x<L>s."""
        return "cosine" if self.crops is None else f"crops{self.crops}x{self.crop_seconds:g}s"

    def names(self) -> list[str]:
        return [self.base] + [n if self.crops is None else f"{self.base}_{n}" for n in self.norms]


def embed_utterances(model: torch.nn.Module, paths: list[str], config: Config, device: torch.device,
                     backends: Backends, progress: bool = True) -> torch.Tensor:
    """(U, D) full-length embeddings, or (U, N, D) multi-crop embeddings when backends.crops is set."""
    was_training = model.training
    model.eval()
    workers = min(config.dataset.num_workers, 4)
    try:
        if backends.crops is None:
            return extract_embeddings(model, paths, config.features.sample_rate, device,
                                      batch_seconds=config.evaluation.batch_seconds, max_trim=config.evaluation.max_trim,
                                      progress=progress, num_workers=workers)
        return extract_multicrop_embeddings(model, paths, config.features.sample_rate, backends.crop_seconds,
                                            backends.crops, device, config.evaluation.batch_seconds, workers, progress)
    finally:
        model.train(was_training)


def build_run_cohort(model: torch.nn.Module, config: Config, device: torch.device, backends: Backends,
                     progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Cohort of a run from its training manifest: (C, D) unit rows and a description for results.json.

    `cohort_size` utterances are drawn at random (seeded); each is embedded like the test utterances (full length,
    or N crops averaged). One row per utterance, so no speaker label is used, unless `cohort_labels` asks for
    per-speaker averaging.
    """
    root = Path(config.dataset.data_root)
    manifest_path = root / config.dataset.manifest
    manifest = read_manifest(manifest_path)
    total = len(manifest)
    rows = np.arange(total)
    if backends.cohort_size and backends.cohort_size < total:
        rng = np.random.default_rng(backends.cohort_seed)
        rows = np.sort(rng.choice(total, backends.cohort_size, replace=False))
    paths = [str(root / manifest.files[i]) for i in rows]
    embeddings = embed_utterances(model, paths, config, device, backends, progress)
    labels = [manifest.speakers[i] for i in rows] if backends.cohort_labels else None
    cohort = build_cohort(embeddings, labels)
    if labels is None:
        kind = "utterance"
        text = "one row per utterance, speaker labels not used"
    else:
        kind = "speaker"
        text = f"averaged per speaker into {cohort.shape[0]} rows, USES speaker labels"
    print(f"cohort: {len(rows)} of {total} utterances of {manifest_path} ({text})")
    description = {"cohort_rows": int(cohort.shape[0]), "cohort_utterances": int(len(rows)), "cohort_per": kind,
                   "cohort_manifest": str(manifest_path), "cohort_seed": backends.cohort_seed}
    return cohort, description


def normalize_with_cohort(embeddings, enroll_idx, test_idx, scores, cohort, method: str, top_n: int | None = None,
                          eps: float = 1e-8) -> np.ndarray:
    """Z/T/S/AS-norm of trial scores (method: "z", "t", "s" or "as"; see sslsv.evaluation.normalization).

    `embeddings` are (U, D) full-length embeddings (then this equals normalization.normalize_scores) or (U, N, D)
    crop embeddings, whose cohort score is the mean crop cosine with a cohort row, the counterpart of the mean
    N x N crop cosine used as trial score.
    """
    e = embeddings if isinstance(embeddings, torch.Tensor) else torch.as_tensor(np.asarray(embeddings))
    enroll = torch.as_tensor(np.asarray(enroll_idx), dtype=torch.int64).reshape(-1)
    test = torch.as_tensor(np.asarray(test_idx), dtype=torch.int64).reshape(-1)
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float32).reshape(-1)
    cohort = cohort if isinstance(cohort, torch.Tensor) else torch.as_tensor(np.asarray(cohort))
    k = None if method != "as" else min(int(top_n or cohort.shape[0]), cohort.shape[0])
    used, inverse = torch.unique(torch.cat([enroll, test]), return_inverse=True)
    mean, std = crop_cohort_statistics(e[used], cohort, k)
    mean, std = mean.cpu(), std.cpu() + eps
    ie, it = inverse[: len(enroll)], inverse[len(enroll):]
    z = (s - mean[ie]) / std[ie]
    t = (s - mean[it]) / std[it]
    out = z if method == "z" else t if method == "t" else 0.5 * (z + t)
    return out.numpy().astype(np.float32, copy=False)


def score_backends(model: torch.nn.Module, trials_name: str, config: Config, device: torch.device,
                   backends: Backends, cohort: Callable[[], tuple[torch.Tensor, dict]] | None = None,
                   progress: bool = True) -> tuple[Trials, dict[str, np.ndarray], dict[str, dict]]:
    """Scores of one trial list under every back-end: (trials, {backend: (T,) scores}, {backend: info}).

    `cohort` returns (cohort, description) and is only called when a normalisation is asked for.
    """
    trials, audio_dir = resolve_trials(trials_name, config.dataset.data_root)
    utterances = trials.utterances()
    embeddings = embed_utterances(model, [str(Path(audio_dir) / u) for u in utterances], config, device, backends,
                                  progress)
    enroll, test = index_trials(trials.enroll, trials.test, utterances)
    base = backends.base
    if backends.crops is None:
        scores = {base: cosine_scores(embeddings, enroll, test)}
        info = {base: {}}
    else:
        scores = {base: multicrop_scores(embeddings, enroll, test)}
        info = {base: {"crops": backends.crops, "crop_seconds": backends.crop_seconds}}
    if backends.norms:
        if cohort is None:
            raise RunError("score normalisation needs a cohort")
        matrix, description = cohort()
        for norm, name in zip(backends.norms, backends.names()[1:]):
            method = NORMS[norm]
            top_n = min(backends.top_n, int(matrix.shape[0])) if method == "as" else None
            scores[name] = normalize_with_cohort(embeddings, enroll, test, scores[base], matrix, method, top_n)
            info[name] = {**info[base], "norm": norm, **({"top_n": top_n} if top_n else {}), **description}
    return trials, scores, info


def full_metrics(scores, labels) -> dict:
    """EER, minDCF (0.01, 0.05), actDCF (0.01), Cllr and minCllr of one system, JSON-ready."""
    metrics = compute_metrics(scores, labels)
    return {**asdict(metrics), "act_dcf_001": compute_act_dcf(scores, labels, 0.01),
            "cllr": compute_cllr(scores, labels), "min_cllr": compute_min_cllr(scores, labels)}


def run_label(run_dir: str | Path) -> str:
    """Short name of a run for legends and tables: its last two path components (simclr/fast_resnet34)."""
    parts = Path(run_dir).resolve().parts
    return "/".join(parts[-2:])


def evaluate_run(run_dir: str | Path, trials_names: list[str] | None = None, use_average: bool | None = None,
                 device: str = "auto", random_baseline: bool = False, progress: bool = True,
                 backends: Backends | None = None, compare: list[str | Path] | None = None,
                 plots: bool = True, best: bool = False) -> dict:
    """Evaluate a run on each trial list and write its outputs; returns the updated results.json content.

    Writes, per trial list <t> (file-name-safe, see slug) and back-end <b> (cosine, znorm, ..., crops<N>x<L>s,
    crops<N>x<L>s_asnorm; see Backends): scores/<t>[_random][_<b>].score, results.json keys
    test/<t>[_random][/<b>] (plain full-length cosine: test/<t> and scores/<t>.score, without a back-end
    suffix), det_<t>.png (every system and back-end), hist_<t>.png (target / non-target score histograms) and,
    with `compare`, det_<t>_compare.png with this run's and the other runs' curves. The other runs are scored
    with the same back-ends (each with its own training cohort) but nothing is written into their folders.
    plots=False skips the figures (score files and results.json are still written). best=True evaluates
    model_best.pt (the best validation score) instead; every results.json entry names its weights file.
    """
    run_dir = Path(run_dir)
    backends = backends or Backends()
    config = load_run_config(run_dir)
    names = trials_names or config.evaluation.trials
    average = config.evaluation.use_average if use_average is None else use_average
    torch_device = resolve_device(device if device != "auto" else config.evaluation.device)
    systems = {"trained": False} | ({"random weights": True} if random_baseline else {})
    compare = [Path(r) for r in (compare or [])]
    for other in compare:
        load_run_config(other)  # fail before any work when a compared run is not a run
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    cohorts: dict[tuple[str, bool], tuple[torch.Tensor, dict]] = {}

    def cohort_of(run: Path, random_weights: bool, model, run_config):
        def get():
            key = (str(run), random_weights)
            if key not in cohorts:
                cohorts[key] = build_run_cohort(model, run_config, torch_device, backends, progress)
            return cohorts[key]

        return get

    table = []
    for name in names:
        curves, histograms, compared = {}, {}, {}
        for label, random_weights in systems.items():
            model, config, source = load_model(run_dir, average, torch_device, random_weights, best)
            trials, scores, info = score_backends(model, name, config, torch_device, backends,
                                                  cohort_of(run_dir, random_weights, model, config), progress)
            suffix = "" if not random_weights else "_random"
            for backend, values in scores.items():
                plain = backend == "cosine"
                file_name = f"{slug(name)}{suffix}" + ("" if plain else f"_{backend}")
                write_scores(run_dir / "scores" / f"{file_name}.score", trials.enroll, trials.test, values, trials.labels)
                metrics = full_metrics(values, trials.labels)
                results[f"test/{slug(name)}{suffix}" + ("" if plain else f"/{backend}")] = {
                    **metrics, **info[backend], "weights": source}
                system = label if plain else f"{label}, {backend}"
                curves[f"{run_dir.name} ({system})"] = (values, trials.labels)
                histograms[system] = (values, trials.labels)
                table.append((name, run_label(run_dir), label, backend, metrics))
                if not random_weights:
                    compared[_curve_name(run_dir, backend, len(scores))] = (values, trials.labels)
        if plots:
            plot_det(curves, run_dir / f"det_{slug(name)}.png", title=f"{run_dir} on {name}")
            plot_score_histograms(histograms, run_dir / f"hist_{slug(name)}.png")
        if compare:
            for other in compare:
                model, other_config, _ = load_model(other, average, torch_device, best=best)
                trials, scores, _ = score_backends(model, name, other_config, torch_device, backends,
                                                   cohort_of(other, False, model, other_config), progress)
                for backend, values in scores.items():
                    compared[_curve_name(other, backend, len(scores))] = (values, trials.labels)
                    table.append((name, run_label(other), "trained", backend, full_metrics(values, trials.labels)))
            if plots:
                plot_det(compared, run_dir / f"det_{slug(name)}_compare.png", title=f"{len(compare) + 1} runs on {name}")
    results_path.write_text(json.dumps(results, indent=2))
    print(format_table(table, show_run=bool(compare)))
    return results


def _curve_name(run: Path, backend: str, num_backends: int) -> str:
    return run_label(run) if num_backends == 1 else f"{run_label(run)} [{backend}]"


def slug(trials_name: str) -> str:
    """File-name-safe name of a trial set: vox1_O stays vox1_O, lists/my trials.txt becomes lists_my_trials."""
    name = trials_name[:-4] if trials_name.endswith(".txt") else trials_name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "_")).strip("_.")


def format_table(rows: list[tuple], show_run: bool = False) -> str:
    """Rows (trials, run, system, backend, metrics dict) as an aligned text table."""
    columns = ["trials"] + (["run"] if show_run else []) + ["system", "back-end"]
    cells = [[r[0]] + ([r[1]] if show_run else []) + [r[2], r[3]] for r in rows]
    widths = [max([len(c)] + [len(str(row[i])) for row in cells]) for i, c in enumerate(columns)]
    head = " ".join(f"{c:<{w}}" for c, w in zip(columns, widths))
    lines = [head + f" {'EER (%)':>8} {'minDCF0.01':>11} {'minDCF0.05':>11} {'actDCF0.01':>11} {'Cllr':>8} "
                    f"{'minCllr':>8} {'trials':>9}"]
    for row, text in zip(rows, cells):
        m = row[4]
        lines.append(" ".join(f"{c:<{w}}" for c, w in zip(text, widths))
                     + f" {m['eer']:>8.2f} {m['min_dcf_001']:>11.4f} {m['min_dcf_005']:>11.4f} {m['act_dcf_001']:>11.4f}"
                       f" {m['cllr']:>8.3f} {m['min_cllr']:>8.3f} {m['num_trials']:>9}")
    return "\n".join(lines)
