"""Heads shared by the methods: one generic MLP, the projector of the review (section 4.3), DINO's head and the
(sub-center) AAM-softmax speaker classifier.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, require


def mlp(dims: list[int], batch_norm: bool = True, last_batch_norm: bool = False, last_bias: bool = True) -> nn.Sequential:
    """Linear layers through `dims`, with BN + ReLU between them (not after the last unless last_batch_norm)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=(not last or last_bias) and not (batch_norm and not last)))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


@dataclass
class ProjectorConfig:
    """Projector g: "3 linear layers, hidden 2048, output 512, BN + ReLU between" (review, section 4.3)."""

    enabled: bool = True
    hidden_dim: int = 2048
    out_dim: int = 512
    num_layers: int = 3
    last_batch_norm: bool = False  # SimSiam puts a BN at the end

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ConfigError("method.projector.num_layers: must be at least 1")
        for name in ("hidden_dim", "out_dim"):
            require(getattr(self, name) >= 1, f"method.projector.{name}", "at least 1", getattr(self, name))


def build_projector(cfg: ProjectorConfig, in_dim: int) -> tuple[nn.Module, int]:
    """(projector, size of its output): the MLP and cfg.out_dim, or the identity and in_dim when disabled
    (embeddings = representations)."""
    if not cfg.enabled:
        return nn.Identity(), in_dim
    dims = [in_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1) + [cfg.out_dim]
    return mlp(dims, batch_norm=True, last_batch_norm=cfg.last_batch_norm), cfg.out_dim


def predictor(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Predictor h_psi of BYOL / SimSiam (review, section 4.3): "a linear layer, followed by Batch Normalization
    and ReLU, and a final linear layer" (hidden 4096 for BYOL, 512 for SimSiam)."""
    return mlp([in_dim, hidden_dim, out_dim], batch_norm=True)


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose rows are unit vectors: weight = v / ||v|| (weight norm with g fixed to 1,
    DINO's `norm_last_layer=True`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        # nn.Linear's default initialisation, as DINO's and the authors' weight-normed last layer (the direction is
        # what matters, but the norm of v scales the layer's gradients)
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """DINO projector (review, section 4.3): "the dimension of the last layer of the projector is set to 256 to
    create a bottleneck, and a final layer is added to map l2-normalized embeddings to D_e = 65 536 units. This
    final layer uses weight normalization and is not optimized during the first epoch."

    MLP in_dim -> hidden -> hidden -> bottleneck with GELU between, L2 normalisation, weight-normalised last layer
    (bottleneck -> out_dim, no bias). `batch_norm` puts a BN after each hidden linear layer (DINO's `use_bn_in_head`;
    the review's projector and the authors' DINO head have it, and the `dino` method turns it on): it standardises the hidden units over the batch, so the head's output differs
    between samples from the first step even when the encoder's representations are still nearly constant.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, out_dim: int = 65536,
                 num_layers: int = 3, batch_norm: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(y), dim=-1)  # (B, bottleneck)
        return self.last_layer(z)  # (B, out_dim)

    def cancel_last_layer_gradients(self) -> None:
        """Drop the last layer's gradients (frozen for the first epoch), so the optimiser leaves it untouched."""
        self.last_layer.weight_v.grad = None


def class_means(points: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) float32 mean of the L2-normalised rows of `points` (N, D) in each class of `labels` (N,); a class
    without rows gets a zero row. The classifier initialisation of fine-tuning and pseudo-label rounds."""
    x = F.normalize(torch.as_tensor(points).double(), dim=1)
    labels = torch.as_tensor(labels, dtype=torch.long)
    sums = torch.zeros(num_classes, x.shape[1], dtype=torch.float64).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return (sums / counts).float()


class AAMSoftmax(nn.Module):
    """Sub-center AAM-softmax (review Eq. (12); Deng et al., ArcFace 2019 and Sub-center ArcFace, ECCV 2020).

    Each of the C classes has K sub-centres w_{c,1..K}; the cosine to a class is the largest of its sub-centres':

        cos(theta_{i,c}) = max_k cos(y_i, w_{c,k})
        L_i = -log( exp(s cos(theta_{i,l_i} + m)) / (exp(s cos(theta_{i,l_i} + m)) + sum_{c != l_i} exp(s cos(theta_{i,c}))) )

    K = 1 (the default) is the plain AAM-softmax. One deviation, shared by every public implementation: where
    theta + m > pi, cos(theta + m) stops decreasing, so the target logit uses cos(theta) - m sin(m) there instead
    (keeps the loss monotonic in theta). The weight is one (C K, D) matrix, rows c K .. c K + K - 1 for class c.

    Args:
        y: (B, D) representations; labels: (B,) class indices in [0, C).
    Returns:
        reduction "mean": (loss scalar, top-1 accuracy on the margin-free logits, detached);
        reduction "none": ((B,) per-sample losses, (B,) bool top-1 correctness).
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.2,
                 subcenters: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embed_dim))
        nn.init.xavier_normal_(self.weight, gain=1)
        self.num_classes, self.subcenters, self.scale, self.margin = num_classes, subcenters, scale, margin

    def forward(self, y: torch.Tensor, labels: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = F.linear(F.normalize(y.float(), dim=1), F.normalize(self.weight.float(), dim=1))  # (B, C*K)
        cosine = cosine.view(len(y), self.num_classes, self.subcenters).amax(dim=2)  # (B, C): nearest sub-centre
        sine = (1.0 - cosine.pow(2)).clamp(min=1e-12).sqrt()
        cos_plus_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)  # cos(theta + m)
        # theta + m > pi  <=>  cos(theta) < cos(pi - m): keep the target logit decreasing in theta there
        cos_plus_margin = torch.where(cosine > math.cos(math.pi - self.margin), cos_plus_margin,
                                      cosine - math.sin(math.pi - self.margin) * self.margin)
        target = F.one_hot(labels, self.num_classes).bool()
        logits = self.scale * torch.where(target, cos_plus_margin, cosine)
        correct = cosine.argmax(dim=1) == labels
        if reduction == "none":
            return F.cross_entropy(logits, labels, reduction="none"), correct
        return F.cross_entropy(logits, labels), correct.float().mean().detach()

    @torch.no_grad()
    def init_from_centroids(self, centroids: torch.Tensor, seed: int = 0) -> None:
        """Start every class's sub-centres at its centroid (C, D) (DeepCluster-v2's head initialisation).

        A random head on top of a pre-trained encoder sends large, meaningless gradients into it during the first
        steps; centroid rows make the initial logits the cosine to each class mean instead. Sub-centres of a class
        get small independent perturbations so that they can separate.
        """
        if centroids.shape != (self.num_classes, self.weight.shape[1]):
            raise ValueError(f"centroids: expected ({self.num_classes}, {self.weight.shape[1]}), "
                             f"got {tuple(centroids.shape)}")
        rows = F.normalize(centroids.float(), dim=1).repeat_interleave(self.subcenters, dim=0)
        if self.subcenters > 1:
            generator = torch.Generator().manual_seed(seed)
            rows = F.normalize(rows + 0.01 * torch.randn(rows.shape, generator=generator), dim=1)
        self.weight.copy_(rows.to(self.weight))

    @torch.no_grad()
    def initialise(self, rows: torch.Tensor, kind: str = "centroids", seed: int = 0) -> None:
        """Start from given rows (Method.init_classifier): "centroids", (C, D) class means (init_from_centroids), or
        "classifier", a previous classifier's (C K, D) weights copied as they are (same labels, same sub-centres)."""
        if kind == "centroids":
            self.init_from_centroids(rows, seed=seed)
            return
        if kind != "classifier":
            raise ConfigError(f"classifier_init: unknown kind '{kind}' (centroids or classifier)")
        if rows.shape != self.weight.shape:
            raise ConfigError(f"the previous classifier is {tuple(rows.shape)}, this one {tuple(self.weight.shape)}; "
                              f"the same labels need the same method.subcenters (or set classifier_init: random)")
        self.weight.copy_(rows.to(self.weight))
