"""SV-Mixer (Heo et al., "SV-Mixer: Replacing the Transformer Encoder with Lightweight MLPs for Self-Supervised Model
Compression in Speaker Verification", ASRU 2025, arXiv 2509.14136).

Reference implementation: the paper PDF in Jungwoo4021/SV-Mixer (no code there) and dayflys/SSRFNet
`experiments/train_code/models/{svmixer,modules}.py` @b8d272d.

Waveform (B, S) -> WavLM conv front-end (7 x Conv1d 512, kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2; 20 ms frames,
3 s -> T = 149) -> LN -> Linear 512 -> H = 1024 -> dropout -> L = 12 mixer blocks. Each block:
  token mixer (Local-Global Mixing):  x += drop( dw7 -> GELU -> dw3 (LN x)  +  global_time_mixer(LN x) )
  channel mixer: h = LN x;  m = up_T(gMLP(avgpool2(h))) + gMLP(h)  (grouped 1x1 MLPs H -> 4H -> H, H/128 groups);
                 x += drop( 1x1(GELU(grouped conv3(m))) )
`forward_layers` returns the 13 states (each block's input, then the final LN output): (B, L+1, T, H).

Measured: 3,745,969 parameters and 0.632 GMACs per block for 3 s in "linear" mode (paper: 3.75 M / 0.63 G);
49.68 M for the whole L = 12 stack without a back-end (CNN 4.20 M, projection 0.53 M). "conv" mode: 3,568,221
parameters per block. The registered `sv_mixer` encoder adds a learnable softmax-weighted layer sum, ASTP and a
Linear to `embed_dim`.

Deviations:
- `time_mixing="conv"` (the DEFAULT) replaces the paper's time-axis Linear T -> 4T -> T, which fixes T = 149 (3 s),
  with its length-agnostic analogue: two convolutions over time shared by all channels (1 -> 4 -> 1 channels,
  kernel `time_kernel` = 75, so the branch sees 149 frames, the paper's 3-s window). It keeps the branch's
  structure (per-channel-shared, 4x expansion, GELU) but is translation-equivariant instead of position-specific,
  and accepts any length. `time_mixing="linear"` is the paper's layer; with T != max_frames it raises
  (`length_policy="error"`) or zero-pads the frames to a multiple of max_frames and mixes each chunk
  (`length_policy="pad"`).
- The multi-scale branch needs T >= 2 frames (about 45 ms of audio); shorter inputs raise.
- No pretrained teacher: the model trains from scratch with the toolkit's objectives, or is distilled OS-KDFT style
  from a local run of any layer-wise model with the `os_kdft` method (sslsv/methods/os_kdft.py); the paper
  distils WavLM-Large, which cannot be downloaded here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError
from sslsv.encoders.base import Encoder
from sslsv.encoders.blocks import attentive_stats_pooling
from sslsv.registry import ENCODERS

CONV_KERNELS = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)


@dataclass
class SVMixerConfig:
    conv_channels: int = 512  # WavLM conv front-end width
    hidden_size: int = 1024  # H (WavLM-Large width, paper section 3)
    layers: int = 12  # L
    group_dim: int = 128  # channels per group in the channel mixer: H / 128 = 8 groups
    token_expansion: int = 4  # global time branch T -> 4T -> T
    channel_expansion: int = 4  # channel MLPs H -> 4H -> H
    dropout: float = 0.1
    time_mixing: Literal["linear", "conv"] = "conv"  # "linear" is the paper's; "conv" the length-agnostic default
    max_frames: int = 149  # "linear": T of the time-axis Linear (3 s at 16 kHz)
    length_policy: Literal["error", "pad"] = "error"  # "linear" with T != max_frames: raise, or pad and chunk
    time_kernel: int = 75  # "conv": kernel of the two shared time convolutions (odd)
    embed_dim: int = 192  # `sv_mixer` encoder: weighted layer sum -> ASTP -> Linear -> embed_dim
    pool_bottleneck: int = 128

    def __post_init__(self) -> None:
        for key in ("conv_channels", "hidden_size", "layers", "group_dim", "token_expansion", "channel_expansion",
                    "max_frames", "embed_dim", "pool_bottleneck"):
            if getattr(self, key) < 1:
                raise ConfigError(f"encoder.{key}: must be positive")
        if self.hidden_size % self.group_dim:
            raise ConfigError(f"encoder.group_dim: {self.group_dim} does not divide hidden_size {self.hidden_size}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("encoder.dropout: must be in [0, 1)")
        if self.time_kernel < 1 or self.time_kernel % 2 == 0:
            raise ConfigError(f"encoder.time_kernel: must be odd and positive, got {self.time_kernel}")


def conv_frames(num_samples: int) -> int:
    """Frames the WavLM conv front-end produces for S samples (400 samples -> 1; 48000 -> 149)."""
    n = num_samples
    for k, s in zip(CONV_KERNELS, CONV_STRIDES):
        n = (n - k) // s + 1
    return n


class ConvFeatureExtractor(nn.Module):
    """WavLM's front-end: Conv1d (no bias) -> [GroupNorm(C groups) on layer 1] -> GELU, seven times."""

    def __init__(self, channels: int):
        super().__init__()
        layers, in_ch = [], 1
        for i, (k, s) in enumerate(zip(CONV_KERNELS, CONV_STRIDES)):
            layers.append(nn.Conv1d(in_ch, channels, k, stride=s, bias=False))
            if i == 0:
                layers.append(nn.GroupNorm(channels, channels))
            layers.append(nn.GELU())
            in_ch = channels
        self.layers = nn.Sequential(*layers)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.layers(wave.unsqueeze(1))  # (B, S) -> (B, C, T)


class TimeLinearMixer(nn.Module):
    """The paper's global branch: Linear over time T -> eT -> T (GELU), T fixed at `max_frames`.

    Shapes: (B, H, T) -> (B, H, T). With `length_policy="pad"`, T is zero-padded to a multiple of max_frames and each
    chunk is mixed on its own; the output is cropped back to T.
    """

    def __init__(self, max_frames: int, expansion: int, length_policy: str):
        super().__init__()
        self.max_frames, self.length_policy = max_frames, length_policy
        self.fc1 = nn.Linear(max_frames, expansion * max_frames)
        self.fc2 = nn.Linear(expansion * max_frames, max_frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t = x.shape
        m = self.max_frames
        if t == m:
            return self.fc2(F.gelu(self.fc1(x)))
        if self.length_policy == "error":
            raise ValueError(
                f"SV-Mixer time_mixing='linear' is fixed at max_frames={m} frames ({(m + 1) * 0.02:.2f} s of audio), "
                f"got {t} frames; use 3-s crops, set length_policy='pad', or use time_mixing='conv'"
            )
        chunks = -(-t // m)
        x = F.pad(x, (0, chunks * m - t)).view(b, h, chunks, m)
        return self.fc2(F.gelu(self.fc1(x))).reshape(b, h, chunks * m)[..., :t]


class TimeConvMixer(nn.Module):
    """Length-agnostic global branch (deviation): Conv1d(1 -> e, k) -> GELU -> Conv1d(e -> 1, k) over time, shared by
    all channels, as the paper's Linear is. Shapes: (B, H, T) -> (B, H, T)."""

    def __init__(self, expansion: int, kernel_size: int):
        super().__init__()
        self.conv1 = nn.Conv1d(1, expansion, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(expansion, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t = x.shape
        y = self.conv2(F.gelu(self.conv1(x.reshape(b * h, 1, t))))
        return y.view(b, h, t)


class LocalGlobalMixing(nn.Module):
    """Token mixer: x + dropout(local(LN x) + global(LN x)); local = depthwise k7 -> GELU -> depthwise k3."""

    def __init__(self, cfg: SVMixerConfig):
        super().__init__()
        h = cfg.hidden_size
        self.norm = nn.LayerNorm(h)
        self.local1 = nn.Conv1d(h, h, 7, padding=3, groups=h)
        self.local2 = nn.Conv1d(h, h, 3, padding=1, groups=h)
        if cfg.time_mixing == "linear":
            self.global_mix: nn.Module = TimeLinearMixer(cfg.max_frames, cfg.token_expansion, cfg.length_policy)
        else:
            self.global_mix = TimeConvMixer(cfg.token_expansion, cfg.time_kernel)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)  # (B, H, T)
        y = self.local2(F.gelu(self.local1(h))) + self.global_mix(h)
        return x + self.dropout(y).transpose(1, 2)


class ChannelMixing(nn.Module):
    """Channel mixer: multi-scale mixing (half-rate and full-rate grouped MLPs, summed) then group channel mixing
    (grouped conv k3 -> GELU -> full 1x1), dropout, residual."""

    def __init__(self, cfg: SVMixerConfig, dropout: float):
        super().__init__()
        h, g, wide = cfg.hidden_size, cfg.hidden_size // cfg.group_dim, cfg.channel_expansion * cfg.hidden_size
        self.norm = nn.LayerNorm(h)
        self.low1, self.low2 = nn.Conv1d(h, wide, 1, groups=g), nn.Conv1d(wide, h, 1, groups=g)
        self.full1, self.full2 = nn.Conv1d(h, wide, 1, groups=g), nn.Conv1d(wide, h, 1, groups=g)
        self.group_mix = nn.Conv1d(h, h, 3, padding=1, groups=g)
        self.channel_mix = nn.Conv1d(h, h, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)  # (B, H, T)
        t = h.shape[-1]
        if t < 2:
            raise ValueError("SV-Mixer needs at least 2 frames (about 45 ms of audio)")
        low = self.low2(F.gelu(self.low1(F.avg_pool1d(h, 2))))  # (B, H, T // 2)
        low = F.interpolate(low, size=t, mode="linear", align_corners=False)
        y = low + self.full2(F.gelu(self.full1(h)))
        y = self.channel_mix(F.gelu(self.group_mix(y)))
        return x + self.dropout(y).transpose(1, 2)


class MixerBlock(nn.Module):
    def __init__(self, cfg: SVMixerConfig, last: bool):
        super().__init__()
        self.token = LocalGlobalMixing(cfg)
        self.channel = ChannelMixing(cfg, 0.0 if last else cfg.dropout)  # no dropout in the last block (reference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(self.token(x))


class SVMixerBackbone(nn.Module):
    """Conv front-end + projection + L mixer blocks; `forward_layers`: waveform (B, S) -> states (B, L+1, T, H)."""

    def __init__(self, cfg: SVMixerConfig):
        super().__init__()
        self.features = ConvFeatureExtractor(cfg.conv_channels)
        self.projection = nn.Sequential(nn.LayerNorm(cfg.conv_channels), nn.Linear(cfg.conv_channels, cfg.hidden_size),
                                        nn.Dropout(cfg.dropout))
        self.blocks = nn.ModuleList([MixerBlock(cfg, i == cfg.layers - 1) for i in range(cfg.layers)])
        self.final_norm = nn.LayerNorm(cfg.hidden_size)
        self.hidden_size, self.num_layers = cfg.hidden_size, cfg.layers + 1

    def forward_layers(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"SV-Mixer expects waveforms (B, S), got {tuple(wave.shape)}")
        if wave.shape[1] < 400:
            raise ValueError(f"SV-Mixer needs at least 400 samples (one 25 ms frame), got {wave.shape[1]}")
        x = self.projection(self.features(wave).transpose(1, 2))  # (B, T, H)
        states = []
        for block in self.blocks:
            states.append(x)
            x = block(x)
        states.append(self.final_norm(x))
        return torch.stack(states, dim=1)  # (B, L+1, T, H)


class SVMixer(Encoder):
    """SV-Mixer encoder: states -> softmax-weighted layer sum -> ASTP -> Linear -> embed_dim.

    Frames: the weighted layer sum (B, H, T); layers: the backbone's states (B, L+1, T, H).

    Args:
        cfg: the `encoder` section.
        in_features: unused (the model reads the waveform).
    """

    input_kind = "waveform"
    has_frames = True
    has_layers = True

    def __init__(self, cfg: SVMixerConfig, in_features: int = 0):
        super().__init__()
        self.backbone = SVMixerBackbone(cfg)
        self.layer_weights = nn.Parameter(torch.zeros(cfg.layers + 1))  # uniform at init (SUPERB-style)
        self.pooling = attentive_stats_pooling(cfg.hidden_size, cfg.pool_bottleneck)
        self.linear = nn.Linear(self.pooling.out_dim, cfg.embed_dim)
        self.embed_dim, self.frame_dim = cfg.embed_dim, cfg.hidden_size
        self.num_layers, self.layer_dim = self.backbone.num_layers, cfg.hidden_size

    def forward_layers(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, L+1, T, H)."""
        return self.backbone.forward_layers(wave)

    def _mix(self, states: torch.Tensor) -> torch.Tensor:
        """States (B, L+1, T, H) -> weighted layer sum (B, H, T)."""
        w = torch.softmax(self.layer_weights, dim=0)
        return torch.einsum("l,bltd->bdt", w, states)

    def forward_frames(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> weighted layer sum (B, H, T)."""
        return self._mix(self.forward_layers(wave))

    def frame_pooling(self) -> nn.Module:
        return self.pooling

    def checkpoint_units(self) -> list[nn.Module]:
        """The mixer blocks, which activation checkpointing wraps (sslsv/encoders/checkpointing.py)."""
        return list(self.backbone.blocks)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooling(self.forward_frames(wave)))

    def forward_with_layers(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.forward_layers(wave)
        return self.linear(self.pooling(self._mix(states))), states


# Tiny SV-Mixer settings, shared by the examples of every encoder built on SV-Mixer (ssrfnet, sv_mixer_lap, ...).
TINY_MIXER = {"conv_channels": 16, "hidden_size": 32, "layers": 2, "group_dim": 8, "time_kernel": 9}


@ENCODERS.register("sv_mixer", config=SVMixerConfig,
                   example={"encoder": {**TINY_MIXER, "pool_bottleneck": 8, "embed_dim": 12}})
def sv_mixer(cfg: SVMixerConfig, in_features: int) -> SVMixer:
    """SV-Mixer (Heo et al., 2025): WavLM conv front-end + 12 MLP-mixer blocks (49.7 M), weighted layers, ASTP."""
    return SVMixer(cfg, in_features)
