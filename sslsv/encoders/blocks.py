"""Blocks shared by several encoders (ReDimNet, SV-Mixer, SSRFNet, the layer-wise back-ends): the attentive
statistics pooling as they configure it, and the embedding head that follows it."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sslsv.encoders.pooling import ContextAttentiveStatisticsPooling


def attentive_stats_pooling(in_dim: int, bottleneck: int = 128, global_context: bool = True,
                            activation: Literal["tanh", "relu_bn"] = "tanh",
                            dropout: float = 0.0) -> ContextAttentiveStatisticsPooling:
    """The registry's ASTP (`astp` in sslsv/encoders/pooling.py) with the attention non-linearity named:
    tanh (wespeaker/IDRnD: ReDimNet, SV-Mixer, SSRFNet) or ReLU + BN (LAP/UniPool). Shapes (B, C, T) -> (B, 2C)."""
    relu_bn = activation == "relu_bn"
    return ContextAttentiveStatisticsPooling(in_dim, bottleneck, global_context, tdnn=relu_bn, tanh=not relu_bn,
                                             dropout=dropout)


class EmbeddingHead(nn.Module):
    """IDRnD head: BN(pooled) -> Linear -> embed_dim (-> BN when embedding_bn). Shapes (B, in_dim) -> (B, embed_dim)."""

    def __init__(self, in_dim: int, embed_dim: int, embedding_bn: bool):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)
        self.linear = nn.Linear(in_dim, embed_dim)
        self.embedding_norm = nn.BatchNorm1d(embed_dim) if embedding_bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_norm(self.linear(self.norm(x)))
