"""W-MSE (Ermolov et al., 2021, arXiv 2007.06346) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.3.1, Eq. (6):

    L_W-MSE = 2 - 2 * 1/B sum_i sim(W(z_i), W(z'_i)),   W(z) = W (z - mu)

W: whitening matrix of the embeddings, from the Cholesky factor of their covariance: Sigma = L L^T, W = L^-1,
so W(Z) has identity covariance. "Batch slicing is applied to mitigate the high variance that can arise when
estimating the whitening matrix": the batch is randomly split into slices of `w_size` samples, and each view of
each slice is whitened with its own mean and W (authors' code: htdt/self-supervised `methods/w_mse.py`).
Settings (section 4.3): projector output D_e = 64, whitening applied once (w_iter = 1), w_size = 128.
`w_eps` shrinks Sigma towards the identity, (1 - eps) Sigma + eps I (authors' default 0).

Distributed: whitening uses each rank's local batch, as the authors' code; the per-rank batch must hold at least
one slice of more than D_e samples, otherwise Sigma is singular.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.heads import ProjectorConfig, build_projector
from sslsv.registry import METHODS
from sslsv.methods.signals import method_metrics


@dataclass
class WMSEConfig:
    w_size: int = 128  # samples per whitening slice, review section 4.3
    w_iter: int = 1  # whitening repetitions (fresh random slices each), review section 4.3
    w_eps: float = 0.0
    projector: ProjectorConfig = field(default_factory=lambda: ProjectorConfig(out_dim=64))

    def __post_init__(self) -> None:
        if self.w_iter < 1 or self.w_size < 2:
            raise ConfigError("method.w_size: w_size must be >= 2 and w_iter >= 1")
        if not 0 <= self.w_eps < 1:
            raise ConfigError("method.w_eps: must be in [0, 1)")


def whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """x (n, D) -> (x - mean) L^-T, where L L^T = (1 - eps) cov(x) + eps I (cov with 1 / (n - 1))."""
    n, d = x.shape
    centred = x - x.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    cov = (1 - eps) * cov + eps * eye
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        if not torch.isfinite(cov).all():
            # NaN/Inf embeddings are not a whitening problem: a NaN loss lets the trainer name the step and stop
            return torch.full_like(centred, float("nan"))
        raise RuntimeError(f"W-MSE: the covariance of a {n}-sample slice of {d}-d embeddings is not positive definite "
                           f"(collapsed embeddings, or w_size <= D_e); raise method.w_size or set method.w_eps > 0")
    inverse = torch.linalg.solve_triangular(factor, eye, upper=False)  # W = L^-1
    return centred @ inverse.T


class WMSELoss(nn.Module):
    """Eq. (6) with batch slicing. Args: z1, z2 (B, D). Slices come from torch.randperm (global RNG).
    Returns 2 - 2 * mean over samples (and w_iter repetitions) of cos(W(z1), W(z2))."""

    def __init__(self, w_size: int = 128, w_iter: int = 1, w_eps: float = 0.0):
        super().__init__()
        self.w_size, self.w_iter, self.w_eps = w_size, w_iter, w_eps

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        z1, z2 = (z.to(torch.promote_types(z.dtype, torch.float32)) for z in (z1, z2))  # fp32 under AMP
        batch = z1.shape[0]
        slices = max(batch // self.w_size, 1)
        total = z1.new_zeros(())
        for _ in range(self.w_iter):
            w1, w2 = torch.empty_like(z1), torch.empty_like(z2)
            for rows in torch.tensor_split(torch.randperm(batch, device=z1.device), slices):
                w1[rows] = whiten(z1[rows], self.w_eps)
                w2[rows] = whiten(z2[rows], self.w_eps)
            total = total + 2 - 2 * F.cosine_similarity(w1, w2, dim=1).mean()
        return total / self.w_iter


@METHODS.register("wmse", config=WMSEConfig)
class WMSE(Method):
    """W-MSE: MSE of whitened embeddings (review Eq. 6); D_e 64, w_size 128."""

    def __init__(self, encoder, cfg: WMSEConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.projector, _ = build_projector(cfg.projector, encoder.embed_dim)
        self.loss = WMSELoss(cfg.w_size, cfg.w_iter, cfg.w_eps)

    def min_batch_size(self) -> int:
        return self.loss.w_size

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "wmse")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        return StepOutput(self.loss(z1, z2), method_metrics(torch.cat([z1, z2]), self.diagnostics_due))
