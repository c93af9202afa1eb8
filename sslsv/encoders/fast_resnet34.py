"""Fast ResNet-34 ("ResNetSE34L"; Chung et al., "In defence of metric learning for speaker recognition", 2020).

Reference implementation: clovaai/voxceleb_trainer `models/ResNetSE34L.py` (also theolepage/sslsv `ResNet34.py`
with base_dim 16). Half-width ResNet-34 with squeeze-excitation blocks on a log-mel input:
stem conv 7x7 (stride 2 in frequency) -> SE-BasicBlocks [3, 4, 6, 3] at widths [16, 32, 64, 128] -> frames
-> SAP/ASP/stats -> linear head. Measured: 1,437,078 parameters with SAP, 40 mels, 512-d (the reference's count,
docs/encoders.md); 0.447 GMACs per 2 s view at 40 mels. No layer-wise states (the stages differ in shape).

Frames (`forward_frames`, what the pooling reads), from the last stage's (B, C, F', T/4) map, F' = ceil(F / 8):
- `frequency: mean`: averaged over frequency, (B, C, T/4) (clovaai; theolepage/sslsv's SAP).
- `frequency: flatten`: channels and frequency flattened channel-major, (B, C * F', T/4) (theolepage/sslsv's
  `StatsPooling` in `ResNet34.py`: mean and std over time of every (channel, frequency) row, 2 * C * F' values).
- `frequency: auto` (default): `flatten` with `pooling: stats`, `mean` otherwise, as theolepage/sslsv does. The
  authors' Fast ResNet-34 with stats pooling then has exactly their parameter count: 2,010,262 at 40 mels
  (head 1280 -> 512) and 2,665,622 at 80 mels (2560 -> 512). `frequency: mean` with `stats` is the smaller
  x-vector-style alternative (mean and std of the frequency-averaged channels, 256 -> 512; 1,485,974 parameters).

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sslsv.config import ConfigError, require
from sslsv.encoders.base import Encoder
from sslsv.encoders.pooling import build_pooling
from sslsv.registry import ENCODERS, POOLINGS


@dataclass
class FastResNet34Config:
    base_width: int = 16  # widths are base, 2x, 4x, 8x
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    pooling: str = "sap"  # any registered pooling: sap, asp, stats, gap, gru, ...
    embed_dim: int = 512  # review, section 4.3 (clovaai default: 256)
    # false: no linear head, the representation is the pooling output (with `gru`, the last state of CPC's
    # aggregator, which Eq. (1) trains; with `gap`, the parameter-free mean of the frames); embed_dim must then
    # equal its size.
    head: bool = True
    se_reduction: int = 8
    final_bn: bool = False  # batch norm on the representation (off in the reference)
    # How the last stage's (C, F', T) map becomes the frames the pooling reads: `mean` over frequency (C per frame),
    # `flatten` channel-major (C * F' per frame, theolepage/sslsv's stats pooling), `auto`: flatten with `stats`,
    # mean otherwise (theolepage/sslsv ResNet34.py).
    frequency: Literal["auto", "mean", "flatten"] = "auto"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"encoder.pooling: unknown pooling '{self.pooling}' (registered: {', '.join(POOLINGS.names())})"
            )
        if self.base_width < 1 or self.embed_dim < 1:
            raise ConfigError("encoder.base_width: widths and embed_dim must be positive")
        require(min(self.layers) >= 1, "encoder.layers", "at least 1 block per stage", list(self.layers))
        require(self.se_reduction >= 1, "encoder.se_reduction", "at least 1", self.se_reduction)

    def flatten_frequency(self) -> bool:
        """True when the frames are the channel x frequency rows of the last stage (`frequency` resolved)."""
        if self.frequency == "auto":
            return self.pooling == "stats"
        return self.frequency == "flatten"


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)  # narrow test-sized models keep a non-empty bottleneck
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(x.mean(dim=(2, 3)))  # (B, C)
        return x * scale[:, :, None, None]


class SEBasicBlock(nn.Module):
    """conv3x3 -> ReLU -> BN -> conv3x3 -> BN -> SE, plus shortcut, then ReLU (ReLU before BN, as the reference)."""

    def __init__(self, in_channels: int, channels: int, stride: int | tuple[int, int], reduction: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SqueezeExcitation(channels, reduction)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class FastResNet34(Encoder):
    """Fast ResNet-34 with SE blocks (Chung et al., 2020); 1.44 M parameters with SAP at 40 mels -> 512.

    `in_features` (mels) sets F' = ceil(F / 8), the frequency size of the last stage, which `frequency: flatten`
    multiplies into the frame width.
    """

    has_frames = True
    # On CUDA the trainer keeps its 2-D convolutions channels_last (NHWC), the layout bf16/fp16 convolutions prefer;
    # a CPU keeps NCHW (see trainer.py: NHWC took 0.81x the CPU seconds there, but moves the demo's figures).
    channels_last = True

    def __init__(self, cfg: FastResNet34Config, in_features: int):
        super().__init__()
        widths = [cfg.base_width * m for m in (1, 2, 4, 8)]
        strides = [1, (2, 2), (2, 2), 1]
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 7, stride=(2, 1), padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, in_channels = [], widths[0]
        for width, stride, depth in zip(widths, strides, cfg.layers):
            blocks = [SEBasicBlock(in_channels, width, stride, cfg.se_reduction)]
            blocks += [SEBasicBlock(width, width, 1, cfg.se_reduction) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.flatten = cfg.flatten_frequency()
        frame_dim = widths[-1] * (self._frequency_size(in_features) if self.flatten else 1)
        self.pooling = build_pooling(cfg.pooling, frame_dim)
        if cfg.head:
            self.head = nn.Linear(self.pooling.out_dim, cfg.embed_dim)
        elif cfg.embed_dim != self.pooling.out_dim:
            raise ConfigError(f"encoder.embed_dim: {cfg.embed_dim}, but with head: false the representation is the "
                              f"{cfg.pooling} pooling output, {self.pooling.out_dim}-d here; set "
                              f"encoder.embed_dim: {self.pooling.out_dim}")
        else:
            self.head = nn.Identity()
        self.final_bn = nn.BatchNorm1d(cfg.embed_dim) if cfg.final_bn else nn.Identity()
        self.embed_dim = cfg.embed_dim
        self.frame_dim = frame_dim

    def _frequency_size(self, n_mels: int) -> int:
        """Frequency size F' of the last stage for `n_mels` input bands: the conv size arithmetic of the stem and
        of each stage's first (strided) convolution, floor((n + 2p - k) / s) + 1 (ceil(F / 8) for Fast ResNet-34)."""
        size = n_mels
        for conv in [self.stem[0]] + [stage[0].conv1 for stage in self.stages]:
            size = (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        return size

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the four stages, each (B, C_i, F_i, T_i), for multi-scale aggregation."""
        x = self.stem(x.unsqueeze(1))  # (B, 1, F, T) -> (B, 16, F/2, T)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        last = self.forward_stages(x)[-1]  # (B, C, F', T/4)
        if self.flatten:
            return last.flatten(1, 2)  # (B, C * F', T/4), row c * F' + f (theolepage/sslsv's view(N, -1, W))
        return last.mean(dim=2)  # (B, C, T/4): average over frequency

    def frame_pooling(self) -> nn.Module | None:
        return self.pooling

    def checkpoint_units(self) -> list[nn.Module]:
        """The stem and the SE residual blocks, which activation checkpointing wraps (sslsv/encoders/checkpointing.py);
        the stem keeps the largest map of the network otherwise (its convolution's output, at full time resolution)."""
        return [self.stem, *(block for stage in self.stages for block in stage)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.forward_frames(x)
        return self.final_bn(self.head(self.pooling(frames)))


@ENCODERS.register("fast_resnet34", config=FastResNet34Config,
                   example={"encoder": {"base_width": 4, "layers": [1, 1, 1, 1], "embed_dim": 32}})
def fast_resnet34(cfg: FastResNet34Config, in_features: int) -> FastResNet34:
    """Fast ResNet-34 (Chung et al., 2020): half-width SE-ResNet-34, SAP, 512-d; 1.44 M parameters."""
    return FastResNet34(cfg, in_features)
