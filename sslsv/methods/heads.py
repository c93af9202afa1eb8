"""Heads shared by the methods: one generic MLP and the projector of the review (section 4.3)."""
from __future__ import annotations

from dataclasses import dataclass

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
