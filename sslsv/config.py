"""Typed, strict configuration: YAML files with inheritance, dotted command-line overrides, validation.

A config file is a mapping whose sections fill the dataclasses below. `base:` names one or more files (relative
to the file that names them) whose contents are merged first, later ones winning. The `encoder:` and `method:`
sections are typed by the dataclass that the named registry entry declares. Every key is checked: an unknown key,
a wrong type or an unknown registry name raises ConfigError naming the dotted key and the closest valid one.
"""
from __future__ import annotations

import copy
import re
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sslsv.registry import ENCODERS, METHODS, Registry, RegistryError, closest


class ConfigError(ValueError):
    """A config problem, with the dotted key that caused it."""


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FeaturesConfig:
    """Log-mel front-end (review, section 4.1: 25 ms Hamming window, 10 ms hop, 40 mels; 80 for DINO)."""

    sample_rate: int = 16000
    n_mels: int = 40
    n_fft: int = 512
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 20.0
    f_max: float | None = 7600.0
    preemphasis: float = 0.97  # 0 disables
    instance_norm: bool = True  # per-utterance mean/variance normalisation of every mel band

    def __post_init__(self) -> None:
        _check(self.sample_rate > 0, "features.sample_rate", "must be positive")
        _check(self.n_mels > 0, "features.n_mels", "must be positive")
        _check(0 <= self.preemphasis < 1, "features.preemphasis", "must be in [0, 1)")
        _check(self.win_ms > 0 and self.hop_ms > 0, "features.win_ms", "window and hop must be positive")


@dataclass
class ViewGroup:
    """`count` views, each a random crop of `seconds` of the same utterance."""

    count: int = 2
    seconds: float = 2.0

    def __post_init__(self) -> None:
        _check(self.count >= 1, "dataset.views.count", "must be at least 1")
        _check(self.seconds > 0, "dataset.views.seconds", "must be positive")


@dataclass
class DatasetConfig:
    data_root: str = "data"  # manifest, trial lists and audio paths are relative to it
    manifest: str = "voxceleb2/train.csv"
    # Views produced per utterance, in order: the first group is the "global" one (e.g. DINO: 2 x 4 s, 4 x 2 s).
    views: list[ViewGroup] = field(default_factory=lambda: [ViewGroup(2, 2.0)])
    batch_size: int = 256  # global batch: divided across ranks under torchrun
    num_workers: int = 4
    check_manifest: bool = True  # verify every file before training (missing, empty, unreadable, rate, length)
    # Shortest usable file. Files shorter than a view are repeated to fill it (never zero-padded); set this to the
    # longest view to forbid that.
    min_seconds: float = 0.5
    # How the views of one sample are drawn: crops of the same utterance, or (analysis only) crops of different
    # recordings of the same speaker, which needs labels in the manifest.
    positive_sampling: Literal["same_utterance", "supervised"] = "same_utterance"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "dataset.batch_size", "must be at least 1")
        _check(self.num_workers >= 0, "dataset.num_workers", "must be >= 0")
        _check(len(self.views) >= 1, "dataset.views", "needs at least one view group")


@dataclass
class AugmentationConfig:
    """On-device augmentation (review, section 4.1): reverberation, then noise / music / babble at a sampled SNR."""

    strategy: Literal["none", "reverb", "noise", "reverb+noise", "all"] = "reverb+noise"
    probability: float = 1.0  # chance that a view is augmented at all
    musan_dir: str | None = "musan"  # relative to data_root; sub-folders noise/, music/, speech/
    rir_dir: str | None = "RIRS_NOISES/simulated_rirs"  # relative to data_root; any tree of audio files
    snr_noise: tuple[float, float] = (0.0, 15.0)
    snr_music: tuple[float, float] = (5.0, 15.0)
    snr_speech: tuple[float, float] = (13.0, 20.0)
    babble_speakers: tuple[int, int] = (3, 7)  # number of speech files summed into one babble
    rir_max_seconds: float = 1.0  # RIR tails longer than this are cut

    def __post_init__(self) -> None:
        _check(0 <= self.probability <= 1, "augmentation.probability", "must be in [0, 1]")
        for name in ("snr_noise", "snr_music", "snr_speech", "babble_speakers"):
            low, high = getattr(self, name)
            _check(low <= high, f"augmentation.{name}", "needs low <= high")


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
    grad_clip: float | None = None  # max global gradient norm
    amp: Literal["none", "fp16", "bf16"] = "none"
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
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "trainer.epochs", "must be at least 1")
        _check(self.lr > 0, "trainer.lr", "must be positive")
        _check(self.keep_checkpoints >= 1, "trainer.keep_checkpoints", "must be at least 1")
        _check(self.average_last >= 1, "trainer.average_last", "must be at least 1")
        _check(self.grad_clip is None or self.grad_clip > 0, "trainer.grad_clip", "must be positive or null")


@dataclass
class EvaluationConfig:
    trials: list[str] = field(default_factory=lambda: ["vox1_O"])
    batch_seconds: float = 300.0  # audio per extraction batch (sum over the batch)
    max_trim: float = 0.01  # files batched together are cut to the shortest; at most this fraction is dropped
    use_average: bool = True  # use the averaged weights when the run has them
    device: str = "auto"


@dataclass
class CollapseConfig:
    """When to call a run collapsed (review, section 6.1). A rule must hold for `patience_steps` consecutive
    checks before it is reported; metrics a method does not log are ignored."""

    enabled: bool = True
    action: Literal["warn", "stop"] = "warn"
    patience_steps: int = 50
    # Complete collapse: near-constant embeddings (healthy: about 1/sqrt(D), 0.044 at D = 512).
    min_embedding_std: float = 0.002
    # Dimensional collapse: embeddings on (about) a line.
    min_effective_rank: float = 1.5
    # DINO without centering: one-hot teacher (healthy teacher entropy at tau_t = 0.04 is ~0.07 nats, Table 9).
    min_teacher_entropy: float = 0.01
    # DINO without centering, read from the batch: every sample's teacher distribution peaks on the same outputs,
    # so the entropy of the batch's mean teacher distribution is low (healthy: the samples spread over many).
    min_teacher_usage_entropy: float = 0.5
    # DINO without centering, on the way to one-hot: the teacher has sharpened (its entropy is at most
    # `teacher_sharpened_fraction` of log(out_dim)) but identically for every sample, i.e. the information its output
    # carries about the sample, usage entropy - per-sample entropy, is under `min_teacher_information_ratio` of the
    # nats it has lost from uniform, log(out_dim) - teacher entropy (near 1 for a healthy one-hot teacher).
    teacher_sharpened_fraction: float = 0.75
    min_teacher_information_ratio: float = 0.05
    # Uniform collapse: an entropy within this fraction of its maximum (log of the number of candidates /
    # prototypes, given by the method's `entropy_bounds`), e.g. MoCo without negatives -> log|Q|, DINO without
    # sharpening -> log(out_dim). Not lower: a healthy MoCo demo run sits at up to 0.993 of log(|Q| + 1).
    max_entropy_ratio: float = 0.995
    # MoCo: queued negatives much further from the queries than the current step's other keys (cosine units), the
    # shortcut of a drifting key encoder (no momentum encoder, section 6.1). Healthy demo runs stay below 0.01.
    max_negative_gap: float = 0.1
    # Clustering methods: all samples in a few clusters.
    min_cluster_entropy: float = 0.5
    # Constant teacher and student outputs (null: not checked, a converged run also has a small KL).
    min_kl_teacher_student: float | None = None

    def __post_init__(self) -> None:
        if self.patience_steps < 1:
            raise ConfigError("collapse.patience_steps: must be at least 1")
        if not 0 < self.max_entropy_ratio <= 1:
            raise ConfigError("collapse.max_entropy_ratio: must be in (0, 1]")
        if not 0 < self.teacher_sharpened_fraction < 1:
            raise ConfigError("collapse.teacher_sharpened_fraction: must be in (0, 1)")


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


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

SPEC_REGISTRIES: dict[str, Registry] = {"encoder": ENCODERS, "method": METHODS}


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


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
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base) if not os.path.isabs(base) else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: base file not found: {base} (looked at {base_path})")
        merged = merge(merged, read_yaml(base_path, _chain + (resolved,)))
    return merge(merged, data)


def merge(base: dict, override: dict) -> dict:
    """Deep merge; a registry section whose `name` changes replaces the base section instead of merging."""
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


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings; values are parsed as YAML (3 -> int, [1, 2] -> list, null -> None)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.subkey=value")
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> Config:
    """Load, merge, override and validate a config (the registries discover their units on the first lookup)."""
    raw = read_yaml(path) if path is not None else copy.deepcopy(data or {})
    raw = apply_overrides(raw, overrides or [])
    config = build_config(raw)
    if config.run_dir is None and path is not None:
        config.run_dir = default_run_dir(path)
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
    return config


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
