"""VICReg (Bardes et al., 2022, arXiv 2105.04906) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.3.3, Eq. (8):

    L = lambda s(Z, Z') + mu (v(Z) + v(Z')) + nu (c(Z) + c(Z'))
    v(Z) = 1/D sum_d max(0, 1 - sqrt(Var(z^d) + eps))                       (eps = 1e-4)
    s(Z, Z') = 1/(B D) sum_i ||z_i - z'_i||^2
    c(Z) = 1/D sum_{d != d'} C(Z)_dd'^2,  C = covariance with 1/(N - 1)

Settings (section 4.3, Table 5): lambda = 1, mu = 1, nu = 0.1; projector 2048-2048-512.
Deviations from the printed equation, both as in the authors' code (facebookresearch/vicreg `main_vicreg.py`
and theolepage/sslsv `methods/VICReg/VICRegLoss.py` @1169b6b, with which the review's weights were tuned): the
invariance term is a mean squared error, i.e. also averaged over the D dimensions, and the std has eps = 1e-4
inside the square root. Unlike facebookresearch/vicreg, the variance terms are not halved (the review's Eq. 8
sums them, as theolepage/sslsv does).

Distributed: the invariance term uses the local batch; variance and covariance use embeddings gathered from every
rank with gradients (`distributed.gather`), as in facebookresearch/vicreg `main_vicreg.py` (FullGatherLayer).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.heads import ProjectorConfig, build_projector
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import method_metrics


@dataclass
class VICRegConfig:
    invariance_weight: float = 1.0  # lambda, review section 4.3
    variance_weight: float = 1.0  # mu
    covariance_weight: float = 0.1  # nu
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    def __post_init__(self) -> None:
        weights = ("invariance_weight", "variance_weight", "covariance_weight")
        for name in weights:
            require(getattr(self, name) >= 0, f"method.{name}", ">= 0", getattr(self, name))
        require(any(getattr(self, name) > 0 for name in weights), "method.invariance_weight",
                "> 0 for at least one of the three weights (all 0 trains nothing)", self.invariance_weight)


def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """s(Z, Z'): mean squared difference over batch and dimensions."""
    return F.mse_loss(z1, z2)


def variance_loss(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """v(Z): hinge on the std of every dimension (unbiased variance)."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """c(Z): squared off-diagonal covariances, summed, divided by D."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)  # (D, D)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


class VICRegLoss(nn.Module):
    """Eq. (8). Args: z1, z2 (B, D). Returns (loss, dict of the three detached terms)."""

    def __init__(self, invariance_weight: float = 1.0, variance_weight: float = 1.0, covariance_weight: float = 0.1,
                 covariance=covariance_loss):
        super().__init__()
        self.weights = (invariance_weight, variance_weight, covariance_weight)
        self.covariance = covariance  # c(Z); VIbCReg's normalised variant replaces it

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z1, z2 = (z.to(torch.promote_types(z.dtype, torch.float32)) for z in (z1, z2))  # fp32 under AMP
        s = invariance_loss(z1, z2)  # local batch
        g1, g2 = distributed.gather(z1), distributed.gather(z2)  # global batch
        v = variance_loss(g1) + variance_loss(g2)
        c = self.covariance(g1) + self.covariance(g2)
        lam, mu, nu = self.weights
        terms = {"invariance": s.detach(), "variance": v.detach(), "covariance": c.detach()}
        return lam * s + mu * v + nu * c, terms


@METHODS.register("vicreg", config=VICRegConfig)
class VICReg(Method):
    """VICReg: variance-invariance-covariance regularisation (review Eq. 8); weights 1 / 1 / 0.1."""

    def __init__(self, encoder, cfg: VICRegConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.projector, _ = build_projector(cfg.projector, encoder.embed_dim)
        self.loss = VICRegLoss(cfg.invariance_weight, cfg.variance_weight, cfg.covariance_weight)

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "vicreg")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        loss, terms = self.loss(z1, z2)
        return StepOutput(loss, {**terms, **method_metrics(torch.cat([z1, z2]), self.diagnostics_due)})
