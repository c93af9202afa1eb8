"""SimSiam (Chen & He, 2021, arXiv 2011.10566) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.4.2, Eq. (10):

    L_SimSiam = -1/B sum_i sim(p_i, sg(z'_i)),   p_i = h_psi(z_i)

Shared weights (symmetrical architecture); collapse is avoided by the stop-gradient sg and the predictor.
"The implementation is symmetric by recomputing the loss after swapping the anchor and positive inputs": the two
directions are averaged, L = 1/2 D(p1, z2) + 1/2 D(p2, z1) (SimSiam paper, Eq. 2). Settings (section 4.3):
projector 2048-2048-512 with a BN at its end, predictor linear-BN-ReLU-linear with hidden 512 (bottleneck).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.heads import ProjectorConfig, build_projector, predictor
from sslsv.registry import METHODS
from sslsv.methods.signals import method_metrics


@dataclass
class SimSiamConfig:
    projector: ProjectorConfig = field(default_factory=lambda: ProjectorConfig(last_batch_norm=True))
    predictor_hidden_dim: int = 512  # review section 4.3

    def __post_init__(self) -> None:
        require(self.predictor_hidden_dim >= 1, "method.predictor_hidden_dim", "at least 1",
                self.predictor_hidden_dim)


class SimSiamLoss(nn.Module):
    """Symmetric Eq. (10). Args: p1, p2 predictions (B, D); z1, z2 embeddings (B, D), used under stop-gradient.
    Returns (-mean cos(p1, sg(z2)) - mean cos(p2, sg(z1))) / 2."""

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        loss_12 = -F.cosine_similarity(p1, z2.detach(), dim=1).mean()
        loss_21 = -F.cosine_similarity(p2, z1.detach(), dim=1).mean()
        return (loss_12 + loss_21) / 2


@METHODS.register("simsiam", config=SimSiamConfig)
class SimSiam(Method):
    """SimSiam: shared-weight self-distillation with predictor and stop-gradient (review Eq. 10)."""

    def __init__(self, encoder, cfg: SimSiamConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.projector, dim = build_projector(cfg.projector, encoder.embed_dim)
        self.predictor = predictor(dim, cfg.predictor_hidden_dim, dim)
        self.loss = SimSiamLoss()

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "simsiam")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        loss = self.loss(p1, p2, z1, z2)
        return StepOutput(loss, method_metrics(torch.cat([z1, z2]), self.diagnostics_due))
