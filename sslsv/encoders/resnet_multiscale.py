"""Fast ResNet-34 with multi-scale aggregation (MSFA / MSEA), with or without the Feature Pyramid Module.

Paper: Jung, Kye, Choi, Jung, Kim, "Improving Multi-Scale Aggregation Using Feature Pyramid Module for Robust
Speaker Verification of Variable-Duration Utterances", Interspeech 2020, arXiv 2004.03194. MSFA is Gao et al. 2019
and MSEA is Seo et al. 2019, as the paper names them (section 2). No public code of the paper is known; the FPM
follows the FPN of Lin et al. 2017 as the paper describes it (section 3.2). The trunk is this package's Fast ResNet-34 (`FastResNet34.forward_stages`), not the
paper's wider ResNet-34 of Table 1.

    trunk stages C1..C4 (B, C_i, F_i, T_i) -- 40 mels: 16x20xT, 32x10xT/2, 64x5xT/4, 128x5xT/4
    fpm != none: lateral 1x1 conv of every stage from the lowest selected one up to stage 4 -> fpm_channels (32);
        top-down from stage 4: M_4 = L_4, M_i = L_i + up(M_{i+1}); P_i = conv3x3(M_i) for each selected stage.
        up = bilinear interpolation ("fpm_b") or a transposed convolution ("fpm_tc"); where two stages share a
        resolution (Fast ResNet-34's stages 3 and 4) the top-down map is added without resampling.
    msfa: every selected map is brought to the coarsest selected resolution by a learned strided 3x3 conv
        (stride 2, as Gao et al. downsample stage 2), concatenated along channels, averaged over frequency, pooled
        once, FC -> embed_dim.
    msea: every selected map (with `pool_conv`, through a 1x1 conv first: section 3.1, "For MSEA, 1x1 convolutions
        are added before pooling"; to `pool_channels` channels when set, else keeping its width) is averaged over
        frequency and pooled on its own; the pooled vectors are concatenated, FC -> embed_dim.
    Without FPM, trunk stages above the highest selected one are not built. With FPM the pyramid always starts at
    stage 4 (the paper's top-down pathway starts from the top stage).

Frequency: every map is **averaged over frequency** before temporal pooling, as the Fast ResNet-34 does (the
paper does not say how SAP/LDE treat the frequency axis; its GAP averages over both axes, which is the same).

Measured parameters (40 mels, 512-d, SAP per scale, stages (2, 3, 4); trunk 1,354,390; single-scale Fast
ResNet-34 1,437,078), tests/encoders/test_resnet_multiscale.py and docs/encoders.md:
    msea: no FPM 1,491,542   fpm_b 1,442,326   fpm_tc 1,451,574
    msea + pool_conv: no FPM 1,513,270   fpm_b 1,445,494   fpm_tc 1,454,742 (configs/simclr/fast_resnet34_fpm.yml)
    msfa: no FPM 1,529,462   fpm_b 1,457,718   fpm_tc 1,466,966
The paper gives counts only for its own wider ResNet-34 (Table 2); as there, the FPM variants are smaller than
MSA without FPM.

Paper settings not given and chosen here: FPM-TC's transposed conv is 3x3, stride 2, padding 1 (sized to the
lateral map); lateral, smoothing, MSEA pooling and MSFA convs have a bias and no BN/activation (as in FPN); the
width of MSEA's 1x1 convs before SAP/GAP is not given, so `pool_conv` alone keeps each map's width (32 for the
FPM's P_i). The paper's LDE system (section 4.2: "Before the LDE layer, a 1x1 convolution is applied to change the
number of channels to 64") is `pooling: lde, pool_channels: 64, share_pooling: true`.

Deviations: MSFA aligns to the coarsest selected resolution (on Fast ResNet-34, stages 3 and 4 share it, so only
stage 2 is resampled, as in Gao et al.; the bilinear upsampling of Gao's stage 4 is not needed); with
`share_pooling` one pooling serves every scale but the FC is applied once to the concatenation (the paper also
shares the FC for LDE, which leaves the aggregation unspecified).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, require
from sslsv.encoders.fast_resnet34 import FastResNet34, FastResNet34Config
from sslsv.encoders.pooling import build_pooling
from sslsv.registry import ENCODERS, POOLINGS


@dataclass
class FastResNet34MSConfig:
    aggregation: Literal["msfa", "msea"] = "msea"  # the paper keeps MSEA after Table 2
    fpm: Literal["none", "fpm_b", "fpm_tc"] = "none"
    # 1-based trunk stages to aggregate (paper section 5.1: C_3, C_4, C_5, the outputs of stages 2, 3, 4 of Table 1)
    stages: tuple[int, ...] = (2, 3, 4)
    fpm_channels: int = 32  # lateral width (paper section 3.2: 32, the width of its lowest stage)
    pooling: str = "sap"  # any registered pooling: gap, sap, asp, astp, stats, lde
    # msea: a 1x1 conv before each pooling (paper section 3.1); keeps each map's width unless pool_channels is set
    pool_conv: bool = False
    pool_channels: int = 0  # msea: width of that 1x1 conv (> 0 turns it on; 0: pool_conv's own width; LDE: 64)
    share_pooling: bool = False  # msea: one pooling for every scale (paper: LDE shared, SAP not); equal widths
    embed_dim: int = 512
    # Fast ResNet-34 trunk
    base_width: int = 16
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    se_reduction: int = 8
    final_bn: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"encoder.pooling: unknown pooling '{self.pooling}' (registered: {', '.join(POOLINGS.names())})"
            )
        if not self.stages or any(s not in (1, 2, 3, 4) for s in self.stages):
            raise ConfigError(f"encoder.stages: must be a non-empty list of stages in 1..4, got {list(self.stages)}")
        if list(self.stages) != sorted(set(self.stages)):
            raise ConfigError(f"encoder.stages: must be increasing without repeats, got {list(self.stages)}")
        for key in ("fpm_channels", "embed_dim", "base_width", "se_reduction"):
            if getattr(self, key) < 1:
                raise ConfigError(f"encoder.{key}: must be positive")
        require(min(self.layers) >= 1, "encoder.layers", "at least 1 block per stage", list(self.layers))
        if self.pool_channels < 0:
            raise ConfigError("encoder.pool_channels: must be >= 0 (0: no 1x1 conv before pooling)")
        if self.aggregation == "msfa" and (self.pool_conv or self.pool_channels or self.share_pooling):
            key = "pool_conv" if self.pool_conv else "pool_channels" if self.pool_channels else "share_pooling"
            raise ConfigError(f"encoder.{key}: only used with aggregation 'msea' (msfa pools once)")
        if self.share_pooling and len(set(self.scale_widths())) > 1:
            raise ConfigError(
                f"encoder.share_pooling: needs equal widths at every scale, got {self.scale_widths()}; "
                "use an FPM or set pool_channels"
            )

    def scale_widths(self) -> list[int]:
        """Channels of each selected scale as it enters the pooling (msea) or the concatenation (msfa)."""
        if self.pool_channels:
            return [self.pool_channels] * len(self.stages)
        if self.fpm != "none":
            return [self.fpm_channels] * len(self.stages)
        return [self.base_width * 2 ** (s - 1) for s in self.stages]


class FastResNet34MultiScale(FastResNet34):
    """Fast ResNet-34 with multi-scale aggregation (MSFA/MSEA) and optional Feature Pyramid Module (Jung et al.)."""

    def __init__(self, cfg: FastResNet34MSConfig, in_features: int):
        trunk = FastResNet34Config(base_width=cfg.base_width, layers=cfg.layers, pooling="gap",
                                   embed_dim=cfg.embed_dim, se_reduction=cfg.se_reduction, final_bn=cfg.final_bn)
        super().__init__(trunk, in_features)  # stem, stages, final_bn; pooling and head are replaced below
        self.cfg = cfg
        self.selected = [s - 1 for s in cfg.stages]  # 0-based
        widths = [cfg.base_width * m for m in (1, 2, 4, 8)]

        if cfg.fpm == "none":
            # stages above the highest selected one would get no gradient: drop them (forward_stages stops early)
            self.stages = self.stages[: max(cfg.stages)]

        # Cumulative (frequency, time) stride of each stage relative to the stem output.
        strides, cum = [], (1, 1)
        for stage in self.stages:
            s = stage[0].conv1.stride
            cum = (cum[0] * s[0], cum[1] * s[1])
            strides.append(cum)
        self.strides = strides

        # Feature Pyramid Module
        self.fpm = cfg.fpm
        if cfg.fpm != "none":
            low, d = self.selected[0], cfg.fpm_channels
            self.levels = list(range(low, 4))
            self.laterals = nn.ModuleList(nn.Conv2d(widths[i], d, 1) for i in self.levels)
            # upsamplers[j] maps level levels[j+1] onto level levels[j]
            self.upsamplers = nn.ModuleList(self._upsampler(i) for i in self.levels[:-1])
            self.smoothing = nn.ModuleList(nn.Conv2d(d, d, 3, padding=1) for _ in self.selected)

        # Widths of the selected maps (C_i or P_i), then as they enter the pooling (after msea's 1x1 convs).
        map_widths = [cfg.fpm_channels if cfg.fpm != "none" else widths[i] for i in self.selected]
        pool_widths = cfg.scale_widths()
        self.pooling = None  # the trunk's single-scale pooling is not used
        if cfg.aggregation == "msfa":
            coarsest = self.strides[self.selected[-1]]
            self.align = nn.ModuleList(
                self._downsampler(c, self.strides[i], coarsest) for c, i in zip(map_widths, self.selected)
            )
            self.poolings = nn.ModuleList([build_pooling(cfg.pooling, sum(map_widths))])
            head_in = self.poolings[0].out_dim
            self.frame_dim = sum(map_widths)
        else:
            conv = cfg.pool_conv or cfg.pool_channels > 0
            self.projections = nn.ModuleList(
                nn.Conv2d(c, cfg.pool_channels or c, 1) if conv else nn.Identity() for c in map_widths
            )
            shared = pool_widths[:1] if cfg.share_pooling else pool_widths
            self.poolings = nn.ModuleList(build_pooling(cfg.pooling, w) for w in shared)
            head_in = sum(self._pooling(k).out_dim for k in range(len(pool_widths)))
            self.frame_dim = pool_widths[-1]
        self.head = nn.Linear(head_in, cfg.embed_dim)

    def _pooling(self, k: int) -> nn.Module:
        """The pooling of scale k (the single one when shared or with msfa)."""
        return self.poolings[0] if len(self.poolings) == 1 else self.poolings[k]

    def _upsampler(self, level: int) -> nn.Module:
        (f_hi, t_hi), (f_lo, t_lo) = self.strides[level + 1], self.strides[level]
        ratio = (f_hi // f_lo, t_hi // t_lo)
        if ratio == (1, 1) or self.fpm == "fpm_b":
            return nn.Identity()  # fpm_b resamples with F.interpolate in forward
        d = self.cfg.fpm_channels
        kernel = (2 * ratio[0] - 1, 2 * ratio[1] - 1)
        return nn.ConvTranspose2d(d, d, kernel, stride=ratio, padding=(ratio[0] - 1, ratio[1] - 1))

    @staticmethod
    def _downsampler(channels: int, stride: tuple[int, int], target: tuple[int, int]) -> nn.Module:
        ratio = (target[0] // stride[0], target[1] // stride[1])
        if ratio == (1, 1):
            return nn.Identity()
        # kernel 2r-1, padding r-1, stride r: output ceil(n / r), the trunk's own size arithmetic
        kernel = (2 * ratio[0] - 1, 2 * ratio[1] - 1)
        return nn.Conv2d(channels, channels, kernel, stride=ratio, padding=(ratio[0] - 1, ratio[1] - 1))

    def _pyramid(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """Top-down pathway with lateral connections; returns P for each selected stage, (B, d, F_i, T_i)."""
        merged: dict[int, torch.Tensor] = {}
        top = None
        for j in reversed(range(len(self.levels))):
            level = self.levels[j]
            lateral = self.laterals[j](stages[level])  # (B, d, F_i, T_i)
            if top is not None:
                size = lateral.shape[-2:]
                if self.fpm == "fpm_b" and top.shape[-2:] != size:
                    top = F.interpolate(top, size=size, mode="bilinear", align_corners=False)
                elif isinstance(self.upsamplers[j], nn.ConvTranspose2d):
                    top = self.upsamplers[j](top, output_size=size)
                lateral = lateral + top
            merged[level] = top = lateral
        return [smooth(merged[i]) for smooth, i in zip(self.smoothing, self.selected)]

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The selected multi-scale maps (C_i, or P_i with the FPM), each (B, C, F_i, T_i)."""
        stages = self.forward_stages(x)
        if self.fpm != "none":
            return self._pyramid(stages)
        return [stages[i] for i in self.selected]

    def forward_scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Frequency-averaged sequences as they enter the pooling, one per scale, (B, C, T_i)."""
        maps = self.forward_maps(x)
        if self.cfg.aggregation == "msfa":
            return [torch.cat([a(m) for a, m in zip(self.align, maps)], dim=1).mean(dim=2)]
        return [p(m).mean(dim=2) for p, m in zip(self.projections, maps)]

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """MSFA: the aggregated sequence (B, sum C_i, T_coarsest). MSEA: the top scale's sequence (B, C, T_top)."""
        return self.forward_scales(x)[-1]

    def frame_pooling(self) -> nn.Module | None:
        """MSFA: its single pooling, which reads `forward_frames`; MSEA: None (the representation pools every
        scale)."""
        return self.poolings[0] if self.cfg.aggregation == "msfa" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self._pooling(k)(s) for k, s in enumerate(self.forward_scales(x))]  # each (B, out_dim_k)
        return self.final_bn(self.head(torch.cat(pooled, dim=1)))  # (B, embed_dim)


@ENCODERS.register("fast_resnet34_ms", config=FastResNet34MSConfig,
                   example={"encoder": {"aggregation": "msea", "fpm": "fpm_tc", "fpm_channels": 8, "base_width": 4,
                                        "layers": [1, 1, 1, 1], "embed_dim": 24}})
def fast_resnet34_ms(cfg: FastResNet34MSConfig, in_features: int) -> FastResNet34MultiScale:
    """Fast ResNet-34 with multi-scale aggregation (MSFA/MSEA) and optional FPM (Jung et al. 2020)."""
    return FastResNet34MultiScale(cfg, in_features)
