"""Margins on the positive of a contrastive loss (SimCLR's NT-Xent, MoCo's InfoNCE): `method.margin`.

Lepage & Dehak, "Experimenting with additive margins for contrastive self-supervised speaker verification",
Interspeech 2023 (arXiv:2306.03664), and "Additive margin in contrastive self-supervised frameworks to learn
discriminative speaker representations", Odyssey 2024 (review [44]; "SimCLR + Margin", review section 3.1.1).
Authors' code: theolepage/sslsv `methods/SimCLRMargins/SimCLRMarginsLoss.py` and `methods/MoCoMargins/`.

For an anchor z_i with positive cosine c_p = cos(theta_p) and negative cosines c_n, the loss becomes

    L_i = -log( e^{psi(c_p) / tau} / ( e^{psi(c_p) / tau} + sum_n e^{c_n / tau} ) )

where psi is, for a margin m:
  - `cosface` (additive margin, Wang et al., CVPR 2018):  psi(c) = c - m
  - `arcface` (additive angular margin, Deng et al., CVPR 2019):  psi(c) = cos(theta + m) while theta + m <= pi,
    else c - m sin(m) (ArcFace's monotonic extension, as the authors' `_add_aam`)
  - `adaface` (adaptive margin, Kim et al., CVPR 2022): with g = clip(h (||z_i|| - mu) / (sigma + eps), -1, 1),
    ||z_i|| the norm of the anchor's (unnormalised) embedding clipped to [0.001, 100] and mu, sigma running means (momentum `adaface_momentum`)
    of the batch's norm mean and standard deviation,  psi(c) = cos(clip(theta - m g, eps, pi - eps)) - (m + m g).
    eps = 1e-3 as AdaFace's code and the authors'.
Negatives are unchanged; only the positive's logit is moved. `none` (the default): psi(c) = c, the plain loss.

The margin m is fixed, scheduled over epochs (`schedule: linear`: m e / E for epoch e < E, then m; `cosine`: the
authors' `update_margin`, m (1 - (cos(pi e / E) + 1) / 2); E = `ramp_epochs`, 0 meaning half of the run as the
authors), or learnable (`learnable: true`: a parameter initialised to m, trained with the network).
Distributed: AdaFace's batch statistics are taken over the global batch (all ranks' norms), so every rank keeps the
same running values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sslsv import distributed
from sslsv.config import ConfigError, require

ADAFACE_EPS = 1e-3


@dataclass
class MarginConfig:
    kind: Literal["none", "cosface", "arcface", "adaface"] = "none"
    margin: float = 0.1  # m (cosine units for cosface, radians for arcface/adaface's angular part)
    schedule: Literal["fixed", "linear", "cosine"] = "fixed"
    ramp_epochs: int = 0  # E of the schedule; 0: half of trainer.epochs (the authors' update_margin)
    learnable: bool = False
    adaface_h: float = 0.333  # AdaFace h (the authors' adaface_h)
    adaface_momentum: float = 0.01  # running mean/std update of the norms (AdaFace's t_alpha)

    def __post_init__(self) -> None:
        require(self.margin >= 0, "method.margin.margin", ">= 0", self.margin)
        if self.kind == "arcface":
            require(self.margin < math.pi, "method.margin.margin", "below pi for arcface", self.margin)
        require(self.ramp_epochs >= 0, "method.margin.ramp_epochs", ">= 0", self.ramp_epochs)
        require(self.adaface_h > 0, "method.margin.adaface_h", "positive", self.adaface_h)
        require(0 < self.adaface_momentum <= 1, "method.margin.adaface_momentum", "in (0, 1]", self.adaface_momentum)
        if self.learnable and self.schedule != "fixed":
            raise ConfigError("method.margin.learnable: a learnable margin cannot also follow a schedule "
                              "(set method.margin.schedule: fixed)")
        if self.kind == "none" and (self.learnable or self.schedule != "fixed"):
            raise ConfigError("method.margin.kind: is none, so learnable/schedule have no effect (choose cosface, "
                              "arcface or adaface)")


def arcface_positive(cosine: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """cos(theta + m), or cos(theta) - m sin(m) once theta + m > pi (keeps psi decreasing in theta)."""
    margin = torch.as_tensor(margin, dtype=cosine.dtype, device=cosine.device)
    sine = (1.0 - cosine * cosine).clamp(0, 1).sqrt()
    shifted = cosine * torch.cos(margin) - sine * torch.sin(margin)
    return torch.where(cosine > torch.cos(math.pi - margin), shifted, cosine - torch.sin(math.pi - margin) * margin)


class ContrastiveMargin(nn.Module):
    """psi of the module docstring, applied to the positives' cosines. `kind: none` holds no state at all, so
    methods without a margin keep their state dict unchanged."""

    def __init__(self, cfg: MarginConfig, epochs: int):
        super().__init__()
        self.cfg = cfg
        self.ramp_epochs = cfg.ramp_epochs or max(epochs // 2, 1)
        self.epoch = 0
        if cfg.kind != "none" and cfg.learnable:
            self.learned = nn.Parameter(torch.tensor(float(cfg.margin)))
        if cfg.kind == "adaface":
            # AdaFace's initial running statistics (its code and the authors': mean 20, std 100)
            self.register_buffer("norm_mean", torch.tensor(20.0))
            self.register_buffer("norm_std", torch.tensor(100.0))

    @property
    def enabled(self) -> bool:
        return self.cfg.kind != "none"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def value(self) -> torch.Tensor | float:
        """m at the current epoch (a parameter when learnable)."""
        cfg = self.cfg
        if cfg.learnable:
            return self.learned
        fraction = min(self.epoch / self.ramp_epochs, 1.0)
        if cfg.schedule == "linear":
            return cfg.margin * fraction
        if cfg.schedule == "cosine":
            return cfg.margin * (1 - (math.cos(math.pi * fraction) + 1) / 2)
        return cfg.margin

    def forward(self, positive: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """positive: (A,) cosines of each anchor to its positive; norms: (A,) norms of the anchors' embeddings
        before L2 normalisation (AdaFace only). Returns psi(positive), (A,)."""
        kind, m = self.cfg.kind, self.value()
        if kind == "none":
            return positive
        if kind == "cosface":
            return positive - m
        if kind == "arcface":
            return arcface_positive(positive, m)
        norms = norms.detach().to(torch.promote_types(norms.dtype, self.norm_mean.dtype)).clamp(0.001, 100)
        if self.training:
            self.update_statistics(norms)
        g = ((norms - self.norm_mean) / (self.norm_std + ADAFACE_EPS) * self.cfg.adaface_h).clamp(-1, 1).to(positive.dtype)
        theta = positive.clamp(-1 + 1e-7, 1 - 1e-7).acos()
        return torch.cos((theta - m * g).clamp(ADAFACE_EPS, math.pi - ADAFACE_EPS)) - (m + m * g)

    @torch.no_grad()
    def update_statistics(self, norms: torch.Tensor) -> None:
        """Running mean and (unbiased) std of the anchors' norms over the global batch."""
        gathered = distributed.gather_no_grad(norms)
        alpha = self.cfg.adaface_momentum
        self.norm_mean.mul_(1 - alpha).add_(alpha * gathered.mean())
        std = gathered.std() if gathered.numel() > 1 else torch.zeros((), device=gathered.device)
        self.norm_std.mul_(1 - alpha).add_(alpha * std)

    def metrics(self, device: torch.device) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return {}
        return {"margin": torch.as_tensor(self.value(), dtype=torch.float32, device=device).detach().clone()}
