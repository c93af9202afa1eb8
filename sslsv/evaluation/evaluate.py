"""Evaluate a run: embeddings (full length or multi-crop), cosine scores, optional cohort score normalisation
(Z/T/S/AS-norm), an optional PLDA back-end (sslsv.evaluation.plda), EER / minDCF / actDCF / Cllr, score files,
results.json, DET plots and score histograms.

`score_backends` is the one trial-scoring pipeline (embed the utterances of a trial list, full length or
multi-crop; cosine scores; optional cohort normalisations; optional PLDA log-likelihood ratios). `score_trials`
(plain cosine: validation, fusion, fine-tuning), `evaluate_model` and `evaluate_run` are expressed through it.

Every trial list is checked by `check_trials` before any embedding is computed (and, in `evaluate_run`, before
any model is loaded): both target and non-target trials, and the audio file of every utterance present (see
sslsv.data.trials.resolve_trials for where relative utterance paths are read from)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch

from sslsv.config import Config
from sslsv.audio.io import check_audio_files
from sslsv.data.manifest import Manifest, read_manifest
from sslsv.data.trials import Trials, check_trial_labels, locate_trial_audio, resolve_trials
from sslsv.evaluation.analysis import plot_score_histograms
from sslsv.evaluation.embeddings import Crops, check_amp, embedding_cache, extract_embeddings, is_channels_last
from sslsv.evaluation.metrics import (VerificationMetrics, compute_act_dcf, compute_cllr, compute_metrics,
                                      compute_min_cllr)
from sslsv.evaluation.multicrop import multicrop_scores
from sslsv.evaluation.normalization import build_cohort, normalize_scores
from sslsv.evaluation.plda import PLDA, PLDAError
from sslsv.evaluation.plots import plot_det
from sslsv.evaluation.scoring import cosine_scores, index_trials, write_scores
from sslsv.distributed import resolve_device
from sslsv.runs import RunError, RunLayout, load_model, load_run_config, run_weights, weights_name


@dataclass(frozen=True)
class CheckedTrials:
    """A trial list ready to be scored (from check_trials): both classes present, every audio file found.

    Attributes:
        trials: the list.
        utterances: trials.utterances(), what needs an embedding.
        files: the audio file of each utterance.
    """

    trials: Trials
    utterances: list[str]
    files: list[str]


TrialsArg = Union[str, Trials, CheckedTrials]


def check_trials(trials: TrialsArg, config: Config, audio_dir: str | Path | None = None) -> CheckedTrials:
    """Resolve a trial list and check it, before any model work: it has target and non-target trials, and the
    audio file of every utterance exists and has a usable header.

    Args:
        trials: a trial-set name or trial-file path (resolved under config.dataset.data_root, see
            sslsv.data.trials.resolve_trials), a Trials object (then `audio_dir` is required), or an already
            checked list (returned as it is).
        audio_dir: folder the relative utterance paths are relative to (overrides the trial set's folder or the
            data root).

    Raises:
        TrialsError: unknown name, missing or malformed file, a single class of trials, missing audio files (the
            first ones listed with their lines, and the folder searched).
        RunError: a Trials object without audio_dir.
    """
    if isinstance(trials, CheckedTrials):
        return trials
    if isinstance(trials, Trials):
        if audio_dir is None:
            raise RunError("scoring a Trials object needs audio_dir, the folder its utterances are relative to")
        folder = Path(audio_dir)
    else:
        trials, folder = resolve_trials(trials, config.dataset.data_root, audio_dir)
    check_trial_labels(trials)
    files = locate_trial_audio(trials, folder)
    check_audio_files(files)  # headers of every file (empty, not audio, truncated, too short), all named at once
    return CheckedTrials(trials, trials.utterances(), files)


def score_trials(model: torch.nn.Module, trials: TrialsArg, config: Config, device: torch.device, *,
                 audio_dir: str | Path | None = None, progress: bool = True) -> tuple[Trials, np.ndarray]:
    """Plain cosine scores of a trial list: (trials, (T,) float32 scores); see score_backends.

    Args:
        trials: a trial-set name or trial-file path (resolved under config.dataset.data_root), a Trials object
            (then `audio_dir` is required) or a CheckedTrials.
        audio_dir: folder the trial utterances are relative to (overrides the trial set's folder).
    """
    trials, scores, _ = score_backends(model, trials, config, device, Backends(norms=()), audio_dir=audio_dir,
                                       progress=progress)
    return trials, scores["cosine"]


def evaluate_model(model: torch.nn.Module, trials: TrialsArg, config: Config, device: torch.device, *,
                   audio_dir: str | Path | None = None, progress: bool = True) -> VerificationMetrics:
    """EER and minDCF of the plain cosine scores of a trial list (score_trials)."""
    trials, scores = score_trials(model, trials, config, device, audio_dir=audio_dir, progress=progress)
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
        plda: add a PLDA back-end (sslsv.evaluation.plda), trained on the embeddings of a labelled manifest.
        plda_lda_dim: LDA to this many dimensions before the PLDA; None = no LDA.
        plda_manifest: manifest whose Speaker column labels the PLDA training utterances (absolute, or relative
            to the data root; its files relative to the data root), e.g. a pseudo-label manifest; None = the
            run's dataset.manifest, whose speaker labels are supervision.
        plda_iterations: EM iterations of the PLDA training.
    """

    norms: tuple[str, ...] = ()
    cohort_size: int | None = 6000
    top_n: int = 300
    cohort_labels: bool = False
    cohort_seed: int = 0
    crops: int | None = None
    crop_seconds: float = 3.0
    plda: bool = False
    plda_lda_dim: int | None = None
    plda_manifest: str | None = None
    plda_iterations: int = 10

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
        if self.plda_lda_dim is not None and self.plda_lda_dim < 1:
            raise RunError(f"--plda-lda-dim must be >= 1, got {self.plda_lda_dim}")
        if self.plda_iterations < 1:
            raise RunError(f"--plda-iterations must be >= 1, got {self.plda_iterations}")

    @property
    def base(self) -> str:
        """Name of the un-normalised back-end: cosine (full length) or crops<N>x<L>s."""
        return "cosine" if self.crops is None else f"crops{self.crops}x{self.crop_seconds:g}s"

    @property
    def plda_name(self) -> str:
        """Name of the PLDA back-end: plda (full length) or crops<N>x<L>s_plda."""
        return "plda" if self.crops is None else f"{self.base}_plda"

    @property
    def tag(self) -> str:
        """What output names add for these back-ends: "" for plain full-length cosine, else e.g. "_asnorm",
        "_crops5x2s_znorm_plda" (the base when it is not cosine, the normalisations, plda)."""
        parts = ([] if self.crops is None else [self.base]) + list(self.norms) + (["plda"] if self.plda else [])
        return "".join(f"_{part}" for part in parts)

    def names(self) -> list[str]:
        return ([self.base] + [n if self.crops is None else f"{self.base}_{n}" for n in self.norms]
                + ([self.plda_name] if self.plda else []))


def embed_utterances(model: torch.nn.Module, paths: list[str], config: Config, device: torch.device,
                     backends: Backends, progress: bool = True) -> torch.Tensor:
    """(U, D) full-length embeddings, or (U, N, D) multi-crop embeddings when backends.crops is set (model in eval
    mode meanwhile, its mode restored after), with the precision (evaluation.amp), layout
    (evaluation.channels_last, see extraction_layout) and compilation (evaluation.compile) of config.evaluation."""
    check_extraction(config, device)
    runtime = ExtractionRuntime.resolve(config, model, device)
    was_training = model.training
    model.eval()
    crops = None if backends.crops is None else Crops(backends.crop_seconds, backends.crops)
    try:
        with extraction_layout(model, runtime.channels_last):
            return extract_embeddings(model, paths, config.features.sample_rate, device,
                                      batch_seconds=config.evaluation.batch_seconds,
                                      max_trim=config.evaluation.max_trim, progress=progress,
                                      num_workers=min(config.dataset.num_workers, 4), crops=crops,
                                      amp=runtime.amp, compile=runtime.compile)
    finally:
        model.train(was_training)


def check_extraction(config: Config, device: torch.device) -> None:
    """RunError (one line naming the key) when evaluation.amp cannot run on `device` (fp16 off CUDA: a config
    naming a CPU evaluation.device is refused at load, "auto" only once the device is known)."""
    try:
        check_amp(config.evaluation.amp, torch.device(device))
    except ValueError as error:
        raise RunError(f"evaluation.amp: {error}") from None


def with_extraction(config: Config, amp: str | None = None, channels_last: bool | None = None,
                    device: str | None = None, compile: bool | None = None) -> Config:
    """The config with evaluation.amp / evaluation.channels_last / evaluation.device / evaluation.compile replaced
    by the given (command-line) values; None (and device "auto") keeps the config's."""
    device = None if device == "auto" else device
    changes = {k: v for k, v in (("amp", amp), ("channels_last", channels_last), ("device", device),
                                 ("compile", compile)) if v is not None}
    return replace(config, evaluation=replace(config.evaluation, **changes)) if changes else config


def _wants_channels_last(model: torch.nn.Module, config: Config, device: torch.device) -> bool:
    """evaluation.channels_last resolved (null: CUDA only, as trainer.channels_last), for encoders declaring it."""
    chosen = config.evaluation.channels_last
    chosen = torch.device(device).type == "cuda" if chosen is None else chosen
    return chosen and bool(getattr(getattr(model, "encoder", None), "channels_last", False))


@dataclass(frozen=True)
class ExtractionRuntime:
    """How the model runs during an extraction, resolved for one model and device: autocast precision, NHWC
    layout, torch.compile. One resolution for evaluate.py, the Python API, `sslsv analyze` and pseudo-labelling."""

    amp: str = "none"
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def resolve(cls, config: Config, model: torch.nn.Module, device: torch.device) -> "ExtractionRuntime":
        """config.evaluation's amp / channels_last (null: CUDA only, for encoders declaring it) / compile."""
        return cls(config.evaluation.amp, _wants_channels_last(model, config, device), config.evaluation.compile)

    def meta(self) -> dict:
        """Record entries of a non-default setting (none for float32 eager NCHW, so older records still match)."""
        return {**({"amp": self.amp} if self.amp != "none" else {}),
                **({"layout": "nhwc"} if self.channels_last else {}),
                **({"compiled": True} if self.compile else {})}


@contextmanager
def extraction_layout(model: torch.nn.Module, channels_last: bool):
    """Within the block the model is channels_last (NHWC) when asked; a model converted here gets its contiguous
    layout back after (a training run whose validation calls evaluation keeps its own layout; parameters are
    converted in place, so optimisers still hold them). A model already NHWC, or not asked, is left as it is."""
    if not channels_last or is_channels_last(model):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def extraction_suffix(config: Config, device: torch.device) -> str:
    """What output names add for a non-default extraction: "" for float32 eager in the device's default layout,
    else _bf16 / _fp16 (evaluation.amp), _nhwc (channels_last true on a CPU) or _nchw (false on CUDA), and
    _compiled (evaluation.compile). The layout part names the setting asked for (it changes the computation only
    for encoders that declare channels_last)."""
    amp = config.evaluation.amp
    suffix = "" if amp == "none" else f"_{amp}"
    chosen, cuda = config.evaluation.channels_last, torch.device(device).type == "cuda"
    if chosen is not None and chosen != cuda:
        suffix += "_nhwc" if chosen else "_nchw"
    return suffix + ("_compiled" if config.evaluation.compile else "")


class TrainingEmbeddings:
    """Embeddings of training utterances under one model, each file embedded at most once: the cohort of the score
    normalisations and the PLDA training set (a cohort is usually a subset of the PLDA manifest) share them.

    Called with a list of files, returns their embeddings in that order ((F, D), or (F, N, D) with crops),
    embedding only the files not seen before (in one extract_embeddings call, so batched by length among
    themselves).
    """

    def __init__(self, model: torch.nn.Module, config: Config, device: torch.device, backends: Backends,
                 progress: bool = True):
        self.model, self.config, self.device, self.backends, self.progress = model, config, device, backends, progress
        self.rows: dict[str, int] = {}
        self.parts: list[torch.Tensor] = []

    def __call__(self, files: list[str]) -> torch.Tensor:
        new = [f for f in dict.fromkeys(files) if f not in self.rows]
        if new:
            self.parts = [torch.cat(self.parts + [embed_utterances(self.model, new, self.config, self.device,
                                                                   self.backends, self.progress)])]
            offset = len(self.rows)
            self.rows.update({f: offset + i for i, f in enumerate(new)})
        return self.parts[0][torch.as_tensor([self.rows[f] for f in files], dtype=torch.int64)]


def build_run_cohort(model: torch.nn.Module, config: Config, device: torch.device, backends: Backends,
                     progress: bool = True,
                     embed: Callable[[list[str]], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """Cohort of a run from its training manifest: (C, D) unit rows and a description for results.json.

    `cohort_size` utterances are drawn at random (seeded); each is embedded like the test utterances (full length,
    or N crops averaged), through `embed` when given (a TrainingEmbeddings shared with the PLDA). One row per
    utterance, so no speaker label is used, unless `cohort_labels` asks for per-speaker averaging.
    """
    embed = embed or TrainingEmbeddings(model, config, device, backends, progress)
    root = Path(config.dataset.data_root)
    manifest_path = root / config.dataset.manifest
    manifest = read_manifest(manifest_path)
    total = len(manifest)
    if backends.cohort_size and backends.cohort_size < total:
        rng = np.random.default_rng(backends.cohort_seed)
        manifest = manifest.subset(np.sort(rng.choice(total, backends.cohort_size, replace=False)))
    embeddings = embed([str(root / f) for f in manifest.files])
    labels = manifest.speakers if backends.cohort_labels else None
    cohort = build_cohort(embeddings, labels)
    if labels is None:
        kind = "utterance"
        text = "one row per utterance, speaker labels not used"
    else:
        kind = "speaker"
        text = f"averaged per speaker into {cohort.shape[0]} rows, USES speaker labels"
    print(f"cohort: {len(manifest)} of {total} utterances of {manifest_path} ({text})")
    description = {"cohort_rows": int(cohort.shape[0]), "cohort_utterances": len(manifest), "cohort_per": kind,
                   "cohort_manifest": str(manifest_path), "cohort_seed": backends.cohort_seed}
    return cohort, description


def plda_training_manifest(config: Config, backends: Backends) -> tuple[Manifest, Path]:
    """(manifest, its path) the PLDA is trained on: backends.plda_manifest (absolute, or relative to the data
    root) or the run's dataset.manifest; checked to have enough speakers for the PLDA and the LDA dimension.

    Raises:
        ManifestError: a missing or malformed manifest.
        RunError: fewer than 2 speakers, no speaker with 2 utterances, an LDA dimension above speakers - 1.
    """
    root = Path(config.dataset.data_root)
    path = Path(backends.plda_manifest) if backends.plda_manifest else Path(config.dataset.manifest)
    path = path if path.is_absolute() else root / path
    manifest = read_manifest(path)
    counts = np.unique(np.asarray(manifest.speakers), return_counts=True)[1]
    if len(counts) < 2 or counts.max() < 2:
        raise RunError(f"{path}: PLDA training needs at least 2 speakers and a speaker with 2 utterances, got "
                       f"{len(counts)} speaker(s), at most {counts.max()} utterance(s) each")
    if backends.plda_lda_dim is not None and backends.plda_lda_dim > len(counts) - 1:
        raise RunError(f"--plda-lda-dim {backends.plda_lda_dim} is more than the {len(counts) - 1} (speakers - 1) "
                       f"that {path} allows")
    return manifest, path


def build_run_plda(model: torch.nn.Module, config: Config, device: torch.device, backends: Backends,
                   progress: bool = True,
                   embed: Callable[[list[str]], torch.Tensor] | None = None) -> tuple[PLDA, dict]:
    """PLDA of a run (plda_training_manifest: every utterance, embedded like the test utterances, through `embed`
    when given) and a description for results.json. The labels are the manifest's Speaker column: speaker
    labels (supervision) for the training manifest, cluster ids for a pseudo-label manifest."""
    embed = embed or TrainingEmbeddings(model, config, device, backends, progress)
    manifest, path = plda_training_manifest(config, backends)
    root = Path(config.dataset.data_root)
    embeddings = embed([str(root / f) for f in manifest.files])
    try:
        plda = PLDA.train(embeddings, manifest.speakers, backends.plda_lda_dim, backends.plda_iterations)
    except PLDAError as error:
        raise RunError(f"{path}: {error}") from None
    labels = ("labels of --plda-manifest: self-supervised only if they are pseudo-labels" if backends.plda_manifest
              else "USES the speaker labels of the training manifest: not a purely self-supervised result")
    lda = f"LDA to {backends.plda_lda_dim}, " if backends.plda_lda_dim else ""
    print(f"PLDA: {plda.utterances} utterances of {plda.speakers} speakers of {path} ({labels}), {lda}"
          f"PLDA dimension {plda.dim}")
    description = {"plda_manifest": str(path), "plda_utterances": plda.utterances, "plda_speakers": plda.speakers,
                   "plda_lda_dim": backends.plda_lda_dim, "plda_dim": plda.dim,
                   "plda_iterations": backends.plda_iterations}
    return plda, description


def score_backends(model: torch.nn.Module, trials: TrialsArg, config: Config, device: torch.device,
                   backends: Backends | None = None, cohort: Callable[[], tuple[torch.Tensor, dict]] | None = None,
                   plda: Callable[[], tuple[PLDA, dict]] | None = None, *, audio_dir: str | Path | None = None,
                   progress: bool = True) -> tuple[Trials, dict[str, np.ndarray], dict[str, dict]]:
    """The trial-scoring pipeline: scores of one trial list under every back-end.

    Embeds each utterance of the list once (full length, or backends.crops crops), scores every trial by cosine
    (for crops, the mean N x N crop cosine), then adds one normalised back-end per backends.norms and, with
    backends.plda, the PLDA log-likelihood ratios (for crops, of each utterance's mean normalised crop).

    Args:
        trials: a trial-set name or trial-file path (resolved under config.dataset.data_root), a Trials object
            (then `audio_dir` is required) or a CheckedTrials; checked by check_trials before any embedding.
        backends: how to score (default: plain full-length cosine only).
        cohort: returns (cohort, description); only called when a normalisation is asked for.
        plda: returns (PLDA, description) (build_run_plda); only called when backends.plda is set.
        audio_dir: folder the trial utterances are relative to (overrides the trial set's folder).

    Returns:
        (trials, {backend: (T,) float32 scores}, {backend: info for results.json}), backends in backends.names()
        order.
    """
    backends = backends or Backends(norms=())
    checked = check_trials(trials, config, audio_dir)
    trials = checked.trials
    embeddings = embed_utterances(model, checked.files, config, device, backends, progress)
    enroll, test = index_trials(trials.enroll, trials.test, checked.utterances)
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
            scores[name] = normalize_scores(embeddings, enroll, test, matrix, method, top_n, scores=scores[base])
            info[name] = {**info[base], "norm": norm, **({"top_n": top_n} if top_n else {}), **description}
    if backends.plda:
        if plda is None:
            raise RunError("the PLDA back-end needs training embeddings")
        trained, description = plda()
        scores[backends.plda_name] = trained.score(embeddings, enroll, test)
        info[backends.plda_name] = {**info[base], **description}
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


class _RunEvaluation:
    """What one evaluate_run call shares across trial lists: each model and each cohort loaded once, the table."""

    def __init__(self, backends: Backends, device: torch.device, average: bool, best: bool, progress: bool,
                 audio_root: str | Path | None = None):
        self.backends, self.device, self.average, self.best, self.progress = backends, device, average, best, progress
        self.audio_root = audio_root
        self.models: dict[tuple[str, bool], tuple] = {}
        self.cohorts: dict[tuple[str, bool], tuple[torch.Tensor, dict]] = {}
        self.pldas: dict[tuple[str, bool], tuple[PLDA, dict]] = {}
        self.training: dict[tuple[str, bool], TrainingEmbeddings] = {}
        self.checked: dict[tuple[str, str], CheckedTrials] = {}
        self.table: list[tuple] = []
        self.suffix = ""  # weights_suffix + extraction_suffix of the evaluated run
        self.random_suffix = "_random"  # the random-weights system's (+ extraction_suffix)
        self.extraction: dict = {}  # amp / channels_last / compile overriding every loaded run's config

    def trials(self, name: str, config: Config) -> CheckedTrials:
        """The checked trial list `name` under the config's data root (checked once per data root)."""
        key = (str(config.dataset.data_root), name)
        if key not in self.checked:
            self.checked[key] = check_trials(name, config, self.audio_root)
        return self.checked[key]

    def score(self, run: Path, name: str, random_weights: bool = False):
        """(trials, {backend: scores}, {backend: info}, weights source) of one run (or its random weights)."""
        key = (str(run), random_weights)
        if key not in self.models:
            model, config, source = load_model(run, self.average, self.device, random_weights, self.best)
            self.models[key] = model, with_extraction(config, **self.extraction), source
        model, config, source = self.models[key]
        if key not in self.training:  # the cohort and the PLDA embed each training file once between them
            self.training[key] = TrainingEmbeddings(model, config, self.device, self.backends, self.progress)

        def cohort() -> tuple[torch.Tensor, dict]:
            if key not in self.cohorts:
                if self.backends.plda:
                    # The PLDA's files first, all in one extraction: a file's embedding depends slightly on the
                    # files batched with it (evaluation.max_trim), so this keeps the PLDA the same with or
                    # without --norm; the cohort then reuses those rows.
                    plda()
                self.cohorts[key] = build_run_cohort(model, config, self.device, self.backends, self.progress,
                                                     self.training[key])
            return self.cohorts[key]

        def plda() -> tuple[PLDA, dict]:
            if key not in self.pldas:
                self.pldas[key] = build_run_plda(model, config, self.device, self.backends, self.progress,
                                                 self.training[key])
            return self.pldas[key]

        trials, scores, info = score_backends(model, self.trials(name, config), config, self.device, self.backends,
                                              cohort, plda, progress=self.progress)
        return trials, scores, info, source


def _record(run_dir: Path, name: str, suffix: str, trials: Trials, scores: dict, info: dict, source: str,
            results: dict) -> dict[str, dict]:
    """Write one system's score files and results.json entries (into `results`); returns {backend: metrics}."""
    # Every metric first: NaN scores raise EvaluationError before any score file is written.
    metrics = {backend: full_metrics(values, trials.labels) for backend, values in scores.items()}
    for backend, values in scores.items():
        write_scores(RunLayout(run_dir).score_file(_system_name(name, suffix, backend)), trials.enroll, trials.test,
                     values, trials.labels)
        results[_results_key(name, suffix, backend)] = {
            **metrics[backend], **info[backend], "weights": source}
    return metrics


def _system_name(trials_name: str, suffix: str, backend: str) -> str:
    """Score-file name of one system: <trials>[_random|_last|_best][_<back-end>] (plain cosine: no back-end)."""
    return f"{slug(trials_name)}{suffix}" + ("" if backend == "cosine" else f"_{backend}")


def _results_key(trials_name: str, suffix: str, backend: str) -> str:
    """results.json key of one system: test/<trials>[_random|_last|_best][/<back-end>]."""
    return f"test/{slug(trials_name)}{suffix}" + ("" if backend == "cosine" else f"/{backend}")


def weights_suffix(run_dir: str | Path, average: bool, best: bool, default_average: bool) -> str:
    """What output names add for the evaluated weights: "" for the run's default weights (those evaluate uses
    without --weights: evaluation.use_average), else _avg, _last or _best (sslsv.runs.weights_name)."""
    chosen = weights_name(run_weights(run_dir, average, best))
    return "" if chosen == weights_name(run_weights(run_dir, default_average)) else f"_{chosen}"


def planned_outputs(run_dir: str | Path, names: list[str], backends: Backends, suffix: str, random_baseline: bool,
                    plots: bool, compare: bool, random_suffix: str = "_random") -> tuple[list[Path], list[str]]:
    """(files, results.json keys) that evaluate_run will write for these trial lists, back-ends and weights."""
    layout = RunLayout(run_dir)
    files, keys = [], []
    for name in names:
        for system_suffix in [suffix] + ([random_suffix] if random_baseline else []):
            for backend in backends.names():
                files.append(layout.score_file(_system_name(name, system_suffix, backend)))
                keys.append(_results_key(name, system_suffix, backend))
        if plots:
            figure = f"{slug(name)}{suffix}{backends.tag}"
            files += [layout.det_plot(figure), layout.histogram_plot(figure)]
            files += [layout.det_plot(f"{figure}_compare")] if compare else []
    return files, keys


def check_new_outputs(files: list[Path], overwrite: bool, keys: list[str] = (), store: Path | None = None) -> None:
    """Refuse (FileExistsError, one line naming the first one) outputs that exist already, unless overwrite:
    files, and keys already present in the JSON file `store` (results.json). Called before any model work."""
    if overwrite:
        return
    existing = [str(f) for f in files if Path(f).exists()]
    if keys and store is not None and store.exists():
        held = json.loads(store.read_text())
        existing += [f"{store} key {key}" for key in keys if key in held]
    if existing:
        more = f" (and {len(existing) - 1} more output(s) of this command)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} exists{more}; pass --force to replace it")


def _score_run_systems(state: _RunEvaluation, run_dir: Path, name: str, systems: dict[str, bool], results: dict,
                       plots: bool) -> dict:
    """Score one trial list with the run (and its random weights), write outputs and plots; returns the run's
    curves for the comparison figure."""
    curves, histograms, compared = {}, {}, {}
    for label, random_weights in systems.items():
        trials, scores, info, source = state.score(run_dir, name, random_weights)
        metrics = _record(run_dir, name, state.random_suffix if random_weights else state.suffix, trials, scores,
                          info, source, results)
        for backend, values in scores.items():
            system = label if backend == "cosine" else f"{label}, {backend}"
            curves[f"{run_label(run_dir)} ({system})"] = (values, trials.labels)
            histograms[system] = (values, trials.labels)
            state.table.append((name, run_label(run_dir), label, backend, metrics[backend]))
            if not random_weights:
                compared[_curve_name(run_dir, backend, len(scores))] = (values, trials.labels)
    if plots:
        figure = f"{slug(name)}{state.suffix}{state.backends.tag}"
        plot_det(curves, RunLayout(run_dir).det_plot(figure), title=f"{run_dir} on {name}")
        plot_score_histograms(histograms, RunLayout(run_dir).histogram_plot(figure))
    return compared


def _score_compared_runs(state: _RunEvaluation, others: list[Path], name: str, compared: dict) -> None:
    """Score one trial list with the compared runs (nothing written to their folders); adds their curves."""
    for other in others:
        trials, scores, _, _ = state.score(other, name)
        for backend, values in scores.items():
            compared[_curve_name(other, backend, len(scores))] = (values, trials.labels)
            state.table.append((name, run_label(other), "trained", backend, full_metrics(values, trials.labels)))


def evaluate_run(run_dir: str | Path, trials_names: list[str] | None = None, use_average: bool | None = None,
                 device: str = "auto", random_baseline: bool = False, progress: bool = True,
                 backends: Backends | None = None, compare: list[str | Path] | None = None,
                 plots: bool = True, best: bool = False, audio_root: str | Path | None = None,
                 overwrite: bool = True, cache: bool = True, amp: str | None = None,
                 channels_last: bool | None = None, compile: bool | None = None) -> dict:
    """Evaluate a run on each trial list and write its outputs; returns the updated results.json content.

    Writes, per trial list <t> (file-name-safe, see slug), weights <w> (nothing for the run's default weights,
    else _avg, _last or _best: weights_suffix; then _bf16 / _fp16 / _nhwc / _nchw / _compiled for a non-default
    extraction:
    extraction_suffix) and back-end <b> (cosine, znorm, ..., crops<N>x<L>s,
    crops<N>x<L>s_asnorm, plda; see Backends): scores/<t>[<w>|_random][_<b>].score, results.json keys
    test/<t>[<w>|_random][/<b>] (plain full-length cosine: test/<t> and scores/<t>.score, without a back-end
    suffix), det_<t><w><B>.png (every system and back-end; <B> is Backends.tag, e.g. _asnorm), hist_<t><w><B>.png
    (target / non-target score histograms) and, with `compare`, det_<t><w><B>_compare.png with this run's and the
    other runs' curves. overwrite=False refuses (FileExistsError naming the first one) when any of these files or
    results.json keys exists, after the trial lists are checked and before any model is loaded (the command line's
    default; --force sets it). cache: embeddings go through the run's embedding cache (RunLayout.embedding_cache;
    compared runs too, in this run's folder, keyed by their weights). The other runs are scored with the same
    back-ends (each with its own training cohort) but nothing is written into their folders.
    plots=False skips the figures (score files and results.json are still written). best=True evaluates
    model_best.pt (the best validation score) instead; every results.json entry names its weights file.

    Every trial list is checked (check_trials) for this run and each compared run before any model is loaded.
    `audio_root` is the folder the utterance paths of every list are relative to (default: a registered set's
    folder, or the data root for a trial file). `amp` ("none", "bf16", "fp16"), `channels_last` and `compile`
    override evaluation.amp / evaluation.channels_last / evaluation.compile of every evaluated run's config (None:
    the config's).
    """
    run_dir = Path(run_dir)
    extraction = {"amp": amp, "channels_last": channels_last, "device": str(device), "compile": compile}
    config = with_extraction(load_run_config(run_dir), **extraction)
    names = trials_names or config.evaluation.trials
    average = config.evaluation.use_average if use_average is None else use_average
    torch_device = resolve_device(device if device != "auto" else config.evaluation.device)
    systems = {"trained": False} | ({"random weights": True} if random_baseline else {})
    others = [Path(r) for r in (compare or [])]
    check_extraction(config, torch_device)
    state = _RunEvaluation(backends or Backends(), torch_device, average, best, progress, audio_root)
    state.extraction = extraction
    extracted = extraction_suffix(config, torch_device)
    state.suffix = weights_suffix(run_dir, average, best, config.evaluation.use_average) + extracted
    state.random_suffix = "_random" + extracted
    for run_config in [config, *(load_run_config(other) for other in others)]:  # fail before any model work
        for name in names:
            state.trials(name, run_config)
        if state.backends.plda:
            plda_training_manifest(run_config, state.backends)
    files, keys = planned_outputs(run_dir, names, state.backends, state.suffix, random_baseline, plots, bool(others),
                                  state.random_suffix)
    layout = RunLayout(run_dir)
    check_new_outputs(files, overwrite, keys, layout.results)  # after the inputs' checks, before any model work
    results_path = layout.results
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    with embedding_cache(layout.embedding_cache if cache else None):
        for name in names:
            compared = _score_run_systems(state, run_dir, name, systems, results, plots)
            if others:
                _score_compared_runs(state, others, name, compared)
                if plots:
                    plot_det(compared, layout.det_plot(f"{slug(name)}{state.suffix}{state.backends.tag}_compare"),
                             title=f"{len(others) + 1} runs on {name}")
    results_path.write_text(json.dumps(results, indent=2))
    print(format_table(state.table, show_run=bool(others)))
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
