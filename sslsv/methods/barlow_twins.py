"""Barlow Twins (Zbontar et al., 2021, arXiv 2103.03230) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.3.2, Eq. (7):

    L_BT = sum_d (1 - C_dd)^2 + lambda * sum_d sum_{d' != d} C_dd'^2

C (D x D): cross-correlation of Z and Z' along the batch, C_dd' = sum_b zn_bd zn'_bd' / N with zn the batch-
standardised embeddings (mean 0, biased std 1 per dimension), as in the paper's Eq. (2). Setting (section 4.3):
lambda = 0.005; projector 2048-2048-512.

Distributed: means, standard deviations and C are computed over the global batch with the autograd-aware
`distributed.all_reduce_sum` (a raw all-reduce would scale the gradients by 1 / world size; lightly fixed this bug
in its BarlowTwinsLoss). Authors' code: facebookresearch/barlowtwins `main.py` (BN over the global batch, then
all-reduced C).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sslsv.config import require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.heads import ProjectorConfig, build_projector
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import method_metrics


@dataclass
class BarlowTwinsConfig:
    scale: float = 0.005  # lambda, review section 4.3
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    def __post_init__(self) -> None:
        require(self.scale >= 0, "method.scale", ">= 0", self.scale)


def _standardise(z: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(z - mean) / std per dimension over the global batch (biased std); returns (zn, global batch size)."""
    count = torch.tensor([float(z.shape[0])], dtype=z.dtype, device=z.device)
    totals = distributed.all_reduce_sum(torch.cat([z.sum(dim=0), count]))
    n = totals[-1]
    centred = z - totals[:-1] / n
    var = distributed.all_reduce_sum((centred * centred).sum(dim=0)) / n
    return centred / torch.sqrt(var + eps), n


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """C (D, D) of Eq. (7) over the global batch."""
    zn1, n = _standardise(z1)
    zn2, _ = _standardise(z2)
    return distributed.all_reduce_sum(zn1.T @ zn2) / n


class BarlowTwinsLoss(nn.Module):
    """Eq. (7). Args: z1, z2 (B, D) embeddings of the two views. Returns the scalar loss."""

    def __init__(self, scale: float = 0.005):
        super().__init__()
        self.scale = scale

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        c = cross_correlation(_at_least_float32(z1), _at_least_float32(z2))
        on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
        off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diagonal + self.scale * off_diagonal


@METHODS.register("barlow_twins", config=BarlowTwinsConfig)
class BarlowTwins(Method):
    """Barlow Twins: cross-correlation to identity (review Eq. 7); lambda 0.005."""

    def __init__(self, encoder, cfg: BarlowTwinsConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.projector, _ = build_projector(cfg.projector, encoder.embed_dim)
        self.loss = BarlowTwinsLoss(cfg.scale)

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "barlow_twins")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        return StepOutput(self.loss(z1, z2), method_metrics(torch.cat([z1, z2]), self.diagnostics_due))


def _at_least_float32(z: torch.Tensor) -> torch.Tensor:
    """Statistics in float32 under mixed precision; float64 stays float64."""
    return z.to(torch.promote_types(z.dtype, torch.float32))
