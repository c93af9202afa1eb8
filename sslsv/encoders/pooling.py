"""Temporal pooling layers: frame sequence (B, C, T) -> utterance vector (B, out_dim).

Registered in `sslsv.registry.POOLINGS` so that any encoder can take its pooling by name.
"""
from __future__ import annotations

import torch
from torch import nn

from sslsv.registry import POOLINGS


class Pooling(nn.Module):
    out_dim: int


@POOLINGS.register("sap")
class SelfAttentivePooling(Pooling):
    """Self-attentive pooling (Cai et al., 2018): weights = softmax_t(a . tanh(W x_t + b)); out = sum_t w_t x_t."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.attention = nn.Linear(in_dim, in_dim)
        self.context = nn.Parameter(torch.empty(in_dim, 1))
        nn.init.xavier_normal_(self.context)
        self.out_dim = in_dim

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.attention(x.transpose(1, 2)))  # (B, T, C)
        return torch.softmax(h @ self.context, dim=1)  # (B, T, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)
        return (x.transpose(1, 2) * w).sum(dim=1)  # (B, C)


@POOLINGS.register("asp")
class AttentiveStatisticsPooling(SelfAttentivePooling):
    """Attentive statistics pooling (Okabe et al., 2018) with SAP's attention: weighted mean and std -> 2C."""

    def __init__(self, in_dim: int):
        super().__init__(in_dim)
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)  # (B, T, 1)
        frames = x.transpose(1, 2)  # (B, T, C)
        mean = (frames * w).sum(dim=1)
        var = (frames.pow(2) * w).sum(dim=1) - mean.pow(2)
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=1)


@POOLINGS.register("stats")
class StatisticsPooling(Pooling):
    """Statistics pooling (Snyder et al., 2018): mean and standard deviation over time -> 2C."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=2)
        std = x.var(dim=2, unbiased=False).clamp(min=1e-5).sqrt()
        return torch.cat([mean, std], dim=1)


@POOLINGS.register("gap")
class GlobalAveragePooling(Pooling):
    """Global average over time -> C."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)


def build_pooling(name: str, in_dim: int, key: str = "encoder.pooling") -> Pooling:
    return POOLINGS.get(name, key=key).obj(in_dim)
