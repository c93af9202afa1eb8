"""Supervised training on pseudo-labels: (sub-center) AAM-softmax with loss-gated learning (review section 3.2).

Loss, review Eq. (12) (AAM-softmax, Deng et al. 2019), with the sub-center variant of Deng et al., "Sub-center
ArcFace", ECCV 2020 (used by IDLAB, VoxSRC-20): each class c has K sub-centres w_{c,1..K} and

    cos(theta_{i,c}) = max_k cos(y_i, w_{c,k})
    L_i = -log( exp(s cos(theta_{i,l_i} + m)) / (exp(s cos(theta_{i,l_i} + m)) + sum_{c != l_i} exp(s cos(theta_{i,c}))) )

K = 1 is the plain AAM-softmax of supervised.py. Same deviation as there: cos(theta) - m sin(m) where theta + m > pi.

Loss-gated learning (LGL, Tao et al., ICASSP 2022; DLG, Han et al., Interspeech 2022): a sample whose loss exceeds the
gate threshold is assumed to carry a wrong pseudo-label and is left out of the batch mean

    L = sum_i g_i L_i / max(1, sum_i g_i),   g_i = [L_i <= threshold]

"fixed": a given threshold; "gmm": at the start of every epoch the threshold is refitted by a 2-component Gaussian
mixture on the previous epoch's per-sample losses (sslsv.pseudo_labels.filtering.fit_loss_gate). The gate is open
(every sample kept) during the first `loss_gate_warmup_epochs` epochs. Per-sample losses are the mean over the
views of an utterance; under DDP each rank records its own samples and the sums are all-reduced before the fit.
The per-sample loss table is plain state (extra_state), not a buffer, so DDP does not broadcast rank 0's copy.

LMFT (large-margin fine-tuning, IDLAB) is a config: longer crops, a larger margin, a small learning rate
(configs/multistage/dino_ecapa.yml, last round).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo
from sslsv.registry import METHODS
from sslsv.training import distributed


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
        if self.loss_gate_warmup_epochs < 0:
            raise ConfigError("method.loss_gate_warmup_epochs: must be >= 0")


class SubCenterAAMSoftmax(nn.Module):
    """Sub-center AAM-softmax, per-sample losses (module docstring).

    Args:
        y: (B, D) representations; labels: (B,) class indices.
    Returns:
        (B,) per-sample losses, (B,) bool top-1 correctness on the margin-free logits.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.2, subcenters: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embed_dim))  # rows c*K .. c*K+K-1: class c
        nn.init.xavier_normal_(self.weight, gain=1)
        self.num_classes, self.subcenters, self.scale, self.margin = num_classes, subcenters, scale, margin

    def forward(self, y: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = F.linear(F.normalize(y.float(), dim=1), F.normalize(self.weight.float(), dim=1))  # (B, C*K)
        cosine = cosine.view(len(y), self.num_classes, self.subcenters).amax(dim=2)  # (B, C): nearest sub-centre
        sine = (1.0 - cosine.pow(2)).clamp(min=1e-12).sqrt()
        cos_plus_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)  # cos(theta + m)
        cos_plus_margin = torch.where(cosine > math.cos(math.pi - self.margin), cos_plus_margin,
                                      cosine - math.sin(math.pi - self.margin) * self.margin)
        target = F.one_hot(labels, self.num_classes).bool()
        logits = self.scale * torch.where(target, cos_plus_margin, cosine)
        return F.cross_entropy(logits, labels, reduction="none"), cosine.argmax(dim=1) == labels

    @torch.no_grad()
    def init_from_centroids(self, centroids: torch.Tensor, seed: int = 0) -> None:
        """Start every class's sub-centres at its centroid (C, D) (DeepCluster-v2's head initialisation).

        A random head on top of a pre-trained encoder sends large, meaningless gradients into it during the first
        steps; centroid rows make the initial logits the cosine to each pseudo-class mean instead. Sub-centres of
        a class get small independent perturbations so that they can separate.
        """
        if centroids.shape != (self.num_classes, self.weight.shape[1]):
            raise ValueError(f"centroids: expected ({self.num_classes}, {self.weight.shape[1]}), got {tuple(centroids.shape)}")
        rows = F.normalize(centroids.float(), dim=1).repeat_interleave(self.subcenters, dim=0)
        if self.subcenters > 1:
            generator = torch.Generator().manual_seed(seed)
            rows = F.normalize(rows + 0.01 * torch.randn(rows.shape, generator=generator), dim=1)
        self.weight.copy_(rows.to(self.weight))


def gate_mask(losses: torch.Tensor, threshold: float) -> torch.Tensor:
    """g_i = [L_i <= threshold], (B,) bool."""
    return losses.detach() <= threshold


@METHODS.register("pseudo_supervised", config=PseudoSupervisedConfig)
class PseudoSupervised(Method):
    """(Sub-center) AAM-softmax on pseudo-labels with loss-gated learning (fixed or GMM gate)."""

    uses_labels = True

    def __init__(self, encoder, cfg: PseudoSupervisedConfig, info: TrainingInfo):
        super().__init__(encoder)
        if info.num_speakers < 2:
            raise ConfigError(f"method.name: pseudo_supervised needs at least 2 classes, the manifest has {info.num_speakers}")
        self.cfg = cfg
        self.classifier = SubCenterAAMSoftmax(encoder.embed_dim, info.num_speakers, cfg.scale, cfg.margin, cfg.subcenters)
        self.sample_losses = torch.full((info.num_samples,), float("nan"))  # this epoch's per-utterance losses
        self.losses_epoch = -1  # the epoch that sample_losses belongs to
        self.epoch = 0
        self.threshold = float("inf") if cfg.loss_gate != "fixed" else float(cfg.loss_gate_threshold)

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
        self.sample_losses = torch.full_like(self.sample_losses, float("nan"))
        self.losses_epoch = epoch

    def fit_gate(self) -> float:
        from sslsv.pseudo_labels.filtering import fit_loss_gate

        device = self.classifier.weight.device
        table = self.sample_losses.to(device)
        seen = torch.isfinite(table)
        totals = torch.stack([torch.where(seen, table, torch.zeros_like(table)), seen.float()])
        totals = distributed.all_reduce_sum(totals)  # each sample was seen by one rank
        values, counts = totals[0].cpu(), totals[1].cpu()
        losses = (values / counts.clamp(min=1))[counts > 0].numpy()
        return fit_loss_gate(losses)

    # ------------------------------------------------------------------------------------------------ step

    def forward(self, batch: Batch) -> StepOutput:
        ys = torch.cat([self.encoder(view) for view in batch.views])  # (V*B, D)
        labels = batch.labels.repeat(len(batch.views))  # (V*B,)
        losses, correct = self.classifier(ys, labels)  # (V*B,), (V*B,)
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

