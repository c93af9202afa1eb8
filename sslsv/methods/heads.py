"""Heads shared by the methods: one generic MLP and the projector of the review (section 4.3)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError


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


def build_projector(cfg: ProjectorConfig, in_dim: int) -> nn.Module:
    """The projector, or the identity when disabled (embeddings = representations)."""
    if not cfg.enabled:
        return nn.Identity()
    dims = [in_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1) + [cfg.out_dim]
    return mlp(dims, batch_norm=True, last_batch_norm=cfg.last_batch_norm)


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
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """DINO projector (review, section 4.3): "the dimension of the last layer of the projector is set to 256 to
    create a bottleneck, and a final layer is added to map l2-normalized embeddings to D_e = 65 536 units. This
    final layer uses weight normalization and is not optimized during the first epoch."

    MLP in_dim -> hidden -> hidden -> bottleneck with GELU between, L2 normalisation, weight-normalised last layer
    (bottleneck -> out_dim, no bias). `batch_norm` puts a BN after each hidden linear layer (DINO's `use_bn_in_head`;
    off by default, as in DINO): it standardises the hidden units over the batch, so the head's output differs
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
