"""SSRFNet (Koo, Heo et al., "SSRFNet: Stage-wise SV-Mixer and ReDimNet Fusion Network for Speaker Verification",
paper PDF in the dayflys/SSRFNet repository).

Reference implementation: dayflys/SSRFNet `experiments/train_code/models/redimnet.py` (`ReDimNetWrap`) @b8d272d
(the paper cites dayflys/SSLBackend-2026, which is not public); its `loss/distillhubert_loss.py` is the `os_kdft`
method's KD loss.

    waveform ─▶ SV-Mixer (PTM) ─▶ E1..E12 (B, 1024, T)   [state 0 dropped]
        │                          └▶ PFM_i: G_i = sum_j softmax_j(w_i)[ch] * E_{s_i + j}  (K = 4 states per group)
        │                                    P_i = LayerNorm_ch(Conv1d(1024 -> 1024, k5, same)(G_i)),  i = 1..N = 4
        └▶ 80 log-mels (+ Gaussian noise in training) ─▶ S = InstanceNorm(Conv1d(80 -> 1024, k5, stride 2))
    ReDimNet stages (F = 64, C = 16, C*F = 1024): stage i <= N appends P_i to the pool, then runs on the weighted
    aggregation of the pool [S, P1, F1, ..., Pi] (N = 2, 4, 6, 8, then 9, 10) and appends its output F_i;
    final aggregation over the 11 tensors -> ASTP (global context) -> BN -> Linear -> 192.

Group windows: centres round(linspace(K/2, L - K/2, N)) = [2, 5, 7, 10] for L = 12, K = 4, i.e. E1-4, E4-7, E6-9,
E9-12 (overlapping). The paper writes w in R^K; the reference (and this file) use per-channel w_i in R^{K x 1024}.

Measured: 75,164,380 parameters with the paper's time-axis Linear (`sv_mixer.time_mixing: linear`; arith 75.16 M,
paper 74.2 M), of which SV-Mixer 49.68 M, PFM 21.00 M (convs 20.98 M), spectrogram stem 0.41 M, stages +
aggregation 3.15 M, pooling + head 0.92 M; 73.03 M with the default length-agnostic "conv" time mixing.

Deviations:
- SV-Mixer's default `time_mixing` is "conv" (length-agnostic; see sslsv.encoders.sv_mixer), so any input length
  works. With "linear", inputs must be 3-s crops (or use its `length_policy: pad`).
- The two frame rates are aligned by cropping both streams to the shorter one (they differ by at most a frame or
  two; 3 s gives 149 frames on both sides).
- No teacher in the encoder: it trains teacher-free, or as the student of the `os_kdft` method
  (sslsv/methods/os_kdft.py: OS-KDFT's DistilHuBERT heads and loss, a frozen teacher run in place of WavLM-Large),
  which reads the SV-Mixer states through `forward_with_layers`.
- The log-mels come from the toolkit's `LogMel` with ReDimNet's front-end (80 bands, 25 ms / 10 ms, pre-emphasis
  0.97, 20-7600 Hz, per-band mean and variance normalised).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sslsv.audio.features import LogMel
from sslsv.config import ConfigError, FeaturesConfig, require
from sslsv.encoders.base import Encoder
from sslsv.encoders.blocks import EmbeddingHead, attentive_stats_pooling
from sslsv.encoders.redimnet import (
    Block1d,
    Block2d,
    ChannelLayerNorm,
    ReDimNetConfig,
    ReDimNetStage,
    ReDimNetStageBlock,
    WeightedAggregation,
    stage_table,
)
from sslsv.encoders.sv_mixer import TINY_MIXER, SVMixerBackbone, SVMixerConfig
from sslsv.registry import ENCODERS


@dataclass
class SSRFNetConfig:
    sv_mixer: SVMixerConfig = field(default_factory=SVMixerConfig)  # the PTM (L = 12, H = 1024)
    n_mels: int = 80  # spectrogram branch (paper section 3.3)
    freq_bins: int = 64  # F; C*F must equal sv_mixer.hidden_size
    channels: int = 16  # C
    block_2d: Block2d = "convnext_like"
    block_1d: Block1d = "conv+att"
    group_divisor: int = 4
    stages: list[ReDimNetStage] = field(
        default_factory=lambda: stage_table((1, 2, 1, 16), (2, 2, 1, 16), (1, 3, 1, 8), (2, 4, 1, 8), (1, 4, 1, 8),
                                        (2, 4, 1, 4))
    )
    fusion_groups: int = 4  # N: PFM outputs, injected into stages 1..N
    group_size: int = 4  # K: SV-Mixer states per PFM group
    fusion_kernel: int = 5  # PFM Conv1d kernel
    spec_noise_std: tuple[float, float] = (0.001, 0.01)  # training noise on the log-mels, std ~ U(low, high)
    heads: int = 4
    pool_bottleneck: int = 128
    embed_dim: int = 192
    embedding_bn: bool = False

    def __post_init__(self) -> None:
        require(self.n_mels >= 1, "encoder.n_mels", "at least 1", self.n_mels)
        width = self.channels * self.freq_bins
        if width != self.sv_mixer.hidden_size:
            raise ConfigError(f"encoder.freq_bins: channels * freq_bins = {width} must equal "
                              f"sv_mixer.hidden_size = {self.sv_mixer.hidden_size}")
        if not 1 <= self.fusion_groups <= len(self.stages):
            raise ConfigError(f"encoder.fusion_groups: must be in [1, {len(self.stages)}] (number of stages)")
        if not 1 <= self.group_size <= self.sv_mixer.layers:
            raise ConfigError(f"encoder.group_size: must be in [1, {self.sv_mixer.layers}] (SV-Mixer layers)")
        if self.fusion_kernel < 1 or self.fusion_kernel % 2 == 0:
            raise ConfigError("encoder.fusion_kernel: must be odd and positive")
        if not 0 <= self.spec_noise_std[0] <= self.spec_noise_std[1]:
            raise ConfigError("encoder.spec_noise_std: needs 0 <= low <= high")
        self.backbone_config()  # validates the stage table (raises ConfigError naming encoder.stages[i]...)

    def backbone_config(self) -> ReDimNetConfig:
        return ReDimNetConfig(freq_bins=self.freq_bins, channels=self.channels, block_2d=self.block_2d,
                              block_1d=self.block_1d, group_divisor=self.group_divisor, stages=self.stages,
                              heads=self.heads, pool_bottleneck=self.pool_bottleneck, embed_dim=self.embed_dim,
                              embedding_bn=self.embedding_bn)


def group_starts(num_layers: int, group_size: int, num_groups: int) -> list[int]:
    """First state (0-based over E1..EL) of each PFM group: centres round(linspace(K//2, L - (K - K//2), N)),
    windows [c - K//2, c - K//2 + K). L=12, K=4, N=4 -> [0, 3, 5, 8] (E1-4, E4-7, E6-9, E9-12)."""
    half = group_size // 2
    centres = torch.linspace(half, num_layers - (group_size - half), num_groups).round().long().tolist()
    return [c - half for c in centres]


class ProjectionFusion(nn.Module):
    """PFM (paper Eq. 1 and 3): G = sum_j softmax_j(w)[ch] * E_{start + j}; P = LayerNorm_ch(Conv1d(G)).

    Shapes: states (B, L, H, T) -> (B, H, T).
    """

    def __init__(self, start: int, size: int, channels: int, kernel_size: int):
        super().__init__()
        self.start, self.size = start, size
        self.weight = nn.Parameter(torch.zeros(size, channels))  # uniform average at init
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm = ChannelLayerNorm(channels)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        window = states[:, self.start:self.start + self.size]  # (B, K, H, T)
        w = torch.softmax(self.weight, dim=0)[None, :, :, None]  # (1, K, H, 1)
        return self.norm(self.conv((w * window).sum(dim=1)))


class SSRFNet(Encoder):
    """SSRFNet: SV-Mixer states fused stage-wise into a spectrogram ReDimNet through the PFM; waveform -> 192-d.

    Frames: the final aggregation (B, C*F, T); layers: the SV-Mixer states (B, L+1, T', H), state 0 included.

    Args:
        cfg: the `encoder` section.
        in_features: unused (the model computes its own `n_mels` log-mels from the waveform).
    """

    input_kind = "waveform"
    has_frames = True
    has_layers = True

    def __init__(self, cfg: SSRFNetConfig, in_features: int = 0):
        super().__init__()
        width = cfg.channels * cfg.freq_bins
        self.sv_mixer = SVMixerBackbone(cfg.sv_mixer)
        # ReDimNet's front-end, whatever the config's features section says (this encoder reads waveforms)
        self.logmel = LogMel(FeaturesConfig(n_mels=cfg.n_mels, f_min=20.0, f_max=7600.0, preemphasis=0.97))
        self.spec_noise_std = cfg.spec_noise_std
        # 10 ms mel frames -> 20 ms, the SV-Mixer rate: 301 frames (3 s) -> 149
        self.spec_stem = nn.Sequential(nn.Conv1d(cfg.n_mels, width, 5, stride=2), nn.InstanceNorm1d(width))
        starts = group_starts(cfg.sv_mixer.layers, cfg.group_size, cfg.fusion_groups)
        self.fusion = nn.ModuleList([ProjectionFusion(s, cfg.group_size, width, cfg.fusion_kernel) for s in starts])
        self.stages, self.aggregations = nn.ModuleList(), nn.ModuleList()
        c, f, pool_size = cfg.channels, cfg.freq_bins, 1
        for i, stage in enumerate(cfg.stages):
            pool_size += 1 if i < cfg.fusion_groups else 0  # P_i joins the pool before stage i runs
            self.aggregations.append(WeightedAggregation(pool_size, width))
            block = ReDimNetStageBlock(c, f, stage, cfg.block_2d, cfg.block_1d, cfg.group_divisor, cfg.heads)
            self.stages.append(block)
            c, f, pool_size = block.c, block.f, pool_size + 1
        self.final_aggregation = WeightedAggregation(pool_size, width)  # 1 + N + stages = 11
        self.pooling = attentive_stats_pooling(width, cfg.pool_bottleneck, global_context=True)
        self.head = EmbeddingHead(self.pooling.out_dim, cfg.embed_dim, cfg.embedding_bn)
        self.embed_dim, self.frame_dim = cfg.embed_dim, width
        self.num_layers, self.layer_dim = self.sv_mixer.num_layers, cfg.sv_mixer.hidden_size

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> S (B, C*F, T_mel // 2 - 1): log-mels (+ training noise) -> strided conv -> InstanceNorm."""
        spec = self.logmel(wave)  # (B, n_mels, T_mel), float32
        if self.training and self.spec_noise_std[1] > 0:
            low, high = self.spec_noise_std
            std = torch.empty(spec.shape[0], 1, 1, device=spec.device).uniform_(low, high)
            spec = spec + std * torch.randn_like(spec)
        return self.spec_stem(spec.to(self.spec_stem[0].weight.dtype))

    def _frames_and_states(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) -> (final aggregated frames (B, C*F, T), SV-Mixer states (B, L+1, T', H)), one pass."""
        states = self.sv_mixer.forward_layers(wave)  # (B, L+1, T', H)
        spec = self.spectrogram(wave)  # (B, H, T'')
        t = min(states.shape[2], spec.shape[2])  # off-by-one frame counts: crop both to the shorter
        hidden = states[:, 1:, :t].transpose(2, 3)  # drop state 0 -> (B, L, H, t)
        pool = [spec[..., :t]]
        for i, (aggregate, stage) in enumerate(zip(self.aggregations, self.stages)):
            if i < len(self.fusion):
                pool.append(self.fusion[i](hidden))  # P_{i+1}
            pool.append(stage(aggregate(pool)))  # F_{i+1}
        return self.final_aggregation(pool), states

    def forward_frames(self, wave: torch.Tensor) -> torch.Tensor:
        return self._frames_and_states(wave)[0]

    def frame_pooling(self) -> nn.Module:
        return self.pooling

    def checkpoint_units(self) -> list[nn.Module]:
        """The SV-Mixer blocks and the ReDimNet stages, which activation checkpointing wraps
        (sslsv/encoders/checkpointing.py)."""
        return [*self.sv_mixer.blocks, *self.stages]

    def forward_layers(self, wave: torch.Tensor) -> torch.Tensor:
        """The SV-Mixer states (B, L+1, T, H) alone (the ReDimNet side is not run)."""
        return self.sv_mixer.forward_layers(wave)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(self.forward_frames(wave)))

    def forward_with_layers(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames, states = self._frames_and_states(wave)
        return self.head(self.pooling(frames)), states


# Tiny settings for registry-wide tests: SV-Mixer H = 32 = C*F (4 x 8), 2 fusion groups of 2 states, 3 stages.
TINY_EXAMPLE = {
    "encoder": {"sv_mixer": dict(TINY_MIXER), "n_mels": 20, "freq_bins": 8, "channels": 4, "group_size": 2,
                "fusion_groups": 2,
                "stages": [{"stride": 1, "blocks": 1, "conv_exp": 1, "att_red": 4},
                           {"stride": 2, "blocks": 1, "conv_exp": 1, "att_red": 4},
                           {"stride": 2, "blocks": 1, "conv_exp": 2, "att_red": 2}],
                "pool_bottleneck": 8, "embed_dim": 12},
}


@ENCODERS.register("ssrfnet", config=SSRFNetConfig, example=TINY_EXAMPLE)
def ssrfnet(cfg: SSRFNetConfig, in_features: int) -> SSRFNet:
    """SSRFNet (Koo, Heo et al., 2026): SV-Mixer + ReDimNet with projection-based stage-wise fusion; 75.2 M."""
    return SSRFNet(cfg, in_features)
