"""ECAPA-TDNN (Desplanques, Thienpondt, Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and
Aggregation in TDNN Based Speaker Verification", Interspeech 2020, arXiv 2005.07143).

Reference implementation (read, not copied): theolepage/sslsv `sslsv/encoders/ECAPATDNN.py`, which follows
SpeechBrain's `speechbrain/lobes/models/ECAPA_TDNN.py`. Layout:

    TDNN(F -> C, k=5)                                   TDNN block = Conv1d ("same", reflect) -> ReLU -> BN
    3 x SE-Res2Block(C, k=3, dilation 2, 3, 4)          1x1 TDNN -> Res2Net(scale 8) -> 1x1 TDNN -> SE -> + x
    MFA: concat(3 block outputs) -> TDNN 1x1 -> C_last
    ASP with global context -> BN(2 C_last) -> 1x1 conv -> embed_dim

Measured parameter counts (tests/encoders/test_ecapa_tdnn.py; published/arith figures in brackets):
    ecapa_tdnn_c512   C=512,  C_last=1536, 80 mels -> 192:  6,194,048  [6,194,048; paper "6.2 M"]
    ecapa_tdnn_c1024  C=1024, C_last=1536, 80 mels -> 192: 14,660,416  [14,660,416; "14.7 M"]
    ecapa_tdnn        C=1024, C_last=3072, 40 mels -> 512: 22,529,152  [22,529,152; sslsv "22.5 M"]

Deviations from the paper (all shared with the SpeechBrain/sslsv reference):
- each SE-Res2Block takes the previous block's output, not the sum of all previous outputs (paper Fig. 2);
- TDNN blocks are Conv -> ReLU -> BN, and the attention of the pooling is Conv -> ReLU -> BN -> tanh -> Conv;
- the output layer is BN(2 C_last) -> 1x1 conv (no final BN on the embedding).

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslsv.config import ConfigError
from sslsv.encoders.base import Encoder
from sslsv.encoders.pooling import ContextAttentiveStatisticsPooling
from sslsv.registry import ENCODERS

KERNELS = (5, 3, 3, 3, 1)  # first TDNN, three SE-Res2Blocks, MFA
DILATIONS = (1, 2, 3, 4, 1)


@dataclass
class ECAPATDNNConfig:
    """Defaults: sslsv's ECAPA-TDNN-1024 (channels [1024 x 4, 3072], 512-d; the review's 22.5 M model)."""

    channels: int = 1024  # C: width of the first TDNN and the three SE-Res2Blocks
    last_channels: int = 3072  # C_last: output of the multi-layer feature aggregation (MFA)
    scale: int = 8  # Res2Net scale (number of channel groups)
    se_channels: int = 128  # squeeze-excitation bottleneck
    attention_channels: int = 128  # bottleneck of the attentive statistics pooling
    global_context: bool = True  # pooling attention sees the utterance mean and std
    embed_dim: int = 512

    def __post_init__(self) -> None:
        for key in ("channels", "last_channels", "se_channels", "attention_channels", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"encoder.{key}: must be positive")
        if self.scale < 2:
            raise ConfigError("encoder.scale: must be at least 2")
        if self.channels % self.scale:
            raise ConfigError(f"encoder.channels: must be divisible by scale ({self.channels} % {self.scale} != 0)")


@dataclass
class ECAPATDNNC512Config(ECAPATDNNConfig):
    """The paper's small model (Table 2, C=512; "6.2 M"), 192-d."""

    channels: int = 512
    last_channels: int = 1536
    embed_dim: int = 192


@dataclass
class ECAPATDNNC1024Config(ECAPATDNNConfig):
    """The paper's large model (Table 2, C=1024; "14.7 M" in most repositories), 192-d."""

    channels: int = 1024
    last_channels: int = 1536
    embed_dim: int = 192


class TDNNBlock(nn.Sequential):
    """Conv1d with "same" reflect padding -> ReLU -> BN: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding=padding,
                      padding_mode="reflect"),
            nn.ReLU(),
            nn.BatchNorm1d(out_channels),
        )


class Res2NetBlock(nn.Module):
    """Res2Net (Gao et al. 2019): split C into `scale` groups; y1 = x1, y2 = K2(x2), yi = Ki(xi + y(i-1))."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.convs = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.chunk(x, self.scale, dim=1)  # scale x (B, C/scale, T)
        outputs = [chunks[0]]
        y = None
        for chunk, conv in zip(chunks[1:], self.convs):
            y = conv(chunk if y is None else chunk + y)
            outputs.append(y)
        return torch.cat(outputs, dim=1)  # (B, C, T)


class SEBlock1d(nn.Module):
    """Squeeze-excitation over time: mean_t -> 1x1 C->se -> ReLU -> 1x1 se->C -> sigmoid -> rescale channels."""

    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv1d(channels, se_channels, 1), nn.ReLU(), nn.Conv1d(se_channels, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=2, keepdim=True))  # (B, C, T) * (B, C, 1)


class SERes2Block(nn.Module):
    """1x1 TDNN -> Res2Net (k, dilation) -> 1x1 TDNN -> SE, plus the identity shortcut."""

    def __init__(self, channels: int, scale: int, se_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(
            TDNNBlock(channels, channels, 1),
            Res2NetBlock(channels, scale, kernel_size, dilation),
            TDNNBlock(channels, channels, 1),
            SEBlock1d(channels, se_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class ECAPATDNN(Encoder):
    """ECAPA-TDNN (Desplanques et al., 2020): SE-Res2Blocks, multi-layer aggregation, attentive stats pooling.

    Frames: the MFA output (B, C_last, T); layers: the first TDNN block and the three SE-Res2Blocks (B, 4, T, C).

    Args:
        cfg: widths (channels C, last_channels C_last), Res2Net scale, SE and attention bottlenecks, whether the
            pooling uses global context, embedding size.
        in_features: F, number of mel bands of the input (B, F, T).
    """

    has_frames = True
    has_layers = True

    def __init__(self, cfg: ECAPATDNNConfig, in_features: int):
        super().__init__()
        C = cfg.channels
        self.stem = TDNNBlock(in_features, C, KERNELS[0], DILATIONS[0])
        self.blocks = nn.ModuleList(
            SERes2Block(C, cfg.scale, cfg.se_channels, k, d) for k, d in zip(KERNELS[1:4], DILATIONS[1:4])
        )
        self.mfa = TDNNBlock(3 * C, cfg.last_channels, KERNELS[4], DILATIONS[4])
        self.pooling = ContextAttentiveStatisticsPooling(
            cfg.last_channels, cfg.attention_channels, cfg.global_context, tdnn=True
        )
        self.pooling_norm = nn.BatchNorm1d(self.pooling.out_dim)
        self.head = nn.Conv1d(self.pooling.out_dim, cfg.embed_dim, 1)
        self.embed_dim = cfg.embed_dim
        self.frame_dim = cfg.last_channels
        self.num_layers, self.layer_dim = 1 + len(self.blocks), C

    def _block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the first TDNN block and of the three SE-Res2Blocks: 4 tensors (B, C, T)."""
        x = self.stem(x)  # (B, F, T) -> (B, C, T)
        outputs = [x]
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def _aggregate(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """MFA output (B, C_last, T): the three SE-Res2Block outputs concatenated and mixed by a 1x1 TDNN."""
        return self.mfa(torch.cat(outputs[1:], dim=1))  # (B, 3C, T) -> (B, C_last, T)

    def _embed(self, frames: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling_norm(self.pooling(frames))  # (B, 2 C_last)
        return self.head(pooled.unsqueeze(2)).squeeze(2)  # (B, embed_dim)

    def forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        """The first TDNN block and the three SE-Res2Blocks stacked: (B, F, T) -> (B, 4, T, C)."""
        return torch.stack(self._block_outputs(x), dim=1).transpose(2, 3)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        return self._aggregate(self._block_outputs(x))

    def frame_pooling(self) -> nn.Module:
        return self.pooling

    def checkpoint_units(self) -> list[nn.Module]:
        """The SE-Res2Blocks, which activation checkpointing wraps (sslsv/encoders/checkpointing.py)."""
        return list(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(self.forward_frames(x))

    def forward_with_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self._block_outputs(x)
        return self._embed(self._aggregate(outputs)), torch.stack(outputs, dim=1).transpose(2, 3)


@ENCODERS.register("ecapa_tdnn", config=ECAPATDNNConfig,
                   example={"encoder": {"channels": 32, "last_channels": 96, "se_channels": 8,
                                        "attention_channels": 8, "embed_dim": 16}})
def ecapa_tdnn(cfg: ECAPATDNNConfig, in_features: int) -> ECAPATDNN:
    """ECAPA-TDNN, configurable; defaults C=1024, C_last=3072, 512-d (sslsv's 22.5 M at 40 mels)."""
    return ECAPATDNN(cfg, in_features)


@ENCODERS.register("ecapa_tdnn_c512", config=ECAPATDNNC512Config)
def ecapa_tdnn_c512(cfg: ECAPATDNNC512Config, in_features: int) -> ECAPATDNN:
    """ECAPA-TDNN C=512, C_last=1536, 192-d (6.2 M at 80 mels)."""
    return ECAPATDNN(cfg, in_features)


@ENCODERS.register("ecapa_tdnn_c1024", config=ECAPATDNNC1024Config)
def ecapa_tdnn_c1024(cfg: ECAPATDNNC1024Config, in_features: int) -> ECAPATDNN:
    """ECAPA-TDNN C=1024, C_last=1536, 192-d (14.7 M at 80 mels)."""
    return ECAPATDNN(cfg, in_features)
