"""BYOL (Grill et al., 2020, arXiv 2006.07733) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.4.1, Eq. (9):

    L_BYOL = 2 - 2 * 1/B sum_i sim(p_i, z'_i),   p_i = h_psi(z_i)

z_i: online (student) embedding, p_i its prediction, z'_i: target embedding of the other view from the momentum
encoder + projector (stop-gradient). "The implementation is symmetric by recomputing the loss after swapping the
anchor and positive inputs": the two directions are summed, L_total = L + L~ (BYOL paper, section 3.1).
Settings (section 4.3): projector 2048-2048-512 (BN + ReLU), predictor linear-BN-ReLU-linear with hidden 4096,
EMA m from 0.996 to 1 with a cosine schedule over the run. The target branch's BN running statistics are its own
(see methods/ema.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.ema import cosine_schedule, momentum_copy, update_momentum
from sslsv.methods.heads import ProjectorConfig, build_projector, predictor
from sslsv.registry import METHODS
from sslsv.methods.signals import method_metrics


@dataclass
class BYOLConfig:
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    predictor_hidden_dim: int = 4096  # review section 4.3
    momentum_start: float = 0.996  # m, cosine to momentum_end (review section 4.3)
    momentum_end: float = 1.0

    def __post_init__(self) -> None:
        require(self.predictor_hidden_dim >= 1, "method.predictor_hidden_dim", "at least 1", self.predictor_hidden_dim)
        require(0 <= self.momentum_start <= self.momentum_end <= 1, "method.momentum_start",
                "in [0, method.momentum_end] with momentum_end <= 1", [self.momentum_start, self.momentum_end])


def negative_cosine_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 * mean_i cos(p_i, z_i) for (B, D) inputs; z is used as a constant (stop-gradient)."""
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=1).mean()


class BYOLLoss(nn.Module):
    """Symmetric Eq. (9). Args: p1, p2 predictions (B, D) of views 1 and 2; z1, z2 target embeddings (B, D).
    Returns L(p1, z2) + L(p2, z1)."""

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return negative_cosine_loss(p1, z2) + negative_cosine_loss(p2, z1)


@METHODS.register("byol", config=BYOLConfig)
class BYOL(Method):
    """BYOL: self-distillation with predictor and momentum target (review Eq. 9); m 0.996 -> 1 (cosine)."""

    def __init__(self, encoder, cfg: BYOLConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        self.projector, dim = build_projector(cfg.projector, encoder.embed_dim)
        self.predictor = predictor(dim, cfg.predictor_hidden_dim, dim)
        self.target_encoder = momentum_copy(encoder)
        self.target_projector = momentum_copy(self.projector)
        self.loss = BYOLLoss()

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "byol")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        with torch.no_grad():
            t1, t2 = encode_views(lambda x: self.target_projector(self.target_encoder(x)), [x1, x2])
        loss = self.loss(p1, p2, t1, t2)
        return StepOutput(loss, method_metrics(torch.cat([z1, z2]), self.diagnostics_due))

    def after_optimizer_step(self, progress: float) -> None:
        m = cosine_schedule(progress, self.cfg.momentum_start, self.cfg.momentum_end)
        for online, ema in self.momentum_pairs():
            update_momentum(online, ema, m)
