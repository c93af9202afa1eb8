"""The run directory: every file name a run writes, and the one place that writes, finds, reads and loads them.

    <run>/config.yml                               the resolved config, written when training starts
    <run>/checkpoints/checkpoint_eEEEE_sSSSSSSSS.pt resumable states (method, optimiser, RNG, position)
    <run>/checkpoints/weights_eEEEE.pt             embedding-model weights after each epoch (the last few are kept)
    <run>/model.pt                                 final weights; model_avg.pt: mean of the last epochs' weights;
    <run>/model_best.pt                            weights of the best validation score
    <run>/metrics.jsonl, tensorboard/, training_summary.json

Nothing else in the package spells these names: code asks a `RunLayout` for a path. Every write goes through
`atomic_save`, so a kill or a full disk never leaves a half-written file in place of a good one.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from sslsv.config import Config, ConfigError, build_config
from sslsv.encoders.base import SpeakerModel, build_speaker_model

CHECKPOINT_PATTERN = re.compile(r"checkpoint_e(\d+)_s(\d+)\.pt$")
WEIGHTS_PATTERN = re.compile(r"weights_e(\d+)\.pt$")


class RunError(RuntimeError):
    """A run directory or run file that cannot be used, with the reason."""


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run directory."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def model_average(self) -> Path:
        return self.root / "model_avg.pt"

    @property
    def model_best(self) -> Path:
        return self.root / "model_best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def summary(self) -> Path:
        return self.root / "training_summary.json"

    def checkpoint(self, epoch: int, step: int) -> Path:
        return self.checkpoints / f"checkpoint_e{epoch:04d}_s{step:08d}.pt"

    def epoch_weights(self, epoch: int) -> Path:
        """Weights after epoch `epoch` (1-based)."""
        return self.checkpoints / f"weights_e{epoch:04d}.pt"

    def list_checkpoints(self) -> list[Path]:
        return list_checkpoints(self.checkpoints)

    def list_epoch_weights(self) -> list[Path]:
        return list_epoch_weights(self.checkpoints)


# ------------------------------------------------------------------------------------------------ files


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Resumable checkpoints in `folder`, oldest first (ordered by global step)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def list_epoch_weights(folder: str | Path) -> list[Path]:
    """Per-epoch weight files in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := WEIGHTS_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def is_resumable_checkpoint(path: str | Path) -> bool:
    return CHECKPOINT_PATTERN.search(Path(path).name) is not None


def prune(paths: list[Path], keep: int) -> None:
    """Delete all but the `keep` last of `paths`."""
    for path in paths[: max(len(paths) - keep, 0)]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - name the file whatever went wrong
        raise RunError(f"cannot read checkpoint {path}: {error}") from None


def average_state_dicts(paths: list[Path]) -> dict:
    """Element-wise mean of floating-point tensors (parameters and BN statistics); integer buffers from the last."""
    states = [load_checkpoint(p) for p in paths]
    out = {}
    for key, last in states[-1].items():
        if torch.is_floating_point(last):
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


# ------------------------------------------------------------------------------------------------ runs


def latest_run(models_dir: str | Path = "models") -> Path:
    """The most recently trained run under `models_dir` (by the time of its newest weights)."""
    candidates = []
    for config in Path(models_dir).rglob(RunLayout(".").config.name):
        run = RunLayout(config.parent)
        weights = [p for p in (run.model_average, run.model) if p.exists()] + run.list_epoch_weights()
        if weights:
            candidates.append((max(p.stat().st_mtime for p in weights), run.root))
    if not candidates:
        raise RunError(f"no trained run found under {models_dir}/ (train one with: python train.py CONFIG)")
    return max(candidates)[1]


def is_run_dir(path: str | Path) -> bool:
    return RunLayout(path).config.is_file()


def load_run_config(run_dir: str | Path) -> Config:
    path = RunLayout(run_dir).config
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory: {path} is missing")
    try:
        return build_config(yaml.safe_load(path.read_text()))
    except (ConfigError, yaml.YAMLError) as error:
        raise RunError(f"{path}: {error}") from None


def run_weights(run_dir: str | Path, use_average: bool = True, best: bool = False) -> Path:
    """The weights to use: model_best.pt (best: the best validation score, saved by the trainer), else
    model_avg.pt (use_average), model.pt, or the newest epoch's weights."""
    run = RunLayout(run_dir)
    if best:
        if not run.model_best.exists():
            raise RunError(f"{run.model_best} is missing: the trainer saves it at each validation that "
                           f"improves trainer.tracked_metric (set trainer.validation_trials and validate_every)")
        return run.model_best
    for path in ([run.model_average] if use_average else []) + [run.model]:
        if path.exists():
            return path
    epochs = run.list_epoch_weights()
    if epochs:
        return epochs[-1]
    raise RunError(f"{run_dir} has no weights yet ({run.model_average.name}, {run.model.name} or "
                   f"{run.checkpoints.name}/weights_e*.pt)")


def load_weights(model: torch.nn.Module, path: str | Path, what: str = "the run's encoder") -> None:
    """Load a state dict file into `model` strictly, with an error naming the file when they do not match."""
    state = load_checkpoint(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{path} does not match {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_model(run_dir: str | Path, use_average: bool = True, device: str | torch.device = "cpu",
               random_weights: bool = False, best: bool = False) -> tuple[SpeakerModel, Config, str]:
    """The run's embedding model in eval mode, its config, and which weights were loaded."""
    config = load_run_config(run_dir)
    torch.manual_seed(config.trainer.seed)  # the random-weights baseline is the run's own initialisation
    model = build_speaker_model(config.encoder, config.features)
    source = "random weights"
    if not random_weights:
        path = run_weights(run_dir, use_average, best)
        load_weights(model, path)
        source = str(path)
    return model.to(device).eval(), config, source
