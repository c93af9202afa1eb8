"""The one trainer: any registered method on any registered encoder, on CPU, one GPU or many (torchrun).

It owns the optimiser, the schedule, mixed precision, DDP, checkpoints, validation and logs. It talks to the
method only through the interface in sslsv/methods/base.py and never knows which method it trains.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sslsv.audio.augment import AugmentationSources, apply_augmentation
from sslsv.config import VALIDATION_METRICS, Config, ConfigError, flatten_dict, save_config
from sslsv.data.dataset import EpochBatchSampler, TrainDataset, collate
from sslsv.data.manifest import Manifest, ManifestError, check_manifest, deep_check_manifest, read_manifest
from sslsv.data.shards import ShardSet, ShardStream, open_shards
from sslsv.encoders.base import SpeakerModel, build_speaker_model
from sslsv.encoders.checkpointing import enable_activation_checkpointing, release_freed_host_memory
from sslsv.methods.base import Batch, Method, TrainingInfo
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.distributed import resolve_device
from sslsv.runs import (RunError, RunLayout, RunLock, atomic_save, average_state_dicts, latest_intact_checkpoint,
                        non_finite_entries, prune, read_weights, remove_stale_temporaries, run_weights)
from sslsv.training.diagnostics import CollapseDetector
from sslsv.training.loggers import RunLoggers, check_available
from sslsv.training.schedules import learning_rate


def clip_gradients_per_parameter(parameters, max_norm: float) -> torch.Tensor:
    """Clip each parameter tensor's gradient to 2-norm `max_norm` on its own, in place, as DINO (Caron et al.,
    "Emerging Properties in Self-Supervised Vision Transformers", 2021, arXiv:2104.14294, `utils.clip_gradients`)
    and the review's authors (theolepage/sslsv, methods/DINO/DINO.py, `on_after_backward`) do:

        for each p: norm = ||p.grad||_2; coef = max_norm / (norm + 1e-6); if coef < 1: p.grad *= coef

    (`trainer.grad_clip_mode: per_parameter`). Fused norms, no host sync. Returns the largest of the per-tensor norms
    before clipping (NaN/Inf when a gradient is not finite), a 0-d tensor; 0 without gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack(torch._foreach_norm(grads, 2.0))
    coefficients = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # 1: left as is (x * 1.0 == x exactly)
    torch._foreach_mul_(grads, list(coefficients.unbind()))
    return norms.max()


class StepTimer:
    """Per-phase time of training steps, for benchmarks/bench_train.py: `trainer.timer = StepTimer(device)`. Off by
    default (`Trainer.timer` is None: each phase then costs one attribute test and a nullcontext).

    Each phase is timed in wall seconds, with the device synchronised on entry and exit when `synchronize` (CUDA
    runs asynchronously: without it a phase would only measure the kernel launches). Phases of the step:
    data_wait (the main process waiting for the loader's next batch: reading and cropping run in the workers),
    h2d (host -> device copies), augment, forward (inside it, `attach` adds features and encoder for every
    SpeakerModel of the method: the rest of forward is the method's heads and loss), backward, clip_check,
    sync (the step's all-reduce and, on the steps that read them, the device -> host copy of the pending steps'
    scalars: trainer.sync_every_steps), optimizer, after_step (EMA teachers, queues),
    diagnostics (collapse watch and the finiteness check of the state, on read steps) and logging. `steps` holds one
    {phase: seconds} dict per step, `on_step_end` (if set) is called after each step with its index."""

    def __init__(self, device: torch.device, synchronize: bool = True):
        self.device = device
        self.synchronize = synchronize and device.type == "cuda"
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.on_step_end: Callable[[int], None] | None = None

    def _sync(self) -> None:
        if self.synchronize:
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = {}
        if self.on_step_end is not None:
            self.on_step_end(len(self.steps))

    def attach(self, method: torch.nn.Module) -> list:
        """Time the front-end (`features`) and the encoder (`encoder`) of every SpeakerModel in `method` (student
        and teachers) with forward hooks; returns the hook handles (`handle.remove()` detaches them)."""
        handles = []
        for module in method.modules():
            if isinstance(module, SpeakerModel):
                for name, child in (("features", module.frontend), ("encoder", module.encoder)):
                    handles.append(child.register_forward_pre_hook(lambda *_, n=name: self._open(n)))
                    handles.append(child.register_forward_hook(lambda *_, n=name: self._close(n)))
        return handles

    def _open(self, name: str) -> None:
        self._sync()
        self.current[f"_{name}_start"] = time.perf_counter()

    def _close(self, name: str) -> None:
        self._sync()
        self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - self.current.pop(f"_{name}_start")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable data); the message says why and what is kept."""


class Preempted(BaseException):
    """SIGTERM or SIGUSR1 stopped training at a step boundary, after a checkpoint of that step was saved; rerunning
    the same command resumes from it. A BaseException, like KeyboardInterrupt: a request to stop, not an error, that
    no `except Exception` on the way up may swallow. The command line exits with status 75 (EX_TEMPFAIL)."""

    def __init__(self, message: str, checkpoint: Path):
        super().__init__(message)
        self.checkpoint = checkpoint


# Slurm sends SIGUSR1 (with --signal=USR1@<seconds>) before a time limit; schedulers send SIGTERM before a kill.
PREEMPTION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class PreemptionWatch:
    """While entered, SIGTERM and SIGUSR1 only record their name in `received`; the trainer reads it at its next
    step boundary. Handlers are installed from the main thread only (Python's rule; elsewhere the watch stays
    inactive) and the previous ones come back on exit."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionWatch:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for number in PREEMPTION_SIGNALS:
                self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be reinstalled; the default is the closest
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _record(self, number: int, frame) -> None:
        self.received = signal.Signals(number).name


def ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGUSR1: a signal sent to the whole process group (scancel, kill -TERM
    -PGID) must reach the trainer's watch, not kill a worker and break the loader before the checkpoint. Workers
    still end with the trainer (the loader stops them, or they notice that their parent is gone)."""
    for number in PREEMPTION_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def recording_ids(manifest) -> torch.Tensor | None:
    """(rows,) index of each row's recording, a distinct (speaker, session) pair (session names such as "ses01"
    repeat across speakers); None without sessions."""
    sessions = getattr(manifest, "sessions", None)
    if sessions is None:
        return None
    keys = list(zip(manifest.speakers, sessions))
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return torch.tensor([index[key] for key in keys], dtype=torch.long)


def build_method(config: Config, info: TrainingInfo) -> Method:
    speaker_model = build_speaker_model(config.encoder, config.features)
    entry = METHODS.get(config.method.name, key="method.name")
    return entry.obj(speaker_model, config.method.options, info)


def parameter_groups(module: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                     encoder: torch.nn.Module | None = None) -> list[dict]:
    """Weights with decay; norms and biases (1-D tensors) without, unless asked otherwise. Given the method's
    `encoder`, its parameters form groups of their own, marked {"encoder": True} (trainer.encoder_lr_scale and
    trainer.freeze_encoder_epochs apply to them), after the heads' groups (whose rate the logs report)."""
    in_encoder = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    groups = []
    for is_encoder in (False, True):
        decay, no_decay = [], []
        for param in module.parameters():
            if not param.requires_grad or (id(param) in in_encoder) != is_encoder:
                continue
            (no_decay if param.ndim <= 1 and not decay_norm_and_bias else decay).append(param)
        marks = {"encoder": True} if is_encoder else {}
        groups += [{"params": params, "weight_decay": decay_rate, **marks}
                   for params, decay_rate in ((decay, weight_decay), (no_decay, 0.0)) if params]
    return groups


def build_optimizer(config: Config, module: torch.nn.Module) -> torch.optim.Optimizer:
    cfg = config.trainer
    separate = cfg.encoder_lr_scale != 1 or cfg.freeze_encoder_epochs > 0
    groups = parameter_groups(module, cfg.weight_decay, cfg.decay_norm_and_bias,
                              getattr(module, "encoder", None) if separate else None)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.sgd_momentum, nesterov=cfg.nesterov)


@dataclass
class Position:
    """Where training stands: `epoch` in progress (0-based) and the next step within it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class PendingStep:
    """A trained step whose scalars are still on the device (`trainer.sync_every_steps`): where it was (1-based
    step and global step, 0-based epoch), the names of its metrics and its all-reduced scalars: loss, metrics, the
    gradients' non-finite flag and the stop request."""

    epoch: int
    step_in_epoch: int
    global_step: int
    names: list[str]
    values: torch.Tensor


@dataclass
class StepScalars:
    """A step's scalars as the host reads them (PendingStep after the device -> host copy)."""

    epoch: int
    step_in_epoch: int
    global_step: int
    loss: float
    metrics: dict[str, float]
    gradients_non_finite: bool
    stop_requested: bool


@dataclass
class LogWindow:
    """The steps since the last log line: the mean loss, and the mean of each metric over the steps that reported
    it (a diagnostic computed every `trainer.diagnostics_every_steps` steps is not averaged with zeros)."""

    losses: list[float] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, loss: float, metrics: dict[str, float]) -> None:
        self.losses.append(loss)
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {"train/loss": sum(self.losses) / len(self.losses),
                **{f"train/{k}": v / self.counts[k] for k, v in self.sums.items()}}


# Validation: the embedding model -> {"val/eer": ..., ...}; given by the caller (sslsv.evaluation builds one from
# trainer.validation_trials), so that training does not depend on evaluation.
Validator = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class InitialWeights:
    """Where a fresh run starts from instead of random weights (ignored when the run resumes a checkpoint).

    encoder: a state-dict file of the embedding model (model.pt, model_avg.pt, weights_e*.pt of another run); when
        given, it replaces `trainer.init_weights`.
    classifier: (C, D) rows for the method's classifier; `classifier_kind` "centroids" (class means, spread over
        sub-centres) or "classifier" (a previous classifier's weights, copied as they are).
    strict: whether every tensor must match (names and shapes); None: `trainer.init_strict`.
    """

    encoder: str | Path | None = None
    classifier: np.ndarray | torch.Tensor | None = None
    classifier_kind: str = "centroids"
    strict: bool | None = None


@dataclass
class LoadReport:
    """What `load_encoder_weights` loaded: the number of tensors copied and the names it left alone."""

    source: Path
    loaded: int
    total: int  # tensors of the model
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model: ignored
    mismatched: list[str] = field(default_factory=list)  # "name: (file shape) in the file vs (model shape)"

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line: '40 of 42 tensors loaded; missing (left as initialised): ...; unexpected (ignored): ...'."""
        parts = [f"{self.loaded} of {self.total} tensors loaded"]
        for label, names in (("missing (left as initialised)", self.missing), ("unexpected (ignored)", self.unexpected),
                             ("shape-mismatched (left as initialised)", self.mismatched)):
            if names:
                parts.append(f"{label}: {_names(names)}")
        return "; ".join(parts)


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_encoder_weights(model: torch.nn.Module, path: str | Path, strict: bool = True,
                         what: str = "trainer.init_weights") -> LoadReport:
    """Copy a weights file's tensors into `model` (an embedding model: encoder and its front-end).

    strict: every tensor of the model is in the file with its shape, and the file holds no other: otherwise a
        TrainingError (prefixed by `what`) names the missing, unexpected and shape-mismatched tensors, and nothing
        is loaded. Not strict: the tensors whose name and shape match are loaded, the others left as they are
        (TrainingError when none matches). A missing or corrupt file is a one-line RunError (sslsv.runs.read_weights).
    Returns the report of what was loaded."""
    path = Path(path)
    state = read_weights(path)
    expected = model.state_dict()
    report = LoadReport(path, 0, len(expected))
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    report.mismatched = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(v.shape)} in the model"
                         for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if strict and not report.complete:
        problems = [f"{label} {_names(names)}" for label, names in (
            ("missing", report.missing), ("unexpected", report.unexpected),
            ("shape mismatch:", report.mismatched)) if names]
        raise TrainingError(f"{what}: {path} does not match the encoder ({'; '.join(problems)}); set "
                            f"trainer.init_strict: false to load only the tensors that match")
    matching = {k: t for k, t in state.items() if k in expected and t.shape == expected[k].shape}
    if not matching:
        raise TrainingError(f"{what}: no tensor of {path} matches the encoder by name and shape "
                            f"({len(state)} in the file, {len(expected)} in the model)")
    model.load_state_dict(matching, strict=False)
    report.loaded = len(matching)
    return report


def resolve_init_weights(value: str | Path, key: str = "trainer.init_weights") -> Path:
    """A run directory's weights (sslsv.runs.run_weights: model_avg.pt, else model.pt, else the newest epoch's) or
    the weights file itself; ConfigError naming `key` when neither exists."""
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist (give a run directory or a weights file)")
    if path.is_dir():
        try:
            return run_weights(path)
        except RunError as error:
            raise ConfigError(f"{key}: {error}") from None
    return path


class Trainer:
    def __init__(self, config: Config, restart: bool = False, validate: Validator | None = None,
                 initial: InitialWeights | None = None):
        self.config = config
        self.layout = RunLayout(config.run_dir or "models/run")
        self.run_dir = self.layout.root
        self.checkpoint_dir = self.layout.checkpoints
        self.validate_fn = validate
        self.initial = initial
        self.restart = restart
        if config.trainer.validate_every and config.trainer.validation_trials and validate is None:
            raise TrainingError("trainer.validation_trials is set but this trainer was given no validation function "
                                "(build one with sslsv.evaluation.validation.trial_validator, or use build_trainer)")
        check_available(config.trainer.loggers)  # a missing wandb/mlflow is refused now, not after the set-up
        if config.trainer.init_weights and (restart or not self.layout.list_checkpoints()):
            resolve_init_weights(config.trainer.init_weights)  # checked before the manifest (a resume ignores it)
        self.device = resolve_device(config.trainer.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        distributed.init_distributed(self.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        if self.main:
            # A run another training holds is refused now, not after minutes of manifest checks; fit() holds the lock.
            with RunLock(self.run_dir):
                pass

        cfg = config.trainer
        data = config.dataset
        self.manifest = self._load_manifest()
        self.labels, self.speakers = self.manifest.speaker_ids()
        augmentation = None
        if config.augmentation.strategy != "none" and config.augmentation.probability > 0:
            augmentation = AugmentationSources(config.augmentation, data.data_root, config.features.sample_rate)
        try:
            if isinstance(self.manifest, ShardSet):  # a shard.list: streamed, the stream is its own sampler
                self.dataset = self.sampler = ShardStream(
                    self.manifest, data.views, config.features.sample_rate, data.batch_size, cfg.seed, augmentation,
                    self.rank, self.world, data.num_workers, cfg.max_steps_per_epoch)
                batching = {"batch_size": self.sampler.local_batch}
            else:
                self.dataset = TrainDataset(self.manifest, data.data_root, data.views, config.features.sample_rate,
                                            augmentation, data.positive_sampling)
                self.sampler = EpochBatchSampler(len(self.manifest), data.batch_size, cfg.seed, self.rank,
                                                 self.world, cfg.max_steps_per_epoch)
                batching = {"batch_sampler": self.sampler}
        except ValueError as error:
            raise TrainingError(f"{data.shards or data.manifest}: {error}") from None
        # Map-style data: the workers persist from epoch to epoch (no restart and re-import at each epoch; the
        # batch sampler runs in this process, so set_epoch still applies); a stream keeps its epoch in its workers.
        persistent = data.num_workers > 0 and not isinstance(self.dataset, ShardStream)
        self.loader = DataLoader(self.dataset, **batching, collate_fn=collate,
                                 num_workers=data.num_workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=persistent, worker_init_fn=ignore_preemption_signals)
        if persistent:
            # Fork the workers now, before the model, optimiser state and teachers exist: a worker forked later
            # keeps the pages those held at the fork, and every page this process then writes is copied for it
            # (copy-on-write). The first epoch's iter() reuses them (the batch sampler runs here, so the batches
            # prefetched meanwhile are dropped and nothing else depends on this early start).
            iter(self.loader)
        self.steps_per_epoch = self.sampler.steps
        self.total_steps = cfg.epochs * self.steps_per_epoch

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        info = TrainingInfo(len(self.speakers), len(self.manifest), self.steps_per_epoch, cfg.epochs,
                            recording_ids(self.manifest))
        self.method = build_method(config, info)
        self.collapse = CollapseDetector(config.collapse, self.method.collapse_rules, self.method.entropy_bounds)
        if self.method.uses_labels and len(self.speakers) < 2:
            raise TrainingError(f"{data.manifest}: method '{config.method.name}' needs speaker labels")
        if self.world > 1:
            self.method = self.method.distributed_batch_norm(self.device)  # MoCo keeps per-device BN (shuffle)
        self.method.to(self.device)
        # 2-D encoders that declare it run channels_last (NHWC) on CUDA by default. A CPU keeps the contiguous layout
        # unless trainer.channels_last is true: NHWC was 0.81x the CPU time there, but it changes the order of float
        # sums, and the demo's documented figures (a bit-reproducible CPU run) would move with it; PyTorch 2.11's CPU
        # backward of channels_last convolutions under bf16 autocast also crashes on small shapes.
        channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        if channels_last and getattr(self.method.encoder.encoder, "channels_last", False):
            self.method.to(memory_format=torch.channels_last)
        if cfg.activation_checkpointing:  # after the BN conversion and the move to the device; before DDP and compile
            enable_activation_checkpointing(self.method)
        self.release_host_memory = cfg.activation_checkpointing and self.device.type == "cpu"
        self.model: torch.nn.Module = self.method
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.method, device_ids=ids)
        self.optimizer = build_optimizer(config, self.method)
        self.scheduled_lr = config.trainer.lr  # the schedule's rate at the last step (logs; encoder groups may differ)
        # per view position: whether the step augments it (`augment: false` groups reach the method clean)
        self.view_augmented = [group.augment for group in config.dataset.views for _ in range(group.count)]
        if cfg.compile:  # opt-in: torch.compile
            self.compile_model()
        self.amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.position = Position()
        self.history: list[dict] = []
        self.best: float | None = None
        self.stale_validations = 0
        # Opened by fit() once the run is locked (a second training into a locked run must write nothing), on rank 0.
        self.loggers: RunLoggers | None = None
        self.logger_state: dict = {}  # the trackers' run ids, from the resumed checkpoint
        # Training time of the run before this process (from the checkpoint) and when this process's fit began.
        self.elapsed_before = 0.0
        self.session_start: float | None = None
        self.last_validation: dict[str, float] = {}  # this epoch's validation metrics, for its summary line
        self.last_improved = False
        self.preemption = PreemptionWatch()
        self.timer: StepTimer | None = None  # per-phase timing (benchmarks/bench_train.py); None: off
        self._pending: list[PendingStep] = []  # steps whose scalars the host has not read (trainer.sync_every_steps)

    # ------------------------------------------------------------------------------------------------ set-up

    def _load_manifest(self) -> Manifest | ShardSet:
        data = self.config.dataset
        if data.shards:  # written by `sslsv shards`: checked by its checksums (`--verify`), not file by file
            if data.positive_sampling != "same_utterance":
                raise ConfigError(f"dataset.positive_sampling: '{data.positive_sampling}' needs random access to "
                                  f"other recordings; shards (dataset.shards) stream 'same_utterance' only")
            return open_shards(Path(data.data_root) / data.shards, self.config.features.sample_rate)
        path = Path(data.data_root) / data.manifest
        manifest = read_manifest(path)
        if data.check_manifest or data.check_manifest_deep:
            # Every rank checks its own view of the file system: a missing mount on one node must not hang others.
            check_manifest(manifest, data.data_root, self.config.features.sample_rate, data.min_seconds)
        if data.check_manifest_deep:
            report = deep_check_manifest(manifest, data.data_root, self.config.features.sample_rate, data.min_seconds,
                                         progress=self.main and self.config.trainer.progress_bar)
            if report.errors:
                raise ManifestError(report.summary())
        return manifest

    # ------------------------------------------------------------------------------------------------ state

    def _state(self) -> dict:
        return {
            "position": vars(self.position).copy(),
            "method": self.method.state_dict(),
            "method_extra": self.method.extra_state(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {"step": self.position.global_step, "steps_per_epoch": self.steps_per_epoch},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "history": self.history,
            "best": self.best,
            "stale_validations": self.stale_validations,
            "collapse": self.collapse.state_dict(),
            "config": self.config.to_dict(),
            "elapsed_s": self.elapsed(),
            "loggers": self.loggers.state_dict() if self.loggers is not None else self.logger_state,
        }

    def _load_state(self, state: dict) -> None:
        self.method.load_state_dict(state["method"], strict=True)
        self.method.load_extra_state(state.get("method_extra", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.position = Position(**state["position"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.history = state.get("history", [])
        self.best = state.get("best")
        self.stale_validations = state.get("stale_validations", 0)
        self.collapse.load_state_dict(state.get("collapse", {}))  # a resumed run keeps its collapse streaks
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.logger_state = dict(state.get("loggers", {}))

    def elapsed(self) -> float:
        """Seconds of training of the run since its first start, resumes included (the time between the last
        checkpoint and a kill is lost with the steps it trained)."""
        if self.session_start is None:
            return self.elapsed_before
        return self.elapsed_before + time.monotonic() - self.session_start

    def save_checkpoint(self) -> Path:
        """Write the resumable state at the current position (rank 0), refusing a state with NaN/Inf; older
        checkpoints are pruned only once this finite one is on disk. Returns its path."""
        if self._pending:  # the loop saves right after a read; a save never comes before its steps' checks
            self._drain(before_optimizer_step=False)
        path = self.layout.checkpoint(self.position.epoch, self.position.global_step)
        state = self._state() if self.main else None
        self._refuse_non_finite(state, path)
        if self.main:
            atomic_save(state, path)
            prune(self.layout.list_checkpoints(), self.config.trainer.keep_checkpoints)
        distributed.barrier()
        return path

    def resume(self) -> Path | None:
        """Load the newest readable checkpoint (a corrupt newer one is skipped with a warning); its path, or None
        when the run has none."""
        found = latest_intact_checkpoint(self.layout, warn=self._say)
        if found is None:
            return None
        path, state = found
        self._warn_config_changes(state.get("config", {}))
        self._load_state(state)
        return path

    def _initial_weights(self) -> InitialWeights | None:
        """The fresh run's starting point: the one given to the Trainer, with `trainer.init_weights` as its encoder
        when it names none."""
        cfg = self.config.trainer
        initial = self.initial
        if cfg.init_weights and (initial is None or initial.encoder is None):
            encoder = resolve_init_weights(cfg.init_weights)
            initial = InitialWeights(encoder) if initial is None else dataclasses.replace(initial, encoder=encoder)
        elif cfg.init_weights and self.main:
            print(f"{self.run_dir}: trainer.init_weights ({cfg.init_weights}) is replaced by {initial.encoder}")
        return initial

    def _apply_initial_weights(self, initial: InitialWeights) -> None:
        """A fresh run's starting point: the encoder from a weights file (strict unless `initial.strict` or
        `trainer.init_strict` say otherwise), the classifier from given rows. A momentum teacher of the encoder
        (MoCo, BYOL, DINO) starts from the same weights (theta' = theta)."""
        if initial.encoder is not None:
            strict = self.config.trainer.init_strict if initial.strict is None else initial.strict
            what = "trainer.init_weights" if self.initial is None or self.initial.encoder is None \
                else f"cannot initialise {self.run_dir}"
            try:
                report = load_encoder_weights(self.method.encoder, initial.encoder, strict, what)
            except RunError as error:
                raise TrainingError(f"{what}: {error}") from None
            for online, teacher in getattr(self.method, "momentum_pairs", list)():
                if online is self.method.encoder:
                    teacher.load_state_dict(online.state_dict())
            if self.main:
                detail = "" if report.complete and strict else f" ({report.summary()})"
                print(f"{self.run_dir}: initialised the encoder from {initial.encoder}{detail}")
        if initial.classifier is not None:
            rows = torch.as_tensor(np.asarray(initial.classifier))
            self.method.init_classifier(rows, initial.classifier_kind, seed=self.config.trainer.seed)
            if self.main:
                source = "the previous classifier" if initial.classifier_kind == "classifier" else "class centroids"
                print(f"{self.run_dir}: initialised the classifier from {source} ({len(rows)} rows)")

    def _warn_config_changes(self, saved: dict) -> None:
        current, before = flatten_dict(self.config.to_dict()), flatten_dict(saved)
        # a key newer than the checkpoint (an older sslsv wrote it) cannot have been changed since
        changed = sorted(k for k in current.keys() | before.keys() if k in before and current.get(k) != before.get(k))
        if changed and self.main:
            print(f"warning: the config differs from the checkpoint's in: {', '.join(changed)}")

    # ------------------------------------------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train (or resume) to the end. One training per run directory (RunLock, held by rank 0); SIGTERM and
        SIGUSR1 save a checkpoint at the next step boundary and raise Preempted."""
        with self._run_lock(), self.preemption:
            status = "failed"
            try:
                summary = self._fit()
                status = "finished"
                return summary
            except Preempted:
                status = "preempted"
                raise
            finally:
                self._stop_loader_workers()
                self._close_loggers(status)

    def _stop_loader_workers(self) -> None:
        """Persistent loader workers end with fit (not with the Trainer object): their memory is given back."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    def _fit(self) -> dict:
        cfg = self.config.trainer
        self.session_start = time.monotonic()
        self._prepare_run_dir()
        resumed = self.resume()
        if resumed and self._finished():
            return self._already_finished()
        if resumed:
            self._say(f"resuming from {resumed} (epoch {self.position.epoch + 1}, step {self.position.step_in_epoch})")
            if cfg.init_weights:
                self._say(f"trainer.init_weights ({cfg.init_weights}) is ignored: the run resumes its checkpoint")
            if self.main:
                self._drop_metrics_after(self.position.global_step)
        else:
            initial = self._initial_weights()
            if initial is not None:
                self._apply_initial_weights(initial)
        if self.main:
            save_config(self.config, self.layout.config)
            self._open_loggers(resumed=resumed is not None)
        stopped_early = False
        while self.position.epoch < cfg.epochs and not stopped_early:
            started = time.monotonic()
            trained = self.train_epoch()
            epoch = self.position.epoch  # just finished (0-based)
            self.position.epoch += 1
            self.position.step_in_epoch = 0
            self._save_epoch_weights(epoch)
            self.last_validation = {}
            if cfg.validate_every and cfg.validation_trials and (epoch + 1) % cfg.validate_every == 0:
                stopped_early = self.validate(epoch)
            checkpoint = self.save_checkpoint()
            self._say(self._epoch_line(epoch, trained, time.monotonic() - started))
            more = self.position.epoch < cfg.epochs and not stopped_early
            if more and self._any_rank(self.preemption.received is not None):  # a signal during the epoch's end
                self._stop_preempted(checkpoint)
        return self.finish(stopped_early)

    @contextmanager
    def _run_lock(self) -> Iterator[None]:
        """Rank 0 holds the run's lock for the whole fit; every rank learns whether it could be taken."""
        lock = RunLock(self.run_dir) if self.main else None
        refused = None
        if lock is not None:
            try:
                lock.acquire()
            except RunError as error:
                refused = str(error)
        refused = distributed.broadcast_object(refused)
        if refused is not None:
            raise RunError(refused)
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def _open_loggers(self, resumed: bool) -> None:
        """metrics.jsonl and the trackers of `trainer.loggers` (rank 0), started with the config and the names of
        the metrics a table of runs shows."""
        cfg = self.config.trainer
        self.loggers = RunLoggers(self.layout.metrics, self.layout.tensorboard, self.run_dir, cfg.loggers,
                                  self.logger_state)
        metrics = ["train/loss"]
        if cfg.validates and self.validate_fn is not None:
            metrics += [*VALIDATION_METRICS, f"best/{cfg.tracked_metric}"]
        self.loggers.start(self.config.to_dict(), metrics, resumed)

    def _close_loggers(self, status: str) -> None:
        """At the end of fit, however it ends: an error closing a tracker after a failure is only a warning."""
        if self.loggers is None:
            return
        loggers, self.loggers = self.loggers, None
        try:
            loggers.close(status)
        except Exception as error:  # noqa: BLE001
            if status == "finished":
                raise
            print(f"warning: closing the experiment trackers failed: {error}", file=sys.stderr)

    def _epoch_line(self, epoch: int, trained: dict, seconds: float) -> str:
        """'epoch 3/10  loss 4.1234  lr 9.51e-04  412 samples/s  val EER 31.20 %  minDCF 0.8123  38 s'."""
        parts = [f"epoch {epoch + 1}/{self.config.trainer.epochs}"]
        if trained["steps"]:
            parts += [f"loss {trained['loss']:.4f}", f"lr {trained['lr']:.2e}",
                      f"{trained['samples_per_s']:.0f} samples/s"]
        metrics = self.last_validation
        if "val/eer" in metrics:
            parts.append(f"val EER {metrics['val/eer']:.2f} %")
            if "val/min_dcf_001" in metrics:
                parts.append(f"minDCF {metrics['val/min_dcf_001']:.4f}")
        else:
            parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
        if metrics and self.last_improved:
            parts[-1] += " (best)"
        parts.append(_duration(seconds))
        return "  ".join(parts)

    def _prepare_run_dir(self) -> None:
        """Under the lock: --restart's deletions, and the temporaries a killed save left behind."""
        if self.main:
            if self.restart:
                # The old run's logs go with its checkpoints: appended to, they would mix two runs in one metrics
                # file (and in `sslsv diagnostics` plots and the collapse report).
                for old in (self.layout.checkpoints, self.layout.tensorboard):
                    if old.exists():
                        shutil.rmtree(old)
                for old in (self.layout.metrics, self.layout.summary):
                    old.unlink(missing_ok=True)
            for path in remove_stale_temporaries(self.run_dir):
                print(f"removed {path}: left by a save that was interrupted")
        distributed.barrier()

    def _finished(self) -> bool:
        """The resumed checkpoint is the end of the run: every epoch trained, or early stopping triggered."""
        cfg = self.config.trainer
        patience = cfg.early_stopping_patience
        return self.position.epoch >= cfg.epochs or bool(patience and self.stale_validations >= patience)

    def _already_finished(self) -> dict:
        """A finished run trains nothing again. Killed while writing its final files, it writes them now."""
        stopped_early = self.position.epoch < self.config.trainer.epochs
        summary = self._read_summary()
        if summary is None or summary.get("steps") != self.position.global_step:
            return self.finish(stopped_early)
        self._say(f"run already finished ({self.position.epoch} epochs, {self.position.global_step} steps): "
                  f"{self.run_dir}; use --restart to train again")
        return {**summary, "already_finished": True}

    def _read_summary(self) -> dict | None:
        try:
            return json.loads(self.layout.summary.read_text())
        except (OSError, ValueError):
            return None

    def _drop_metrics_after(self, step: int) -> None:
        """The interrupted run logged past the checkpoint being resumed: those steps are trained again, so their
        lines (and a line cut short by a kill) go, instead of appearing twice. Rewritten atomically."""
        path = self.layout.metrics
        if not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_at_or_before(line, step)]
        if len(kept) == len(lines):
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.writelines(line if line.endswith("\n") else line + "\n" for line in kept)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def train_epoch(self) -> dict:
        """Train to the end of the epoch in progress. Returns what this process trained of it: steps, mean loss,
        the last learning rate and samples/s over the epoch's training time.

        The host reads the steps' scalars (loss, metrics, non-finite checks, stop request) only when `train_step`
        drains them (`trainer.sync_every_steps`, log steps, saves, the epoch's end, a signal); each drained step is
        then taken in order, as if it had been read at its own step."""
        cfg = self.config.trainer
        epoch = self.position.epoch
        self.sampler.set_epoch(epoch, self.position.step_in_epoch)
        self.method.train()
        self.method.on_epoch_start(epoch)
        bar = tqdm(total=self.steps_per_epoch, initial=self.position.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (self.main and cfg.progress_bar), dynamic_ncols=True, leave=False)
        window = LogWindow()
        tick = start = time.perf_counter()
        epoch_loss, epoch_steps = 0.0, 0
        batches = iter(self.loader)
        while True:
            with self._phase("data_wait"):
                batch = next(batches, None)
            if batch is None:
                break
            try:
                drained = self.train_step(batch)
            except Exception:
                # Steps trained since the last read may explain the failure (NaN weights): their check speaks first.
                self._drain_pending_before_error()
                raise
            self.position.step_in_epoch += 1
            self.position.global_step += 1
            bar.update(1)
            preempted = False
            for step in drained:
                with self._phase("diagnostics"):
                    self._watch_collapse(step)
                window.add(step.loss, step.metrics)
                epoch_loss, epoch_steps = epoch_loss + step.loss, epoch_steps + 1
                preempted = preempted or step.stop_requested
            # train_step drains at every log step, checkpoint step and the epoch's last step: when one is due here,
            # every step trained so far has been read
            log_due = self.position.global_step % cfg.log_every_steps == 0 \
                or self.position.step_in_epoch == self.steps_per_epoch
            if log_due:
                with self._phase("diagnostics"):
                    self._check_state_finite()
            if log_due or preempted:  # preempted: the steps since the last line are logged, not lost
                elapsed = time.perf_counter() - tick
                means = window.means()
                record = {
                    "epoch": epoch + 1, "step": self.position.global_step, "train/loss": means.pop("train/loss"),
                    "train/lr": self.scheduled_lr,
                    "train/samples_per_s": len(window.losses) * self.config.dataset.batch_size / max(elapsed, 1e-9),
                    **means,
                }
                with self._phase("logging"):
                    self._log(record)
                    bar.set_postfix(loss=f"{record['train/loss']:.4f}", lr=f"{record['train/lr']:.2e}",
                                    rate=f"{record['train/samples_per_s']:.0f}/s")
                window, tick = LogWindow(), time.perf_counter()
            if self.timer is not None:
                self.timer.end_step()
            if preempted:
                bar.close()
                self._stop_preempted(self.save_checkpoint())
            if cfg.checkpoint_every_steps and self.position.global_step % cfg.checkpoint_every_steps == 0 \
                    and self.position.step_in_epoch < self.steps_per_epoch:
                self.save_checkpoint()
        if self._pending:  # the loader ended before the epoch's last step: its steps are read before anything else
            with self._phase("sync"):
                for step in self._drain(before_optimizer_step=False):
                    self._watch_collapse(step)
                    epoch_loss, epoch_steps = epoch_loss + step.loss, epoch_steps + 1
        bar.close()
        seconds = time.perf_counter() - start
        return {"steps": epoch_steps, "loss": epoch_loss / max(epoch_steps, 1),
                "lr": self.scheduled_lr,
                "samples_per_s": epoch_steps * self.config.dataset.batch_size / max(seconds, 1e-9)}

    def train_step(self, batch: dict) -> list[StepScalars]:
        """One optimiser step. Its loss, metrics, gradient check and stop request (averaged over ranks: one
        all-reduce per step) stay on the device until a read is due (`_read_due`); then every pending step is read
        in one device -> host copy, checked (the first non-finite loss or gradients stops training, before this
        step's optimiser step) and returned, oldest first. Returns [] when nothing was read."""
        cfg = self.config.trainer
        # Dropout and any other global-RNG use are keyed by step and rank: identical after a resume.
        torch.manual_seed(cfg.seed * 1_000_003 + self.position.global_step * 7919 + self.rank)
        lr = self.scheduled_lr = learning_rate(cfg, self.position.global_step, self.steps_per_epoch)
        encoder_frozen = self.position.global_step < cfg.freeze_encoder_epochs * self.steps_per_epoch
        for group in self.optimizer.param_groups:
            group["lr"] = lr * (0.0 if encoder_frozen else cfg.encoder_lr_scale) if group.get("encoder") else lr
        with self._phase("h2d"):
            views = [v.to(self.device, non_blocking=True) for v in batch["views"]]
            plans = [{k: t.to(self.device, non_blocking=True) for k, t in plan.items()} for plan in batch["plans"]]
            inputs = Batch(views, batch["labels"].to(self.device, non_blocking=True),
                           batch["indices"].to(self.device, non_blocking=True))
        if plans:
            with self._phase("augment"):
                inputs.views = [apply_augmentation(v, **plan) if augment else v
                                for v, plan, augment in zip(views, plans, self.view_augmented)]
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                  enabled=self.amp_dtype is not None)
        self.method.diagnostics_due = self._diagnostics_due()
        try:
            with self._phase("forward"), autocast:
                output = self.model(inputs)
        finally:
            self.method.diagnostics_due = True  # any other caller of forward gets every metric
        if self.release_host_memory:  # checkpointing on a CPU: the backward's peak without the forward's freed heap
            release_freed_host_memory()
        with self._phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(output.loss).backward()
        self.method.before_optimizer_step(self.position.epoch)
        if encoder_frozen:  # no update and no optimiser state (momentum, Adam moments) from the warm-up
            for group in self.optimizer.param_groups:
                if group.get("encoder"):
                    for param in group["params"]:
                        param.grad = None
        with self._phase("clip_check"):
            gradients_non_finite = self._clip_and_check_gradients()
        with self._phase("sync"):
            asked = self.preemption.received is not None
            stop_requested = torch.full((), float(asked), device=self.device)
            # One all-reduce per step (a device operation under NCCL) for the loss, every metric, the gradients'
            # finiteness and the stop request together; the host reads them when a read is due.
            names = list(output.metrics)
            scalars = [output.loss.detach().float()] + [output.metrics[k].detach().float().reshape(()) for k in names]
            values = distributed.all_reduce_mean(torch.stack(scalars + [gradients_non_finite, stop_requested]))
            self._pending.append(PendingStep(self.position.epoch, self.position.step_in_epoch + 1,
                                             self.position.global_step + 1, names, values))
            drained = self._drain(before_optimizer_step=True) if self._read_due(asked) else []
        with self._phase("optimizer"):
            scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = scale_before is None or self.scaler.get_scale() >= scale_before  # fp16: skipped on inf grads
        if stepped:
            with self._phase("after_step"):
                self.method.after_optimizer_step((self.position.global_step + 1) / max(self.total_steps, 1))
        return drained

    def _read_due(self, asked: bool) -> bool:
        """Whether the host reads the pending steps at the step in progress (before its optimiser step): every
        `trainer.sync_every_steps` steps, at a log step, a checkpoint step and the epoch's last step (everything
        that logs or saves comes right after a read), and, in a single process, as soon as a signal has come
        (`asked`). Under DDP the stop request travels in the scalars and every rank stops at the next read: the
        reads fall on the same steps on every rank."""
        cfg = self.config.trainer
        step, in_epoch = self.position.global_step + 1, self.position.step_in_epoch + 1
        return (step % cfg.sync_every_steps == 0 or step % cfg.log_every_steps == 0
                or in_epoch == self.steps_per_epoch
                or bool(cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0)
                or (asked and self.world == 1))

    def _diagnostics_due(self) -> bool:
        """Whether the step in progress computes the costly diagnostics (`Method.diagnostics_due`): every
        `trainer.diagnostics_every_steps` steps and at every log step, so that every logged line has them."""
        cfg = self.config.trainer
        step, in_epoch = self.position.global_step + 1, self.position.step_in_epoch + 1
        return (step % cfg.diagnostics_every_steps == 0 or step % cfg.log_every_steps == 0
                or in_epoch == self.steps_per_epoch)

    def _read_pending(self, pending: list[PendingStep]) -> list[float]:
        """The one device -> host copy of a read: every pending step's scalars, concatenated."""
        return torch.cat([p.values for p in pending]).tolist()

    def _drain(self, before_optimizer_step: bool) -> list[StepScalars]:
        """Read the pending steps (one copy) and check them in order: the first step whose loss or gradients are
        not finite stops training, named by its own epoch, step and global step. `before_optimizer_step`: called
        by train_step, before the optimiser step of the newest pending step (its gradients are still there)."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        values = self._read_pending(pending)
        steps, offset = [], 0
        for p in pending:
            n = len(p.names)
            chunk, offset = values[offset : offset + n + 3], offset + n + 3
            step = StepScalars(p.epoch, p.step_in_epoch, p.global_step, chunk[0], dict(zip(p.names, chunk[1 : 1 + n])),
                               chunk[-2] > 0, chunk[-1] > 0)
            # the step in progress, before its optimiser step: its gradients are still there, nothing of it applied
            current = before_optimizer_step and p is pending[-1]
            stopped_at = None if current else pending[-1].global_step
            if not math.isfinite(step.loss):
                self._fail_non_finite(f"loss is {step.loss}", step, stopped_at)
            if step.gradients_non_finite:
                names = ", ".join(self._non_finite_gradients()) if current else (
                    "parameter names unknown: that step's gradients were gone when the host read its check; "
                    "trainer.sync_every_steps=1 names them")
                self._fail_non_finite(f"gradients are not finite ({names})", step, stopped_at)
            steps.append(step)
        return steps

    def _drain_pending_before_error(self) -> None:
        """A step failed with steps still unread: read them first, so that a non-finite step before the failure
        is reported (TrainingError) instead of the error it caused; otherwise the failure goes on as it is."""
        if self._pending:
            self._drain(before_optimizer_step=False)

    def compile_model(self) -> None:
        """torch.compile the module the step runs (the method, under DDP its wrapper); the weights stay shared with
        `self.method`, so checkpoints, EMA updates and evaluation are unchanged. The first steps are slower
        (compilation); measured gains: docs/benchmarks.md."""
        self.model = torch.compile(self.model)

    def _phase(self, name: str):
        """A timed phase of the step when a StepTimer is attached (benchmarks), else a no-op context."""
        return nullcontext() if self.timer is None else self.timer.phase(name)

    def _clip_and_check_gradients(self) -> torch.Tensor:
        """Clip when asked (`trainer.grad_clip`, `trainer.grad_clip_mode`); a 0-d device tensor, 1 when a gradient
        holds NaN/Inf, without a host sync. The norms that clipping computes anyway are the check (the global norm,
        or every tensor's norm with per_parameter); otherwise one fused max-abs (it cannot overflow, unlike a
        2-norm). Under fp16 the GradScaler skips steps with inf/NaN gradients and lowers its scale: not a failure."""
        cfg = self.config.trainer
        norm = None
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            if cfg.grad_clip_mode == "per_parameter":
                norm = clip_gradients_per_parameter(self.method.parameters(), cfg.grad_clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_(self.method.parameters(), cfg.grad_clip)
        if self.scaler.is_enabled():
            return torch.zeros((), device=self.device)
        if norm is None:
            grads = [p.grad for p in self.method.parameters() if p.grad is not None]
            if not grads:
                return torch.zeros((), device=self.device)
            norm = torch.stack(torch._foreach_norm(grads, math.inf)).max()
        return (~torch.isfinite(norm)).float().to(self.device)  # clip_grad_norm_ of no gradients is on the CPU

    def _non_finite_gradients(self, limit: int = 3) -> list[str]:
        """Names of the first parameters with a NaN/Inf gradient (for the error message only)."""
        found = [name for name, p in self.method.named_parameters()
                 if p.grad is not None and not torch.isfinite(p.grad).all()]
        return found[:limit] + ([f"{len(found) - limit} more"] if len(found) > limit else [])

    def _check_state_finite(self) -> None:
        """Parameters and buffers (BN statistics, EMA teachers, queues, centres) can turn NaN/Inf in an optimiser
        step or a forward pass while the loss stays finite (a learning rate far too high): checked at every log
        step, so that no run trains for an epoch on them. Ranks agree before any raises."""
        bad = non_finite_entries({"method": self.method.state_dict()})
        if self._any_rank(bool(bad)):
            self._fail_non_finite_state(bad, "nothing was saved")

    def _refuse_non_finite(self, state: dict | None, path: Path) -> None:
        """Before writing `state` (rank 0's) to `path`: every rank raises when it holds NaN/Inf."""
        bad = distributed.broadcast_object(non_finite_entries(state) if self.main and state is not None else [])
        if bad:
            self._fail_non_finite_state(bad, f"{path} was not written")

    def _any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on one."""
        if self.world == 1:
            return flag
        return distributed.all_reduce_mean(torch.tensor(float(flag), device=self.device)).item() > 0

    def _watch_collapse(self, step: StepScalars) -> None:
        """One read step's metrics (already averaged over ranks, so every rank takes the same decision), judged at
        its own step number. With collapse.action=stop, the checkpoint is saved at the current position: the
        steps read together with this one (trainer.sync_every_steps) were checked finite and are in it."""
        message = self.collapse.check(step.global_step, step.metrics)
        if message is None:
            return
        if self.main:
            tqdm.write(f"warning: {message}")
            self._log({"epoch": step.epoch + 1, "step": step.global_step, "collapse": message})
        if self.collapse.should_stop:
            self.save_checkpoint()
            where = "this step" if step.global_step == self.position.global_step \
                else f"global step {self.position.global_step}"
            raise TrainingError(f"{message} (collapse.action=stop; the checkpoint at {where} is kept)")

    def _fail_non_finite(self, what: str, step: StepScalars, stopped_at: int | None) -> NoReturn:
        """`stopped_at` None: the step is the one in progress, before its optimiser step (nothing of it is applied
        or saved). Otherwise (trainer.sync_every_steps > 1) the host read it when it read global step `stopped_at`:
        the optimiser steps in between ran in memory, but nothing was saved since the read before the step."""
        if stopped_at is None:
            stopped = "before the optimiser step"
        else:
            stopped = (f"at global step {stopped_at} (the host reads the loss and gradient checks every "
                       f"trainer.sync_every_steps={self.config.trainer.sync_every_steps} steps) and nothing from "
                       f"global step {step.global_step} on was saved")
        raise TrainingError(
            f"{what} at epoch {step.epoch + 1}, step {step.step_in_epoch} (global step {step.global_step}); "
            f"training stopped {stopped}, {self._last_good()}. {self._causes()}"
        )

    def _fail_non_finite_state(self, names: list[str], unsaved: str) -> NoReturn:
        raise TrainingError(
            f"non-finite values (NaN/Inf) at {self._where()} (global step {self.position.global_step}) in "
            f"{', '.join(names) or 'the state of another rank'}; training stopped and {unsaved}, {self._last_good()}. "
            f"{self._causes()}"
        )

    def _last_good(self) -> str:
        found = self.layout.list_checkpoints()
        if not found:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is kept: {found[-1]} (rerun with a fix to resume from it)"

    def _causes(self) -> str:
        return (f"Usual causes: learning rate too high (trainer.lr={self.config.trainer.lr}), no gradient clipping "
                f"(trainer.grad_clip), fp16 overflow (try trainer.amp=bf16), or silent/corrupt audio.")

    def _where(self) -> str:
        """'epoch E step S': the last trained step, S steps into 1-based epoch E."""
        if self.position.step_in_epoch == 0 and self.position.epoch > 0:
            return f"epoch {self.position.epoch} step {self.steps_per_epoch}"
        return f"epoch {self.position.epoch + 1} step {self.position.step_in_epoch}"

    def _stop_preempted(self, checkpoint: Path) -> NoReturn:
        received = self.preemption.received or "a signal to another process of the run"
        message = (f"preempted by {received} at {self._where()}: checkpoint saved to {checkpoint}; "
                   f"rerun the same command to resume")
        self._say(message, file=sys.stderr)
        raise Preempted(message, checkpoint)

    # ------------------------------------------------------------------------------------------------ outputs

    def _say(self, message: str, file=None) -> None:
        """Print on rank 0 only: the other ranks would repeat it."""
        if self.main:
            print(message, file=file or sys.stdout, flush=True)

    def _log(self, record: dict) -> None:
        """One record to metrics.jsonl and every tracker (rank 0), stamped with the UTC time and the run's
        training time: {"epoch", "step", "time", "elapsed_s", ...the record's values}."""
        if not self.main:
            return
        stamped = {key: record[key] for key in ("epoch", "step") if key in record}
        stamped["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        stamped["elapsed_s"] = round(self.elapsed(), 3)
        stamped.update((key, value) for key, value in record.items() if key not in stamped)
        if self.loggers is None:  # outside fit(): metrics.jsonl only
            RunLoggers(self.layout.metrics, self.layout.tensorboard, self.run_dir, []).log(stamped)
        else:
            self.loggers.log(stamped)

    def _save_epoch_weights(self, epoch: int) -> None:
        path = self.layout.epoch_weights(epoch + 1)
        weights = self.method.embedding_model().state_dict() if self.main else None
        self._refuse_non_finite(weights, path)
        if self.main:
            atomic_save(weights, path)
            prune(self.layout.list_epoch_weights(), self.config.trainer.average_last)

    def validate(self, epoch: int) -> bool:
        """EER on the validation trials; returns True when early stopping triggers."""
        cfg = self.config.trainer
        stop = False
        if self.main:
            model = self.method.embedding_model()
            was_training = model.training
            model.eval()
            metrics = dict(self.validate_fn(model))
            model.train(was_training)
            self.history.append({"epoch": epoch + 1, **metrics})
            value = metrics.get(cfg.tracked_metric)
            if value is None:
                raise TrainingError(f"trainer.tracked_metric: '{cfg.tracked_metric}' is not one of {', '.join(metrics)}")
            delta = cfg.early_stopping_min_delta
            better = self.best is None or (
                value < self.best - delta if cfg.tracked_mode == "min" else value > self.best + delta)
            if better:
                self.best, self.stale_validations = value, 0
                # the weights _save_epoch_weights has just checked for NaN/Inf (validation changes nothing)
                atomic_save(model.state_dict(), self.layout.model_best)
            else:
                self.stale_validations += 1
            # the same names in metrics.jsonl and every tracker; best/<tracked metric> for the hparams table
            self._log({"epoch": epoch + 1, "step": self.position.global_step, **metrics,
                       f"best/{cfg.tracked_metric}": self.best})
            self.last_validation, self.last_improved = metrics, better
            stop = bool(cfg.early_stopping_patience and self.stale_validations >= cfg.early_stopping_patience)
            if stop:
                print(f"early stopping: {cfg.tracked_metric} has not improved for {self.stale_validations} validations")
            self.method.train()
        return bool(distributed.broadcast_object(stop))

    def finish(self, stopped_early: bool) -> dict:
        weights = self.method.embedding_model().state_dict() if self.main else None
        self._refuse_non_finite(weights, self.layout.model)
        files = self.layout.list_epoch_weights()[-self.config.trainer.average_last :] if self.main else []
        average = average_state_dicts(files) if files else None
        self._refuse_non_finite(average, self.layout.model_average)
        summary = {}
        if self.main:
            atomic_save(weights, self.layout.model)
            if average is not None:
                atomic_save(average, self.layout.model_average)
            summary = {"epochs": self.position.epoch, "steps": self.position.global_step,
                       "averaged_epochs": len(files), "stopped_early": stopped_early, "validation": self.history,
                       # the maxima of the method's entropy signals: `sslsv diagnostics` draws its collapse lines
                       "entropy_bounds": {k: float(v) for k, v in dict(self.method.entropy_bounds).items()}}
            self.layout.summary.write_text(json.dumps(summary, indent=2))
        distributed.barrier()
        return summary


def _duration(seconds: float) -> str:
    """38 s, 12 min 05 s, 3 h 07 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _logged_at_or_before(line: str, step: int) -> bool:
    """Whether a metrics.jsonl line is a whole record of a step up to `step` (a record without a step is kept)."""
    try:
        record = json.loads(line)
    except ValueError:  # cut short by a kill
        return False
    return isinstance(record, dict) and record.get("step", step) <= step


