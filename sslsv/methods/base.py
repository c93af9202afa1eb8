"""The method interface: what every SSL framework (and the supervised baseline) gives the trainer.

A method owns the encoder it trains (a SpeakerModel: waveform -> representation), its heads, and any teacher,
queue or centre. The trainer calls `forward(batch)` (one training step's loss), then the hooks below around the
optimiser step; it never looks inside. Heads are not part of the encoder, so encoder checkpoints stay clean.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sslsv import distributed
from sslsv.config import ConfigError
from sslsv.encoders.base import SpeakerModel
from sslsv.methods.collapse import DEFAULT_RULES, CollapseRule


@dataclass
class Batch:
    """One training batch on the device.

    views: augmented waveforms, one (B, S_v) tensor per view, in the order of the config's view groups
        (e.g. DINO: 2 global then 4 local crops); lengths may differ between groups.
    labels: (B,) speaker indices from the manifest. Self-supervised methods must not read them.
    indices: (B,) manifest rows (for per-sample state such as DeepCluster assignments).
    """

    views: list[torch.Tensor]
    labels: torch.Tensor
    indices: torch.Tensor


@dataclass
class StepOutput:
    """A training step's scalar loss and detached scalar metrics (logged by the trainer)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainingInfo:
    """What a method may need to know about the run when it is built."""

    num_speakers: int  # distinct speakers in the manifest (label-using methods only)
    num_samples: int  # utterances in the manifest
    steps_per_epoch: int
    epochs: int
    # (num_samples,) recording index of each manifest row (distinct (speaker, session) pairs), for diagnostics that
    # need it (SSPS's pseudo-positive accuracy); never a training signal. None: the manifest has no sessions.
    recordings: torch.Tensor | None = None


class Method(nn.Module):
    """Base class. Subclasses implement `forward`; hooks default to no-ops."""

    uses_labels: bool = False  # True: trains on manifest speaker labels (supervised, pseudo-label rounds)
    # The collapse rules over the signals this method logs (sslsv.methods.collapse), applied by the trainer's
    # collapse watch; by default the two of `method_metrics` (embedding_std, effective_rank).
    collapse_rules: tuple[CollapseRule, ...] = DEFAULT_RULES

    def __init__(self, encoder: SpeakerModel):
        super().__init__()
        self.encoder = encoder
        # Maximum value of each entropy metric the method logs (e.g. log of the number of candidates), read by its
        # NearMaximum collapse rules to recognise "uniform" collapse; may be filled on the first step.
        self.entropy_bounds: dict[str, float] = {}
        # Whether this forward computes the costly diagnostics too (an SVD: `method_metrics(z, full=...)`). The
        # trainer sets it False on the steps between `trainer.diagnostics_every_steps` and sets it back afterwards;
        # every other caller (evaluation, tests, the compute profile) gets the full metrics.
        self.diagnostics_due: bool = True

    def forward(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def embedding_model(self) -> SpeakerModel:
        """The network whose representations are evaluated (e.g. DINO: the teacher)."""
        return self.encoder

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (e.g. freezing a head layer for the first epoch)."""

    def before_optimizer_step(self, epoch: int) -> None:
        """Called after backward and before the optimiser step (e.g. cancel gradients of a frozen layer)."""

    def after_optimizer_step(self, progress: float) -> None:
        """Called after each real optimiser step; progress in [0, 1] over the whole run (EMA, queues)."""

    def init_classifier(self, rows: torch.Tensor, kind: str = "centroids", seed: int = 0) -> None:
        """Start the method's classifier from given rows instead of random ones (pseudo-label rounds): `kind`
        "centroids" for (C, D) class means, "classifier" for a previous classifier's weights of the same shape.
        Methods without a classifier refuse."""
        raise ConfigError(f"method '{type(self).__name__}' has no classifier to initialise from {kind} "
                          f"(use method pseudo_supervised, or classifier_init: random)")

    def min_batch_size(self) -> int:
        """The smallest batch a training forward accepts (W-MSE whitens slices of w_size samples); used by the
        compute profile (sslsv.training.cost), which runs the forward on a small random batch."""
        return 2

    def sync_batch_norm(self) -> bool:
        """Under DDP, whether every batch norm of the method uses the global batch's statistics (the default, as the
        authors' trainer's `ddp_sync_batchnorm: true`). False keeps per-device statistics (MoCo's shuffled BN)."""
        return True

    def distributed_batch_norm(self, device: torch.device) -> Method:
        """The method as DDP wraps it, called by the trainer when there are several processes: every batch norm
        made global-batch (nn.SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere) when `sync_batch_norm()`,
        else unchanged (per-device batch norm)."""
        return distributed.convert_batch_norm(self, device) if self.sync_batch_norm() else self

    def extra_state(self) -> dict:
        """Non-parameter, non-buffer state to checkpoint (most state should be buffers instead)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


def two_views(batch: Batch, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two views of a batch, or an error naming the method and the config key."""
    if len(batch.views) < 2:
        raise ValueError(f"{method} needs 2 views per utterance (dataset.views)")
    return batch.views[0], batch.views[1]


def encode_views(network, views) -> list[torch.Tensor]:
    """network(view) for every view, in order, with one pass per group of views of the same shape: batch norm then
    sees every crop of a length at once (as one process on the global batch does). Views of different lengths go
    through separate passes (e.g. DINO's global and local crops)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault(tuple(view.shape), []).append(index)
    outputs: list[torch.Tensor | None] = [None] * len(views)
    for indices in groups.values():
        joined = views[indices[0]] if len(indices) == 1 else torch.cat([views[i] for i in indices])
        for i, output in zip(indices, network(joined).chunk(len(indices))):
            outputs[i] = output
    return outputs
