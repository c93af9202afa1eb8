"""VIbCReg (Lee & Aune, "VIbCReg: Variance-Invariance-better-Covariance Regularization for Self-Supervised Learning
on Time Series", arXiv:2109.00783) for speaker verification.

VICReg (methods/vicreg.py, review Eq. 8) with a "better" covariance term and a whitened projector output:

    L = lambda s(Z, Z') + mu (v(Z) + v(Z')) + nu (c(Z) + c(Z'))
    s(Z, Z') = 1/(B D) sum_i ||z_i - z'_i||^2                              (as VICReg, local batch)
    v(Z)     = 1/D sum_d max(0, 1 - sqrt(Var(z^d) + eps)),  eps = 1e-4        (as VICReg)
    c(Z)     = 1/D^2 sum_{d != d'} C_norm(Z)_{d d'}^2
    C_norm(Z) = Zn^T Zn,  Zn = column-wise L2-normalised (Z - mean(Z))       (the correlation matrix)

The normalised covariance bounds every entry to [-1, 1] whatever the scale of the embeddings, so nu no longer
depends on D or on the variance of each dimension; the 1/D^2 averages over the D^2 entries (the diagonal,
always 1, is excluded from the sum). The projector ends with IterNorm (Huang et al., "Iterative Normalization:
Beyond Standardization towards Efficient Whitening", CVPR 2019; `IterNorm` below): group whitening of the
projector output by T Newton-Schulz iterations, which decorrelates the dimensions from the start.

Settings: the authors of the review ship VIbCReg in theolepage/sslsv (`methods/VIbCReg`, not among the review's
tables): weights lambda, mu, nu = 1, 1, 8 (the paper's 25, 25, 200 divided by 25), projector
Linear-BN-ReLU-Linear-BN-ReLU-Linear at 8192-8192-8192 (set by configs/methods/vibcreg.yml; the dataclass keeps
the review's 2048-2048-512 projector) followed by IterNorm with 64 groups, T = 5 iterations,
eps 1e-5, running-statistics momentum 0.1, affine output.
Distributed: as VICReg (invariance on the local batch; variance and covariance on embeddings gathered with
gradients). IterNorm whitens with the batch statistics of its own rank (it is not a batch-norm layer, so the
trainer's global batch norm does not convert it; the authors' code does the same).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.heads import ProjectorConfig, build_projector
from sslsv.methods.signals import method_metrics
from sslsv.methods.vicreg import VICRegLoss
from sslsv.registry import METHODS


@dataclass
class VIbCRegConfig:
    invariance_weight: float = 1.0  # lambda
    variance_weight: float = 1.0  # mu
    covariance_weight: float = 8.0  # nu (on the normalised covariance)
    iternorm: bool = True  # whiten the projector output (false: VICReg's projector with the better covariance)
    iternorm_groups: int = 64
    iternorm_iterations: int = 5  # T
    # the review's projector (2048-2048-512); configs/methods/vibcreg.yml sets the authors' 8192-8192-8192
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    def __post_init__(self) -> None:
        weights = ("invariance_weight", "variance_weight", "covariance_weight")
        for name in weights:
            require(getattr(self, name) >= 0, f"method.{name}", ">= 0", getattr(self, name))
        require(any(getattr(self, name) > 0 for name in weights), "method.invariance_weight",
                "> 0 for at least one of the three weights (all 0 trains nothing)", self.invariance_weight)
        for name in ("iternorm_groups", "iternorm_iterations"):
            require(getattr(self, name) >= 1, f"method.{name}", "at least 1", getattr(self, name))


def normalized_covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """c(Z): mean over the D^2 entries of the squared correlation matrix, its diagonal excluded from the sum."""
    d = z.shape[1]
    zn = F.normalize(z - z.mean(dim=0), dim=0)
    corr = zn.T @ zn  # (D, D)
    return (corr.pow(2).sum() - torch.diagonal(corr).pow(2).sum()) / (d * d)


class VIbCRegLoss(VICRegLoss):
    """The module docstring's L: VICReg's loss with the normalised covariance term c(Z) above. Args: z1, z2 (B, D).
    Returns (loss, dict of the three detached terms)."""

    def __init__(self, invariance_weight: float = 1.0, variance_weight: float = 1.0, covariance_weight: float = 8.0):
        super().__init__(invariance_weight, variance_weight, covariance_weight, covariance=normalized_covariance_loss)


class IterNorm(nn.Module):
    """Group whitening of (B, F) features by Newton-Schulz iterations (IterNorm, Huang et al., CVPR 2019).

    Features are split into G groups of c = F / G channels (c = ceil(F / groups), halved until it divides F, as
    the reference implementation). For each group, with X (c, B) centred over the batch:

        Sigma = eps I + X X^T / B,   Sigma_N = Sigma / tr(Sigma),   P_0 = I,
        P_{k+1} = (3 P_k - P_k^3 Sigma_N) / 2  (k < T),   W = P_T / sqrt(tr(Sigma)),   X_hat = W X

    (W approximates Sigma^{-1/2}). Evaluation uses running averages of the mean and of W (momentum 0.1), and the
    output gets a per-feature affine transform. Gradients flow through the iterations by autograd.
    """

    def __init__(self, num_features: int, groups: int = 64, iterations: int = 5, eps: float = 1e-5,
                 momentum: float = 0.1):
        super().__init__()
        channels = -(-num_features // groups)
        while num_features % channels:
            channels //= 2
        self.groups, self.channels = num_features // channels, channels
        self.iterations, self.eps, self.momentum = iterations, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(self.groups, channels, 1))
        self.register_buffer("running_whitening", torch.eye(channels).expand(self.groups, channels, channels).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):  # Newton-Schulz in float32 under AMP
            return self._whiten(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)

    def _whiten(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        grouped = x.T.reshape(self.groups, self.channels, b)  # (G, c, B)
        if self.training:
            mean = grouped.mean(dim=-1, keepdim=True)
            centred = grouped - mean
            eye = torch.eye(self.channels, dtype=x.dtype, device=x.device).expand(self.groups, -1, -1)
            sigma = self.eps * eye + centred @ centred.transpose(1, 2) / b
            trace_inv = 1.0 / (sigma * eye).sum(dim=(1, 2), keepdim=True)
            sigma_n = sigma * trace_inv
            p = eye
            for _ in range(self.iterations):
                p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ sigma_n
            whitening = p * trace_inv.sqrt()
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean), self.momentum)
                self.running_whitening.lerp_(whitening.detach().to(self.running_whitening), self.momentum)
        else:
            centred = grouped - self.running_mean.to(x.dtype)
            whitening = self.running_whitening.to(x.dtype)
        out = (whitening @ centred).reshape(-1, b).T  # (B, F)
        return out * self.weight + self.bias


@METHODS.register("vibcreg", config=VIbCRegConfig)
class VIbCReg(Method):
    """VIbCReg: VICReg with a normalised covariance term and an IterNorm-whitened projector; weights 1 / 1 / 8."""

    def __init__(self, encoder, cfg: VIbCRegConfig, info: TrainingInfo):
        super().__init__(encoder)
        projector, dim = build_projector(cfg.projector, encoder.embed_dim)
        self.projector = (nn.Sequential(projector, IterNorm(dim, cfg.iternorm_groups, cfg.iternorm_iterations))
                          if cfg.iternorm else projector)
        self.loss = VIbCRegLoss(cfg.invariance_weight, cfg.variance_weight, cfg.covariance_weight)

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "vibcreg")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        loss, terms = self.loss(z1, z2)
        return StepOutput(loss, {**terms, **method_metrics(torch.cat([z1, z2]), self.diagnostics_due)})
