"""Supervised training on pseudo-labels: (sub-center) AAM-softmax with loss-gated learning (review section 3.2).

Loss, review Eq. (12) (AAM-softmax, Deng et al. 2019), with the sub-center variant of Deng et al., "Sub-center
ArcFace", ECCV 2020 (used by IDLAB, VoxSRC-20): each class has K sub-centres and a sample's cosine to a class is the
largest of its sub-centres' (heads.AAMSoftmax; K = 1 is the plain AAM-softmax of supervised.py).

Loss-gated learning (LGL, Tao et al., ICASSP 2022; DLG, Han et al., Interspeech 2022): a sample whose loss exceeds the
gate threshold is assumed to carry a wrong pseudo-label and is left out of the batch mean

    L = sum_i g_i L_i / max(1, sum_i g_i),   g_i = [L_i <= threshold]

"fixed": a given threshold; "gmm": at the start of every epoch the threshold is refitted by a 2-component Gaussian
mixture on the previous epoch's per-sample losses (fit_loss_gate below). The gate is open
(every sample kept) during the first `loss_gate_warmup_epochs` epochs. Per-sample losses are the mean over the
views of an utterance; under DDP each rank records its own samples and the sums are all-reduced before the fit.
The per-sample loss table is plain state (extra_state), not a buffer, so DDP does not broadcast rank 0's copy.

LMFT (large-margin fine-tuning, IDLAB) is a config: longer crops, a larger margin, a small learning rate
(configs/multistage/dino_ecapa.yml, last round).

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sslsv.config import ConfigError, require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views
from sslsv.methods.heads import AAMSoftmax
from sslsv.registry import METHODS
from sslsv import distributed


@dataclass
class PseudoSupervisedConfig:
    scale: float = 30.0  # s in Eq. (12) (review section 4.3)
    margin: float = 0.2  # m in Eq. (12); LMFT uses a larger one (e.g. 0.5)
    subcenters: int = 1  # K sub-centres per class (Sub-center ArcFace uses 3); 1: plain AAM-softmax
    loss_gate: Literal["none", "fixed", "gmm"] = "none"
    loss_gate_threshold: float | None = None  # fixed gate (LGL); required when loss_gate=fixed
    loss_gate_warmup_epochs: int = 1  # epochs with the gate open (the model must first fit the clean majority)

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError("method.scale: must be positive")
        if not 0 <= self.margin < math.pi / 2:
            raise ConfigError("method.margin: must be in [0, pi/2)")
        if self.subcenters < 1:
            raise ConfigError("method.subcenters: must be at least 1")
        if self.loss_gate == "fixed" and self.loss_gate_threshold is None:
            raise ConfigError("method.loss_gate_threshold: required when method.loss_gate is 'fixed'")
        require(self.loss_gate_threshold is None or self.loss_gate_threshold >= 0, "method.loss_gate_threshold",
                ">= 0 or null (per-sample losses are never negative)", self.loss_gate_threshold)
        if self.loss_gate_warmup_epochs < 0:
            raise ConfigError("method.loss_gate_warmup_epochs: must be >= 0")


UNSEEN = -1.0  # sample_losses entry of an utterance not drawn this epoch


def gate_mask(losses: torch.Tensor, threshold: float) -> torch.Tensor:
    """g_i = [L_i <= threshold], (B,) bool."""
    return losses.detach() <= threshold


@METHODS.register("pseudo_supervised", config=PseudoSupervisedConfig)
class PseudoSupervised(Method):
    """(Sub-center) AAM-softmax on pseudo-labels with loss-gated learning (fixed or GMM gate)."""

    uses_labels = True
    collapse_rules = ()  # logs no embedding signal: the (pseudo-)labels guard against collapse

    def __init__(self, encoder, cfg: PseudoSupervisedConfig, info: TrainingInfo):
        super().__init__(encoder)
        if info.num_speakers < 2:
            raise ConfigError(f"method.name: pseudo_supervised needs at least 2 classes, the manifest has {info.num_speakers}")
        self.cfg = cfg
        self.classifier = AAMSoftmax(encoder.embed_dim, info.num_speakers, cfg.scale, cfg.margin, cfg.subcenters)
        # This epoch's per-utterance losses; UNSEEN marks utterances not drawn yet (a loss is never negative, and a
        # finite marker keeps checkpoints finite: the trainer refuses to save NaN).
        self.sample_losses = torch.full((info.num_samples,), UNSEEN)
        self.losses_epoch = -1  # the epoch that sample_losses belongs to
        self.epoch = 0
        self.threshold = float("inf") if cfg.loss_gate != "fixed" else float(cfg.loss_gate_threshold)

    def init_classifier(self, rows: torch.Tensor, kind: str = "centroids", seed: int = 0) -> None:
        self.classifier.initialise(rows, kind, seed)

    # ------------------------------------------------------------------------------------------------ gate

    def gate_active(self) -> bool:
        return self.cfg.loss_gate != "none" and self.epoch >= self.cfg.loss_gate_warmup_epochs

    def on_epoch_start(self, epoch: int) -> None:
        """Refit the GMM gate from the previous epoch's per-sample losses (DLG), then start a new table.

        When resuming in the middle of an epoch the table and threshold restored from the checkpoint are kept.
        """
        self.epoch = epoch
        if self.losses_epoch == epoch:
            return
        if self.cfg.loss_gate == "gmm" and self.losses_epoch == epoch - 1 and epoch >= self.cfg.loss_gate_warmup_epochs:
            self.threshold = self.fit_gate()
        self.sample_losses = torch.full_like(self.sample_losses, UNSEEN)
        self.losses_epoch = epoch

    def fit_gate(self) -> float:
        device = self.classifier.weight.device
        table = self.sample_losses.to(device)
        seen = table >= 0
        totals = torch.stack([torch.where(seen, table, torch.zeros_like(table)), seen.float()])
        totals = distributed.all_reduce_sum(totals)  # each sample was seen by one rank
        values, counts = totals[0].cpu(), totals[1].cpu()
        losses = (values / counts.clamp(min=1))[counts > 0].numpy()
        return fit_loss_gate(losses)

    # ------------------------------------------------------------------------------------------------ step

    def forward(self, batch: Batch) -> StepOutput:
        ys = torch.cat(encode_views(self.encoder, batch.views))  # (V*B, D); views of equal length share one pass
        labels = batch.labels.repeat(len(batch.views))  # (V*B,)
        losses, correct = self.classifier(ys, labels, reduction="none")  # (V*B,), (V*B,)
        keep = gate_mask(losses, self.threshold) if self.gate_active() else torch.ones_like(losses, dtype=torch.bool)
        loss = (losses * keep).sum() / keep.sum().clamp(min=1)
        self.record_losses(batch.indices, losses.detach().view(len(batch.views), -1).mean(dim=0))
        kept = keep.sum().float()
        return StepOutput(loss, {
            "accuracy": correct.float().mean().detach(),
            "kept": kept.detach(),
            "dropped_fraction": (1.0 - kept / len(losses)).detach(),
        })

    @torch.no_grad()
    def record_losses(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        if self.sample_losses.device != losses.device:
            self.sample_losses = self.sample_losses.to(losses.device)  # kept on the device: no sync per step
        self.sample_losses[indices] = losses.float()

    def extra_state(self) -> dict:
        return {"sample_losses": self.sample_losses.detach().cpu().clone(), "losses_epoch": self.losses_epoch,
                "threshold": self.threshold}

    def load_extra_state(self, state: dict) -> None:
        if "sample_losses" in state:
            self.sample_losses = state["sample_losses"].clone()
            self.losses_epoch = int(state["losses_epoch"])
            self.threshold = float(state["threshold"])


def fit_loss_gate(losses: np.ndarray, seed: int = 0, resolution: int = 4097) -> float:
    """Dynamic loss-gate threshold from per-sample losses (2-component GMM, DLG).

    Args:
        losses: (N,) per-sample losses of the previous epoch (NaN entries ignored).
    Returns:
        The loss above which a sample is more likely to belong to the high-loss component; +inf (keep everything)
        when fewer than 10 finite losses are given or the two components coincide.
    """
    from sklearn.mixture import GaussianMixture

    values = np.asarray(losses, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 10 or np.ptp(values) <= 1e-12:
        return float("inf")
    gmm = GaussianMixture(n_components=2, covariance_type="full", random_state=seed, max_iter=200, tol=1e-5)
    gmm.fit(values[:, None])
    means = gmm.means_[:, 0]
    low, high = int(np.argmin(means)), int(np.argmax(means))
    if means[high] - means[low] <= 1e-9:
        return float("inf")
    grid = np.linspace(means[low], means[high], resolution)
    posterior_high = gmm.predict_proba(grid[:, None])[:, high]
    above = np.nonzero(posterior_high >= 0.5)[0]
    return float(grid[above[0]] if len(above) else means[high])
