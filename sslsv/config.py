"""Typed, strict configuration: YAML files with inheritance, dotted command-line overrides, validation.

A config file is a mapping whose sections fill the dataclasses below. `base:` names one or more files (relative
to the file that names them) whose contents are merged first, later ones winning; the shipped configs compose
fragments this way (configs/base/, configs/methods/, configs/encoders/; docs/config.md). The `encoder:` and
`method:` sections are typed by the dataclass that the named registry entry declares. Every key is checked: an
unknown key, a wrong type or an unknown registry name raises ConfigError naming the dotted key and the closest
valid one. Values are checked too (docs/config.md, "Validation"): ranges and orderings in each section's
`__post_init__`, the rules that span sections in `check_config`, and combinations that do nothing are reported by
`config_warnings` (printed once by `load_config`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sslsv.distributed import DeviceError, parse_device
from sslsv.registry import ENCODERS, METHODS, Registry, RegistryError, closest


class ConfigError(ValueError):
    """A config problem, with the dotted key that caused it."""


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FeaturesConfig:
    """Log-mel front-end. The defaults are the review's (Lepage & Dehak, "Self-Supervised Learning for Speaker
    Recognition: A study and review", 2026, arXiv:2602.10829, section 4.1: torchaudio log-mels, 25 ms Hamming
    window, 10 ms hop, 40 mels, 80 for DINO, instance normalisation) with the rest of the authors' front-end
    (theolepage/sslsv, encoders/_BaseEncoder.py, used by their Fast ResNet-34 and ECAPA-TDNN): n_fft 512, no
    pre-emphasis, torchaudio's full band 0 Hz to the Nyquist frequency. ReDimNet's front-end (pre-emphasis 0.97,
    20-7600 Hz) is set by configs/encoders/redimnet_*.yml; docs/config.md has the table per encoder family."""

    sample_rate: int = 16000
    n_mels: int = 40
    n_fft: int = 512
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 0.0
    f_max: float | None = None  # null: the Nyquist frequency (sample_rate / 2)
    preemphasis: float = 0.0  # y[t] = x[t] - a x[t-1]; 0 disables
    instance_norm: bool = True  # per-utterance mean/variance normalisation of every mel band

    def __post_init__(self) -> None:
        require(self.sample_rate > 0, "features.sample_rate", "positive", self.sample_rate)
        require(self.win_ms > 0, "features.win_ms", "positive", self.win_ms)
        require(0 < self.hop_ms <= self.win_ms, "features.hop_ms",
                f"in (0, features.win_ms = {self.win_ms:g}] (a hop longer than the window skips samples)", self.hop_ms)
        require(self.hop_samples >= 1, "features.hop_ms", f"at least one sample at {self.sample_rate} Hz", self.hop_ms)
        require(self.n_fft >= self.window_samples, "features.n_fft",
                f">= the window ({self.win_ms:g} ms = {self.window_samples} samples at {self.sample_rate} Hz)",
                self.n_fft)
        bins = self.n_fft // 2 + 1
        require(1 <= self.n_mels <= bins, "features.n_mels",
                f"in [1, {bins}] (the frequency bins of n_fft {self.n_fft}; more leaves mel bands empty)", self.n_mels)
        nyquist = self.sample_rate / 2
        require(self.f_max is None or 0 < self.f_max <= nyquist, "features.f_max",
                f"in (0, {nyquist:g}] (the Nyquist frequency of {self.sample_rate} Hz) or null", self.f_max)
        top, name = (nyquist, "the Nyquist frequency") if self.f_max is None else (self.f_max, "features.f_max")
        require(0 <= self.f_min < top, "features.f_min", f"in [0, {top:g}) (below {name})", self.f_min)
        require(0 <= self.preemphasis < 1, "features.preemphasis", "in [0, 1)", self.preemphasis)

    @property
    def window_samples(self) -> int:
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000))


@dataclass
class ViewGroup:
    """`count` views, each a random crop of `seconds` of the same utterance."""

    count: int = 2
    seconds: float = 2.0
    # false: these views skip augmentation (their plans are still drawn, so the other views' randomness does not
    # change); e.g. SSPS's clean reference crop
    augment: bool = True

    def __post_init__(self) -> None:
        require(self.count >= 1, "dataset.views.count", "at least 1", self.count)
        require(self.seconds > 0, "dataset.views.seconds", "positive", self.seconds)


@dataclass
class DatasetConfig:
    data_root: str = "data"  # manifest, trial lists and audio paths are relative to it
    manifest: str = "voxceleb2/train.csv"
    # A shard.list written by `sslsv shards` (relative to data_root): training streams these tar shards instead of
    # reading the manifest's files; the manifest still serves evaluation cohorts, PLDA and pseudo-labelling.
    shards: str | None = None
    # Views produced per utterance, in order: the first group is the "global" one (e.g. DINO: 2 x 4 s, 4 x 2 s).
    views: list[ViewGroup] = field(default_factory=lambda: [ViewGroup(2, 2.0)])
    batch_size: int = 256  # global batch: divided across ranks under torchrun
    num_workers: int = 4
    check_manifest: bool = True  # verify every file before training (missing, empty, unreadable, rate, length)
    # also decode every file before training (NaN/Inf samples, data cut short): one full read of the corpus
    check_manifest_deep: bool = False
    # Shortest usable file. Files shorter than a view are repeated to fill it (never zero-padded); set this to the
    # longest view to forbid that.
    min_seconds: float = 0.5
    # How the views of one sample are drawn: crops of the same utterance, or (analysis only) crops of different
    # recordings of the same speaker, which needs labels in the manifest.
    positive_sampling: Literal["same_utterance", "supervised"] = "same_utterance"

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "dataset.batch_size", "at least 1", self.batch_size)
        require(self.num_workers >= 0, "dataset.num_workers", ">= 0", self.num_workers)
        _check(len(self.views) >= 1, "dataset.views", "needs at least one view group")
        require(self.min_seconds >= 0, "dataset.min_seconds", ">= 0", self.min_seconds)


@dataclass
class AugmentationConfig:
    """On-device augmentation (review, section 4.2): reverberation, then MUSAN noise, music or speech at an SNR drawn
    in 0-15, 5-15 or 13-20 dB (section 4.2). One file per view, speech included, as the authors' code
    (theolepage/sslsv, datasets/DataAugmentation.py, where the 3-7-file babble is commented out);
    `babble_speakers: [3, 7]` sums several speech files into a babble instead."""

    strategy: Literal["none", "reverb", "noise", "reverb+noise", "all"] = "reverb+noise"
    probability: float = 1.0  # chance that a view is augmented at all
    musan_dir: str | None = "musan"  # relative to data_root; sub-folders noise/, music/, speech/
    rir_dir: str | None = "RIRS_NOISES/simulated_rirs"  # relative to data_root; any tree of audio files
    snr_noise: tuple[float, float] = (0.0, 15.0)
    snr_music: tuple[float, float] = (5.0, 15.0)
    snr_speech: tuple[float, float] = (13.0, 20.0)
    babble_speakers: tuple[int, int] = (1, 1)  # speech files summed per view, drawn uniformly in [low, high]
    rir_max_seconds: float = 1.0  # RIR tails longer than this are cut

    def __post_init__(self) -> None:
        require(0 <= self.probability <= 1, "augmentation.probability", "in [0, 1]", self.probability)
        for name in ("snr_noise", "snr_music", "snr_speech", "babble_speakers"):
            low, high = getattr(self, name)
            require(low <= high, f"augmentation.{name}", "[low, high] with low <= high (dB)", [low, high])
        require(self.babble_speakers[0] >= 1, "augmentation.babble_speakers",
                "[low, high] with 1 <= low <= high (speech files per babble)", list(self.babble_speakers))
        require(self.rir_max_seconds > 0, "augmentation.rir_max_seconds", "positive", self.rir_max_seconds)


@dataclass
class TrainerConfig:
    epochs: int = 100
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False  # False: norms and biases get no weight decay
    sgd_momentum: float = 0.9
    nesterov: bool = False
    # Review, section 4.2: lr decayed by 5 % every 5 epochs.
    schedule: Literal["constant", "step", "cosine", "warmup_cosine"] = "step"
    step_epochs: int = 5
    step_gamma: float = 0.95
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # cosine schedules end exactly here
    grad_clip: float | None = None  # max gradient norm (null: no clipping), in the sense of grad_clip_mode
    # global: one norm over all gradients (torch clip_grad_norm_); per_parameter: each parameter tensor's gradient
    # clipped to grad_clip on its own, as DINO and the review's authors do (DINO configs, at 3.0).
    grad_clip_mode: Literal["global", "per_parameter"] = "global"
    # Fine-tuning from pre-trained weights (sslsv finetune, pseudo-label rounds): the embedding model's parameters
    # learn at encoder_lr_scale x the scheduled rate (the method's heads at the full rate), and not at all during
    # the first freeze_encoder_epochs epochs (a warm-up of the heads on a fixed encoder, so that a new classifier's
    # first large gradients do not undo the pre-trained features).
    encoder_lr_scale: float = 1.0
    freeze_encoder_epochs: float = 0.0
    amp: Literal["none", "fp16", "bf16"] = "none"
    compile: bool = False  # torch.compile the module the training step runs (opt-in; the first steps are slower)
    # Keep only each encoder block's input for the backward and recompute the block there
    # (sslsv/encoders/checkpointing.py): a quarter of the activation memory for about +25 % compute; same results.
    activation_checkpointing: bool = False
    # NHWC layout for 2-D encoders that declare it (Fast ResNet-34). null: on CUDA only; true: on a CPU too (0.81x
    # the CPU time of the encoder there, but float sums in another order than a NCHW run); false: never.
    channels_last: bool | None = None
    device: str = "auto"  # auto, cpu, cuda, cuda:1
    seed: int = 0
    max_steps_per_epoch: int | None = None  # shorter epochs (demo, smoke runs)
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    keep_checkpoints: int = 2  # bounded number of resumable checkpoints kept
    average_last: int = 10  # evaluation weights: mean of the last N epochs' weights (1: last epoch)
    validate_every: int = 0  # epochs; 0: never
    validation_trials: str | None = None  # trial-set name or path relative to data_root
    early_stopping_patience: int = 0  # validations without improvement before stopping; 0: off
    early_stopping_min_delta: float = 0.0  # an improvement smaller than this does not count
    tracked_metric: str = "val/eer"
    tracked_mode: Literal["min", "max"] = "min"
    log_every_steps: int = 10
    # The host reads the steps' loss, metrics and non-finite checks (one device -> host copy) every
    # sync_every_steps steps, at every log step, before every save and at the end of each epoch; 1: every step, before
    # its optimiser step (docs/reliability.md, "Finite or nothing").
    sync_every_steps: int = 10
    # Diagnostics that cost an SVD (effective_rank) are computed every diagnostics_every_steps steps and at every
    # log step; the cheap signals every step.
    diagnostics_every_steps: int = 10
    progress_bar: bool = True
    # Experiment trackers beside RUN/metrics.jsonl (always written), all given the same records (docs/training.md):
    # tensorboard, wandb, mlflow (the last two need `pip install wandb` / `pip install mlflow`).
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])
    # A fresh run's starting point (wespeaker's model_init): a run directory (its model_avg.pt, else model.pt, else
    # its newest epoch weights) or an embedding-model weights file; ignored when the run resumes a checkpoint.
    init_weights: str | None = None
    init_strict: bool = True  # false: load the tensors whose names and shapes match and report the others

    def __post_init__(self) -> None:
        self._check_optimisation()
        self._check_steps()
        self._check_validation()
        check_device(self.device, "trainer.device")
        repeated = sorted({name for name in self.loggers if self.loggers.count(name) > 1})
        _check(not repeated, "trainer.loggers", f"{', '.join(repeated)} listed more than once")
        _check(self.init_weights is None or bool(self.init_weights.strip()), "trainer.init_weights",
               "an empty path (give a run directory or a weights file, or null)")

    def _check_optimisation(self) -> None:
        require(self.epochs >= 1, "trainer.epochs", "at least 1", self.epochs)
        require(self.lr > 0, "trainer.lr", "positive", self.lr)
        require(0 <= self.min_lr <= self.lr, "trainer.min_lr",
                f"in [0, trainer.lr = {self.lr:g}] (the rate would rise instead of decay)", self.min_lr)
        require(self.weight_decay >= 0, "trainer.weight_decay", ">= 0", self.weight_decay)
        require(0 <= self.sgd_momentum < 1, "trainer.sgd_momentum", "in [0, 1)", self.sgd_momentum)
        if self.optimizer == "sgd" and self.nesterov:  # torch's SGD refuses Nesterov without momentum
            require(self.sgd_momentum > 0, "trainer.sgd_momentum", "> 0 with trainer.nesterov true", self.sgd_momentum)
        require(self.step_epochs >= 1, "trainer.step_epochs", "at least 1", self.step_epochs)
        require(0 < self.step_gamma <= 1, "trainer.step_gamma", "in (0, 1]", self.step_gamma)
        require(self.warmup_epochs >= 0, "trainer.warmup_epochs", ">= 0", self.warmup_epochs)
        require(self.encoder_lr_scale >= 0, "trainer.encoder_lr_scale", ">= 0", self.encoder_lr_scale)
        require(0 <= self.freeze_encoder_epochs < self.epochs, "trainer.freeze_encoder_epochs",
                f"in [0, trainer.epochs = {self.epochs}) (the encoder would never train)", self.freeze_encoder_epochs)
        require(self.grad_clip is None or self.grad_clip > 0, "trainer.grad_clip", "positive or null", self.grad_clip)
        # numpy's and torch's generators take seeds below 2**32 for every derived seed to stay in range
        require(0 <= self.seed < 2**32, "trainer.seed", "in [0, 2**32)", self.seed)

    def _check_steps(self) -> None:
        require(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "trainer.max_steps_per_epoch",
                "at least 1 or null (0 steps would save an untrained model)", self.max_steps_per_epoch)
        require(self.checkpoint_every_steps >= 0, "trainer.checkpoint_every_steps",
                ">= 0 (0: at the end of each epoch only)", self.checkpoint_every_steps)
        require(self.keep_checkpoints >= 1, "trainer.keep_checkpoints", "at least 1", self.keep_checkpoints)
        require(self.average_last >= 1, "trainer.average_last", "at least 1", self.average_last)
        require(self.log_every_steps >= 1, "trainer.log_every_steps", "at least 1", self.log_every_steps)
        require(self.sync_every_steps >= 1, "trainer.sync_every_steps", "at least 1 (1: every step)",
                self.sync_every_steps)
        require(self.diagnostics_every_steps >= 1, "trainer.diagnostics_every_steps", "at least 1 (1: every step)",
                self.diagnostics_every_steps)

    def _check_validation(self) -> None:
        require(self.validate_every >= 0, "trainer.validate_every", ">= 0 (0: never)", self.validate_every)
        require(self.early_stopping_patience >= 0, "trainer.early_stopping_patience", ">= 0 (0: off)",
                self.early_stopping_patience)
        require(self.early_stopping_min_delta >= 0, "trainer.early_stopping_min_delta", ">= 0",
                self.early_stopping_min_delta)
        if self.validates:
            _check(self.tracked_metric in VALIDATION_METRICS, "trainer.tracked_metric",
                   f"unknown metric {self.tracked_metric!r} (the validation computes {', '.join(VALIDATION_METRICS)})")

    @property
    def validates(self) -> bool:
        """Whether the run validates: both the period and the trial list are set."""
        return bool(self.validate_every and self.validation_trials)


@dataclass
class EvaluationConfig:
    trials: list[str] = field(default_factory=lambda: ["vox1_O"])
    batch_seconds: float = 300.0  # audio per extraction batch (sum over the batch)
    max_trim: float = 0.01  # files batched together are cut to the shortest; at most this fraction is dropped
    use_average: bool = True  # use the averaged weights when the run has them
    device: str = "auto"
    # Embedding extraction's precision: none (float32), bf16 or fp16 (CUDA only) autocast; outputs of a non-default
    # setting are named apart (_bf16, _fp16; docs/evaluation.md).
    amp: Literal["none", "bf16", "fp16"] = "none"
    # channels_last (NHWC) extraction for encoders that declare it (Fast ResNet-34): null = on CUDA only, true = on
    # CPU too (outputs then named _nhwc), false = never (on CUDA named _nchw).
    channels_last: bool | None = None
    # torch.compile the encoder for extraction (dynamic lengths): faster batches after a one-off compilation of
    # tens of seconds; outputs named _compiled.
    compile: bool = False

    def __post_init__(self) -> None:
        require(self.batch_seconds > 0, "evaluation.batch_seconds", "positive", self.batch_seconds)
        require(0 <= self.max_trim < 1, "evaluation.max_trim", "in [0, 1)", self.max_trim)
        check_device(self.device, "evaluation.device")
        if self.amp == "fp16" and self.device.split(":")[0] in ("cpu", "mps"):
            raise ConfigError(f"evaluation.amp: fp16 needs a CUDA evaluation.device, got {self.device!r}; use bf16")


@dataclass
class CollapseConfig:
    """When to call a run collapsed (review, section 6.1). The rules, and the thresholds they compare signals with,
    are declared by each method (`collapse_rules`, sslsv/methods/collapse.py; docs/methods.md lists them). A rule
    must hold for `patience_steps` consecutive checks before it is reported; metrics a method does not log are
    ignored."""

    enabled: bool = True
    action: Literal["warn", "stop"] = "warn"
    patience_steps: int = 50
    # Overrides of the method's thresholds by name, e.g. `collapse.thresholds.min_teacher_entropy=0.02`; null turns
    # a rule off. A name that the trained method's rules do not declare is an error when training starts.
    thresholds: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.patience_steps < 1:
            raise ConfigError("collapse.patience_steps: must be at least 1")
        for name, value in self.thresholds.items():
            if value is not None and (value != value or abs(value) == float("inf")):
                raise ConfigError(f"collapse.thresholds.{name}: must be a finite number or null")


@dataclass
class Spec:
    """A registry-typed section: the entry's name and its validated options."""

    name: str
    options: Any


@dataclass
class Config:
    encoder: Spec
    method: Spec
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    run_dir: str | None = None  # default: models/<config path under configs/ without .yml>

    def to_dict(self) -> dict:
        return _to_plain(self)


# What the trainer's validation (sslsv.evaluation.validation.trial_validator) reports, all lower-is-better; the
# names `trainer.tracked_metric` may take.
VALIDATION_METRICS = ("val/eer", "val/min_dcf_001", "val/min_dcf_005")

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

SPEC_REGISTRIES: dict[str, Registry] = {"encoder": ENCODERS, "method": METHODS}


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def require(condition: bool, key: str, requirement: str, value: Any) -> None:
    """Raise ConfigError "<key>: must be <requirement>, got <value>" unless `condition` holds. A non-finite number
    never passes: NaN fails every comparison by itself, but inf would pass `> 0`."""
    if not _finite(value):
        raise ConfigError(f"{key}: must be finite and {requirement}, got {value!r}")
    if not condition:
        raise ConfigError(f"{key}: must be {requirement}, got {value!r}")


def _finite(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def check_device(name: str, key: str) -> None:
    """The device's spelling (sslsv.distributed.parse_device); whether it exists here is checked when it is used."""
    try:
        parse_device(name)
    except DeviceError as error:
        raise ConfigError(f"{key}: {error}") from None


def read_yaml(path: str | Path, _chain: tuple = ()) -> dict:
    """Read a config file and merge the files named by its `base:` key (recursively, cycles rejected)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _chain:
        raise ConfigError(f"{path}: circular 'base:' chain: {' -> '.join(str(p) for p in _chain + (resolved,))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base: expected a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base) if not os.path.isabs(base) else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: base file not found: {base} (looked at {base_path})")
        merged = merge(merged, read_yaml(base_path, _chain + (resolved,)))
    return merge(merged, data)


def merge(base: dict, override: dict) -> dict:
    """Deep merge, `override` winning; lists and scalars are replaced, not merged.

    A registry section (`encoder:`, `method:`) whose `name` changes is replaced instead of merged: the previous
    entry's options do not apply to another entry (`base: [supervised.yml]` + `method: {name: os_kdft, ...}` starts
    from os_kdft's defaults). Dotted overrides follow the same rule (apply_overrides)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if key in SPEC_REGISTRIES and "name" in value and value["name"] != out[key].get("name"):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


Overrides = typing.Union[dict, list, None]


def override_list(overrides: Overrides, where: str = "overrides") -> list:
    """Overrides as a list of items for apply_overrides: a mapping -> [mapping], None -> [], a list unchanged."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [overrides]
    if isinstance(overrides, (list, tuple)):
        return list(overrides)
    raise ConfigError(f"{where}: expected a mapping of sections (e.g. {{trainer: {{epochs: 10}}}}) or a list of "
                      f"'key.subkey=value' strings, got {type(overrides).__name__} ({overrides!r})")


def dotted_to_mapping(overrides: list[str]) -> dict:
    """['trainer.epochs=3', 'method.name=byol'] -> {'trainer': {'epochs': 3}, 'method': {'name': 'byol'}}.

    Merging the mapping gives the same config as applying the strings in order, unless a string sets a registry
    section's `name` after options of that section (in the strings, the name change drops them)."""
    return apply_overrides({}, overrides)


def apply_overrides(data: dict, overrides: Overrides, where: str = "overrides") -> dict:
    """Apply overrides in order. An item is either a mapping of sections, deep-merged like a config file (merge),
    or an `a.b.c=value` string whose value is parsed as YAML (3 -> int, [1, 2] -> list, null -> None). `overrides`
    itself may be one mapping. Setting `encoder.name`/`method.name` to another entry drops the previous options."""
    data = copy.deepcopy(data)
    for item in override_list(overrides, where):
        if isinstance(item, dict):
            data = merge(data, item)
            continue
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"{where}: override {item!r} must look like key.subkey=value (or be a mapping)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        if parts[-1] == "name" and len(parts) == 2 and parts[0] in SPEC_REGISTRIES and node.get("name") != value:
            node.clear()  # switching encoder/method: the previous entry's options do not apply
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: Overrides = None, data: dict | None = None) -> Config:
    """Load, merge, override and validate a config (the registries discover their units on the first lookup).

    `overrides`: a list of `key.subkey=value` strings (and mappings), or one mapping merged over the file."""
    raw = read_yaml(path) if path is not None else copy.deepcopy(data or {})
    raw = apply_overrides(raw, overrides)
    config = build_config(raw)
    if config.run_dir is None and path is not None:
        config.run_dir = default_run_dir(path)
    check_run_dir(config.run_dir)
    print_warnings(config_warnings(config))
    return config


def default_run_dir(path: str | Path) -> str:
    """configs/dino/ecapa.yml -> models/dino/ecapa (the config's path below the nearest 'configs' folder)."""
    parts = Path(path).resolve().with_suffix("").parts
    if "configs" in parts:
        index = len(parts) - 1 - parts[::-1].index("configs")
        return str(Path("models", *parts[index + 1 :]))
    return str(Path("models", Path(path).stem))


def build_config(raw: dict) -> Config:
    raw = dict(raw)
    specs = {}
    for key, registry in SPEC_REGISTRIES.items():
        section = raw.pop(key, None)
        if section is None:
            raise ConfigError(f"{key}: missing section (needs at least '{key}.name'; one of {', '.join(registry.names())})")
        specs[key] = build_spec(section, key, registry)
    config = from_dict(Config, {**raw, **{k: None for k in specs}}, "", skip=set(specs))
    config.encoder, config.method = specs["encoder"], specs["method"]
    check_config(config)
    return config


# ----------------------------------------------------------------------------------------------------------------
# Rules across sections, and warnings
# ----------------------------------------------------------------------------------------------------------------


def check_config(config: Config) -> None:
    """The rules that involve several sections (each section checks its own keys when it is built)."""
    window = config.features.win_ms / 1000
    for index, group in enumerate(config.dataset.views):
        require(group.seconds >= window, f"dataset.views[{index}].seconds",
                f">= one analysis window (features.win_ms = {config.features.win_ms:g} ms)", group.seconds)


def check_run_dir(run_dir: str | None) -> None:
    if run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise ConfigError(f"run_dir: {run_dir} is a file, not a directory")


def config_warnings(config: Config) -> list[str]:
    """Settings that are valid but do nothing (or not what they seem to), as "<key>: <why>" lines."""
    return _validation_warnings(config.trainer) + _optimiser_warnings(config.trainer)


def _validation_warnings(cfg: TrainerConfig) -> list[str]:
    out = []
    if cfg.validate_every and not cfg.validation_trials:
        out.append(f"trainer.validate_every: {cfg.validate_every} does nothing without trainer.validation_trials "
                   "(no validation runs)")
    if cfg.early_stopping_patience and not cfg.validates:
        out.append(f"trainer.early_stopping_patience: {cfg.early_stopping_patience} does nothing without validation "
                   "(set trainer.validate_every and trainer.validation_trials)")
    if cfg.validates and cfg.tracked_mode == "max":
        out.append(f"trainer.tracked_mode: 'max' keeps the worst model: {cfg.tracked_metric} is lower-is-better")
    return out


def _optimiser_warnings(cfg: TrainerConfig) -> list[str]:
    out = []
    if cfg.optimizer != "sgd":
        if cfg.nesterov:
            out.append(f"trainer.nesterov: ignored by optimizer '{cfg.optimizer}' (only sgd has Nesterov momentum)")
        if cfg.sgd_momentum != _default(TrainerConfig, "sgd_momentum"):
            out.append(f"trainer.sgd_momentum: {cfg.sgd_momentum:g} is ignored by optimizer '{cfg.optimizer}' "
                       "(only sgd uses it)")
    if cfg.warmup_epochs and cfg.warmup_epochs >= cfg.epochs:
        out.append(f"trainer.warmup_epochs: {cfg.warmup_epochs:g} >= trainer.epochs ({cfg.epochs}): the run ends "
                   "during the warm-up, the rate never reaches trainer.lr")
    if cfg.min_lr and cfg.schedule in ("constant", "step"):
        out.append(f"trainer.min_lr: {cfg.min_lr:g} is ignored by schedule '{cfg.schedule}' (only cosine and "
                   "warmup_cosine use it)")
    if cfg.decay_norm_and_bias and not cfg.weight_decay:
        out.append("trainer.decay_norm_and_bias: does nothing with trainer.weight_decay 0")
    if cfg.grad_clip_mode != _default(TrainerConfig, "grad_clip_mode") and cfg.grad_clip is None:
        out.append(f"trainer.grad_clip_mode: '{cfg.grad_clip_mode}' does nothing without trainer.grad_clip")
    return out


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


_printed_warnings: set[str] = set()


def flatten_dict(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested sections as dotted keys (config comparisons, diffs)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def print_warnings(warnings: list[str]) -> None:
    """Print each warning once per process as "warning: ..." on stderr; only the first process under torchrun
    (RANK is read from the environment: the process group may not exist yet)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for warning in warnings:
        if warning not in _printed_warnings:
            _printed_warnings.add(warning)
            print(f"warning: {warning}", file=sys.stderr)


def build_spec(section: Any, key: str, registry: Registry) -> Spec:
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError(f"{key}.name: missing (one of {', '.join(registry.names())})")
    section = dict(section)
    name = section.pop("name")
    try:
        entry = registry.get(str(name), key=f"{key}.name")
    except RegistryError as error:
        raise ConfigError(str(error)) from None
    if entry.config is None:
        if section:
            raise ConfigError(f"{key}.{next(iter(section))}: {key} '{name}' takes no options")
        return Spec(name, None)
    return Spec(name, from_dict(entry.config, section, f"{key}."))


def from_dict(cls: type, data: Any, prefix: str, skip: set[str] = frozenset()) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and value type."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__} ({data!r})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            hint = closest(str(key), list(fields))
            suggestion = f"; did you mean '{prefix}{hint}'?" if hint else ""
            raise ConfigError(f"{prefix}{key}: unknown key{suggestion} (valid keys: {', '.join(fields)})")
    values = {}
    for name, value in data.items():
        if name in skip:
            continue
        default = _field_default(fields[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(default) and not isinstance(default, type):
            # a nested section given in part keeps the other keys of the field's default (e.g. W-MSE's projector
            # with out_dim 64), not those of the section's class
            value = _deep_merge(dataclasses.asdict(default), value)
        values[name] = convert(value, hints[name], f"{prefix}{name}")
    for name, f in fields.items():
        if name in skip or name in values:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: missing required key")
    if skip:
        for name in skip:
            values[name] = None
    try:
        return cls(**values)
    except ConfigError as error:
        # __post_init__ names keys from the section root; prefix them with the full path when nested in a spec
        message = str(error)
        if prefix and not message.startswith(prefix) and prefix.count(".") and "." not in message.split(":")[0]:
            message = prefix + message
        raise ConfigError(message) from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _deep_merge(base: dict, update: dict) -> dict:
    """`update` over `base`, mappings merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (_deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict)
                       else value)
    return merged


def convert(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not match {_type_name(hint)}")
    if origin is Literal:
        if value not in args:
            hint_name = closest(str(value), [str(a) for a in args])
            suggestion = f"; did you mean '{hint_name}'?" if hint_name else ""
            raise ConfigError(f"{key}: invalid value {value!r}{suggestion} (choose from {', '.join(map(str, args))})")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, Spec):
        options = _to_plain(obj.options) if obj.options is not None else {}
        return {"name": obj.name, **options}
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def save_config(config: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
