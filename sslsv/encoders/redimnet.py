"""ReDimNet (Yakovlev et al., "Reshape Dimensions Network for Speaker Recognition", Interspeech 2024, arXiv 2407.18223).

Reference implementations: IDRnD/ReDimNet `redimnet/model.py` (`ReDimNet`, `ReDimNetWrap`) @ceeb132 for the blocks and
the head; wenet-e2e/wespeaker `wespeaker/models/redimnet.py` (`ReDimNetB0`..`B6`) @0602516 for the B0-B6 stage
tables, which are the only public per-variant definitions (IDRnD ships its configs inside the released checkpoints).

One residual stream of shape (B, C*F, T) with C*F constant. Every stage i:
  x = sum_j softmax_j(w_i)[ch] * out_j                   (weighted aggregation of the stem and all previous outputs)
  x = to2d(x)  -> Conv2d(c -> s*c*e, kernel = stride = (s, 1))   (frequency only; time is never strided)
  x = n 2-D blocks at width c*e  -> [squeeze back to c if e != 1] -> to1d -> [1-D TimeContextBlock on C*F]
After the last stage: the same aggregation over all outputs -> ASTP with global context -> BN -> Linear -> 192
(-> optional BN, "better in SSL for SV" in IDRnD's code).

Measured parameters (public wespeaker configs + IDRnD head with global-context ASTP, 192-d), against the paper:
B0 1.00 M (paper 1.0), B1 2.13 M (2.2), B2 4.89 M (4.7), B3 3.23 M (3.0), B4 6.44 M (6.3), B5 7.66 M (9.2),
B6 15.02 M (15.0); see docs/encoders_layerwise.md for MACs.

Deviations:
- The input features come from the toolkit's `LogMel` (per-band mean and variance normalisation); IDRnD's front-end
  only subtracts the mean. F must equal `features.n_mels` (checked).
- Stage 0 aggregates a single tensor; IDRnD keeps a frozen scalar weight there, here it is simply the identity.
- MFA (a 1x1 conv after the final aggregation) is Identity in every public variant and is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, require
from sslsv.encoders.base import Encoder
from sslsv.encoders.blocks import EmbeddingHead, attentive_stats_pooling
from sslsv.registry import ENCODERS

Block2d = Literal["convnext_like", "basic_resnet", "basic_resnet_fwse"]
Block1d = Literal["conv+att", "att"]


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ReDimNetStage:
    """One stage: frequency stride s, number of 2-D blocks, channel expansion e inside the stage, and the reduction
    r of the 1-D block (hidden width C*F / r; None: no 1-D block)."""

    stride: int = 1
    blocks: int = 2
    conv_exp: int = 1
    att_red: int | None = None


def stage_table(*rows: tuple[int, int, int, int | None]) -> list[ReDimNetStage]:
    """Stages from (stride, blocks, conv_exp, att_red) rows."""
    return [ReDimNetStage(*row) for row in rows]


@dataclass
class ReDimNetConfig:
    """A ReDimNet of any shape. The defaults are B2 (IDRnD's `ReDimNetWrap` default, the "M" version)."""

    freq_bins: int = 72  # F: mel bands the model expects (must equal features.n_mels)
    channels: int = 16  # C: stem channels; C*F is the width of the 1-D stream
    block_2d: Block2d = "convnext_like"
    block_1d: Block1d = "conv+att"  # wespeaker and SSRFNet use conv+att; "att" is IDRnD's class default
    group_divisor: int = 4  # channels per group in the grouped 3x3 convs
    stages: list[ReDimNetStage] = field(
        default_factory=lambda: stage_table((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8),
                                        (2, 4, 1, 4))
    )
    heads: int = 4  # attention heads in the 1-D blocks
    pool_bottleneck: int = 128  # ASTP attention bottleneck
    global_context: bool = True  # ASTP attention sees [x, mean_t, std_t] (IDRnD head)
    embed_dim: int = 192
    embedding_bn: bool = False  # BN on the embedding, "better in SSL for SV" (IDRnD)

    def __post_init__(self) -> None:
        if self.freq_bins < 1 or self.channels < 1:
            raise ConfigError("encoder.freq_bins: freq_bins and channels must be positive")
        if not self.stages:
            raise ConfigError("encoder.stages: needs at least one stage")
        if self.group_divisor < 1:
            raise ConfigError("encoder.group_divisor: must be at least 1")
        if self.embed_dim < 1:
            raise ConfigError("encoder.embed_dim: must be positive")
        require(self.heads >= 1, "encoder.heads", "at least 1", self.heads)
        require(self.pool_bottleneck >= 1, "encoder.pool_bottleneck", "at least 1", self.pool_bottleneck)
        width = self.channels * self.freq_bins
        c, f = self.channels, self.freq_bins
        for i, stage in enumerate(self.stages):
            key = f"encoder.stages[{i}]"
            if stage.stride not in (1, 2, 3):
                raise ConfigError(f"{key}.stride: must be 1, 2 or 3, got {stage.stride}")
            if stage.blocks < 0 or stage.conv_exp < 1:
                raise ConfigError(f"{key}.blocks: blocks must be >= 0 and conv_exp >= 1")
            if f % stage.stride:
                raise ConfigError(f"{key}.stride: {f} frequency bins are not divisible by stride {stage.stride}")
            c, f = c * stage.stride, f // stage.stride
            # grouped convs use (channels // group_divisor) groups: at least one, dividing the channels
            inner = c * stage.conv_exp
            groups = [(inner, inner // self.group_divisor)]
            if stage.conv_exp != 1:  # squeeze-back conv: inner -> c channels with c // group_divisor groups
                groups += [(inner, c // self.group_divisor), (c, c // self.group_divisor)]
            if any(g < 1 or ch % g for ch, g in groups):
                raise ConfigError(f"encoder.group_divisor: {self.group_divisor} does not fit the {inner} channels "
                                  f"of stage {i}")
            if stage.att_red is not None:
                if stage.att_red < 1 or width % stage.att_red:
                    raise ConfigError(f"{key}.att_red: must divide C*F = {width}, got {stage.att_red}")
                if (width // stage.att_red) % self.heads:
                    raise ConfigError(f"{key}.att_red: the 1-D width {width // stage.att_red} is not divisible by "
                                      f"{self.heads} heads")


@dataclass
class ReDimNetPresetConfig:
    """Options left open by the B0-B6 presets (the architecture itself is fixed by the preset)."""

    embed_dim: int = 192
    embedding_bn: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim < 1:
            raise ConfigError("encoder.embed_dim: must be positive")


# (F, C, 2-D block, group divisor, stages (stride, blocks, conv_exp, att_red)): wespeaker ReDimNetB0..B6.
PRESETS: dict[str, dict] = {
    "b0": dict(freq_bins=60, channels=10, block_2d="basic_resnet", group_divisor=1,
               stages=[(1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10)]),
    "b1": dict(freq_bins=72, channels=12, block_2d="convnext_like", group_divisor=8,
               stages=[(1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12), (2, 3, 1, 8)]),
    "b2": dict(freq_bins=72, channels=16, block_2d="convnext_like", group_divisor=4,
               stages=[(1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8), (2, 4, 1, 4)]),
    "b3": dict(freq_bins=72, channels=16, block_2d="basic_resnet_fwse", group_divisor=1,
               stages=[(1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16), (1, 10, 1, 16), (2, 8, 1, 16)]),
    "b4": dict(freq_bins=72, channels=32, block_2d="basic_resnet_fwse", group_divisor=1,
               stages=[(1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24), (2, 4, 1, 16)]),
    "b5": dict(freq_bins=72, channels=32, block_2d="basic_resnet_fwse", group_divisor=16,
               stages=[(1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24), (2, 4, 1, 16)]),
    "b6": dict(freq_bins=72, channels=32, block_2d="basic_resnet", group_divisor=32,
               stages=[(1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16), (2, 8, 1, 16)]),
}


def preset_config(variant: str, embed_dim: int = 192, embedding_bn: bool = False) -> ReDimNetConfig:
    """The full `ReDimNetConfig` of preset `variant` ("b0".."b6")."""
    spec = dict(PRESETS[variant])
    spec["stages"] = stage_table(*spec["stages"])
    return ReDimNetConfig(**spec, embed_dim=embed_dim, embedding_bn=embedding_bn)


# ----------------------------------------------------------------------------------------------------------------
# Reshapes and aggregation
# ----------------------------------------------------------------------------------------------------------------


def to1d(x: torch.Tensor) -> torch.Tensor:
    """(B, c, f, T) -> (B, f*c, T), frequency outer."""
    b, c, f, t = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, f * c, t)


def to2d(x: torch.Tensor, c: int, f: int) -> torch.Tensor:
    """(B, f*c, T) -> (B, c, f, T): the exact inverse of `to1d`."""
    return x.reshape(x.shape[0], f, c, x.shape[-1]).permute(0, 2, 1, 3)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of (B, C, ...) ("channels_first"), eps 1e-6 as in IDRnD."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class WeightedAggregation(nn.Module):
    """`weigth1d`: y = sum_j softmax_j(w)[ch] * x_j over N tensors (B, C, T); w in R^{N x C}, initialised to 0, i.e.
    a uniform average. With N = 1 it is the identity (no parameter)."""

    def __init__(self, num_inputs: int, channels: int):
        super().__init__()
        self.num_inputs = num_inputs
        self.weight = nn.Parameter(torch.zeros(num_inputs, channels)) if num_inputs > 1 else None

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if len(xs) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} inputs, got {len(xs)}")
        if self.weight is None:
            return xs[0]
        w = torch.softmax(self.weight, dim=0)  # (N, C)
        return sum(w[j][None, :, None] * x for j, x in enumerate(xs))


# ----------------------------------------------------------------------------------------------------------------
# 2-D blocks
# ----------------------------------------------------------------------------------------------------------------


class ConvNeXtBlock2d(nn.Module):
    """convnext_like: grouped 3x3 -> BN -> GELU -> 1x1, plus skip."""

    def __init__(self, c: int, group_divisor: int):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 3, padding=1, groups=c // group_divisor)
        self.norm = nn.BatchNorm2d(c)
        self.pwconv = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwconv(F.gelu(self.norm(self.dwconv(x))))


class FrequencySE(nn.Module):
    """fwSE: mean over (c, T) -> Linear f->se -> ReLU -> Linear se->f -> sigmoid -> scale each frequency bin."""

    def __init__(self, f: int, se: int):
        super().__init__()
        self.squeeze = nn.Linear(f, se)
        self.excite = nn.Linear(se, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=(1, 3))))))  # (B, f)
        return x * s[:, None, :, None]


class ResBasicBlock2d(nn.Module):
    """basic_resnet: grouped 3x3 (no bias) -> 1x1 -> ReLU -> BN -> grouped 3x3 -> 1x1 -> BN -> [fwSE] -> + skip -> ReLU."""

    def __init__(self, c: int, f: int, group_divisor: int, fwse: bool):
        super().__init__()
        groups = c // group_divisor
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=groups)
        self.conv1pw = nn.Conv2d(c, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=groups)
        self.conv2pw = nn.Conv2d(c, c, 1)
        self.bn2 = nn.BatchNorm2d(c)
        self.se = FrequencySE(f, min(64, max(c, 32))) if fwse else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(F.relu(self.conv1pw(self.conv1(x))))
        out = self.se(self.bn2(self.conv2pw(self.conv2(out))))
        return F.relu(out + x)


def _block_2d(kind: str, c: int, f: int, group_divisor: int) -> nn.Module:
    if kind == "convnext_like":
        return ConvNeXtBlock2d(c, group_divisor)
    return ResBasicBlock2d(c, f, group_divisor, fwse=kind == "basic_resnet_fwse")


# ----------------------------------------------------------------------------------------------------------------
# 1-D time-context block
# ----------------------------------------------------------------------------------------------------------------


class ConvNeXtBlock1d(nn.Module):
    """Depthwise conv (kernel k, same padding) -> BN -> GELU -> 1x1, plus skip."""

    def __init__(self, c: int, kernel_size: int):
        super().__init__()
        self.dwconv = nn.Conv1d(c, c, kernel_size, padding=kernel_size // 2, groups=c)
        self.norm = nn.BatchNorm1d(c)
        self.pwconv = nn.Conv1d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwconv(F.gelu(self.norm(self.dwconv(x))))


class TransformerLayer(nn.Module):
    """Post-LN Transformer encoder layer on (B, C, T): x = LN(x + MHA(x)); x = LN(x + MLP(x)); MLP with GELU-tanh,
    no dropout (the wav2vec2-style layer used by IDRnD)."""

    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_dim, dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, T, C)
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        x = self.norm1(x + self.out(att))
        x = self.norm2(x + self.mlp(x))
        return x.transpose(1, 2)


class PositionalConv(nn.Module):
    """`att` variant's positional encoding: x + LN(depthwise conv k=59 (x))."""

    def __init__(self, c: int, kernel_size: int = 59):
        super().__init__()
        self.conv = nn.Conv1d(c, c, kernel_size, padding=kernel_size // 2, groups=c)
        self.norm = ChannelLayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv(x))


class TimeContextBlock(nn.Module):
    """1x1 down to hC -> LN -> tcm -> 1x1 up to C, plus skip.

    tcm `conv+att`: four 1-D ConvNeXt-like blocks (depthwise k = 7, 19, 31, 59), then a post-LN Transformer layer
    with MLP width hC. tcm `att`: positional depthwise conv k=59 + LN, then a Transformer layer with MLP 2*hC.
    """

    def __init__(self, channels: int, hidden: int, kind: str = "conv+att", heads: int = 4):
        super().__init__()
        self.down = nn.Sequential(nn.Conv1d(channels, hidden, 1), ChannelLayerNorm(hidden))
        if kind == "conv+att":
            self.tcm = nn.Sequential(*[ConvNeXtBlock1d(hidden, k) for k in (7, 19, 31, 59)],
                                     TransformerLayer(hidden, hidden, heads))
        else:
            self.tcm = nn.Sequential(PositionalConv(hidden), TransformerLayer(hidden, 2 * hidden, heads))
        self.up = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.tcm(self.down(x)))


# ----------------------------------------------------------------------------------------------------------------
# Stage, pooling, encoder
# ----------------------------------------------------------------------------------------------------------------


class ReDimNetStageBlock(nn.Module):
    """One stage on the 1-D stream: to2d(c, f) -> frequency-strided conv -> 2-D blocks -> [squeeze] -> to1d -> [1-D].

    Args:
        c, f: channels and frequency bins of the stage's input (c * f = C*F).
        stage: stride s, blocks n, conv_exp e, att_red r.
    Shapes: (B, C*F, T) -> (B, C*F, T).
    """

    def __init__(self, c: int, f: int, stage: ReDimNetStage, block_2d: str, block_1d: str, group_divisor: int,
                 heads: int):
        super().__init__()
        s, e = stage.stride, stage.conv_exp
        self.c_in, self.f_in = c, f
        self.c, self.f = c * s, f // s
        width = c * f
        self.pool = nn.Conv2d(c, s * c * e, kernel_size=(s, 1), stride=(s, 1))
        self.blocks = nn.Sequential(*[_block_2d(block_2d, self.c * e, self.f, group_divisor)
                                      for _ in range(stage.blocks)])
        self.squeeze = nn.Identity()
        if e != 1:  # back to c channels so that c * f stays C*F
            self.squeeze = nn.Sequential(
                nn.Conv2d(self.c * e, self.c, 3, padding=1, groups=self.c // group_divisor),
                nn.BatchNorm2d(self.c, eps=1e-6),
                nn.GELU(),
                nn.Conv2d(self.c, self.c, 1),
            )
        self.context = (TimeContextBlock(width, width // stage.att_red, block_1d, heads)
                        if stage.att_red is not None else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to2d(x, self.c_in, self.f_in)  # (B, c, f, T)
        x = self.squeeze(self.blocks(self.pool(x)))  # (B, s*c, f/s, T)
        return self.context(to1d(x))  # (B, C*F, T)


class ReDimNet(Encoder):
    """ReDimNet: log-mels (B, F, T) -> 192-d embedding, one (B, C*F, T) stream reshaped to 2-D inside each stage.

    Frames: the final aggregation (B, C*F, T); layers: the stem and stage outputs (B, stages + 1, T, C*F).

    Args:
        cfg: the architecture (a preset's, or the generic `redimnet` section).
        in_features: features.n_mels; must equal cfg.freq_bins.
        name: registry name used in error messages.
    """

    has_frames = True
    has_layers = True

    def __init__(self, cfg: ReDimNetConfig, in_features: int, name: str = "redimnet"):
        super().__init__()
        if in_features != cfg.freq_bins:
            raise ConfigError(f"features.n_mels: {name} expects {cfg.freq_bins} mel bands, got {in_features}")
        self.freq_bins, width = cfg.freq_bins, cfg.channels * cfg.freq_bins
        self.stem = nn.Sequential(nn.Conv2d(1, cfg.channels, 3, padding=1), ChannelLayerNorm(cfg.channels))
        c, f = cfg.channels, cfg.freq_bins
        self.stages, self.aggregations = nn.ModuleList(), nn.ModuleList()
        for i, stage in enumerate(cfg.stages):
            self.aggregations.append(WeightedAggregation(i + 1, width))
            block = ReDimNetStageBlock(c, f, stage, cfg.block_2d, cfg.block_1d, cfg.group_divisor, cfg.heads)
            self.stages.append(block)
            c, f = block.c, block.f
        self.final_aggregation = WeightedAggregation(len(cfg.stages) + 1, width)
        self.pooling = attentive_stats_pooling(width, cfg.pool_bottleneck, cfg.global_context)
        self.head = EmbeddingHead(self.pooling.out_dim, cfg.embed_dim, cfg.embedding_bn)
        self.embed_dim = cfg.embed_dim
        self.frame_dim = self.layer_dim = width
        self.num_layers = len(cfg.stages) + 1

    def forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stage outputs stacked: (B, F, T) -> (B, num_stages + 1, T, C*F)."""
        return torch.stack(self._outputs(x), dim=1).transpose(2, 3)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Final aggregated frame features: (B, F, T) -> (B, C*F, T)."""
        return self.final_aggregation(self._outputs(x))

    def frame_pooling(self) -> nn.Module:
        return self.pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(self.forward_frames(x)))

    def checkpoint_units(self) -> list[nn.Module]:
        """The stages, which activation checkpointing wraps (sslsv/encoders/checkpointing.py)."""
        return list(self.stages)

    def forward_with_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self._outputs(x)
        embedding = self.head(self.pooling(self.final_aggregation(outputs)))
        return embedding, torch.stack(outputs, dim=1).transpose(2, 3)

    def _outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 3 or x.shape[1] != self.freq_bins:
            raise ValueError(f"ReDimNet expects features (B, {self.freq_bins}, T), got {tuple(x.shape)}")
        outputs = [to1d(self.stem(x.unsqueeze(1)))]  # (B, C*F, T)
        for aggregate, stage in zip(self.aggregations, self.stages):
            outputs.append(stage(aggregate(outputs)))
        return outputs


# Tiny settings for registry-wide tests: 3 stages (one with conv_exp 2, one without 1-D block) at F = 12.
TINY_EXAMPLE = {
    "encoder": {"freq_bins": 12, "channels": 4, "group_divisor": 2,
                "stages": [{"stride": 1, "blocks": 1, "conv_exp": 1, "att_red": 4},
                           {"stride": 2, "blocks": 1, "conv_exp": 2, "att_red": 4},
                           {"stride": 3, "blocks": 1, "conv_exp": 1, "att_red": None}],
                "pool_bottleneck": 8, "embed_dim": 16},
    "features": {"n_mels": 12},
}


@ENCODERS.register("redimnet", config=ReDimNetConfig, example=TINY_EXAMPLE)
def redimnet(cfg: ReDimNetConfig, in_features: int) -> ReDimNet:
    """ReDimNet with a configurable stage table (defaults: B2)."""
    return ReDimNet(cfg, in_features, "redimnet")


def _preset(variant: str, cfg: ReDimNetPresetConfig, in_features: int) -> ReDimNet:
    return ReDimNet(preset_config(variant, cfg.embed_dim, cfg.embedding_bn), in_features, f"redimnet_{variant}")


# Presets: stage tables from wespeaker's ReDimNetB0..B6 (IDRnD ships its configs only inside its checkpoints),
# head from IDRnD (global-context ASTP -> BN -> Linear). "arith" = this file's exact parameter count.


@ENCODERS.register("redimnet_b0", config=ReDimNetPresetConfig)
def redimnet_b0(cfg: ReDimNetPresetConfig, in_features: int) -> ReDimNet:
    """ReDimNet-B0 (F=60, C=10, basic_resnet, gdiv 1); config: wespeaker ReDimNetB0; paper 1.0 M, arith 1.00 M."""
    return _preset("b0", cfg, in_features)


@ENCODERS.register("redimnet_b1", config=ReDimNetPresetConfig)
def redimnet_b1(cfg: ReDimNetPresetConfig, in_features: int) -> ReDimNet:
    """ReDimNet-B1 (F=72, C=12, convnext_like, gdiv 8); config: wespeaker ReDimNetB1; paper 2.2 M, arith 2.13 M."""
    return _preset("b1", cfg, in_features)


@ENCODERS.register("redimnet_b2", config=ReDimNetPresetConfig)
def redimnet_b2(cfg: ReDimNetPresetConfig, in_features: int) -> ReDimNet:
    """ReDimNet-B2 (F=72, C=16, convnext_like, gdiv 4); config: wespeaker ReDimNetB2; paper 4.7 M, arith 4.89 M."""
    return _preset("b2", cfg, in_features)


@ENCODERS.register("redimnet_b3", config=ReDimNetPresetConfig)
def redimnet_b3(cfg: ReDimNetPresetConfig, in_features: int) -> ReDimNet:
    """ReDimNet-B3 (F=72, C=16, basic+fwSE, gdiv 1); config: wespeaker ReDimNetB3; paper 3.0 M, arith 3.23 M."""
    return _preset("b3", cfg, in_features)


@ENCODERS.register("redimnet_b4", config=ReDimNetPresetConfig)
def redimnet_b4(cfg: ReDimNetPresetConfig, in_features: int) -> ReDimNet:
    """ReDimNet-B4 (F=72, C=32, basic+fwSE, gdiv 1); config: wespeaker ReDimNetB4; paper 6.3 M, arith 6.44 M."""
    return _preset("b4", cfg, in_features)


@ENCODERS.register("redimnet_b5", config=ReDimNetPresetConfig)
def redimnet_b5(cfg: ReDimNetPresetConfig, in_features: int) -> ReDimNet:
    """ReDimNet-B5 (F=72, C=32, basic+fwSE, gdiv 16); config: wespeaker ReDimNetB5; paper 9.2 M, arith 7.66 M."""
    return _preset("b5", cfg, in_features)


@ENCODERS.register("redimnet_b6", config=ReDimNetPresetConfig)
def redimnet_b6(cfg: ReDimNetPresetConfig, in_features: int) -> ReDimNet:
    """ReDimNet-B6 (F=72, C=32, basic_resnet, gdiv 32); config: wespeaker ReDimNetB6; paper 15.0 M, arith 15.02 M."""
    return _preset("b6", cfg, in_features)
