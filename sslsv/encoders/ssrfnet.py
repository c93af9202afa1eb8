"""SSRFNet (Koo, Heo et al., "SSRFNet: Stage-wise SV-Mixer and ReDimNet Fusion Network for Speaker Verification",
ICASSP 2026 submission; paper PDF in dayflys/SSRFNet).

Reference implementation: dayflys/SSRFNet `experiments/train_code/models/redimnet.py` (`ReDimNetWrap`) and
`loss/distillhubert_loss.py` @b8d272d (the paper cites dayflys/SSLBackend-2026, which is not public).
See ../../../shared/reference/architectures.md, sections 5 and 6.

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
- No teacher: the encoder trains teacher-free. OS-KDFT distillation (a frozen WavLM-Large teacher, three
  DistilHuBERT heads on the last student state predicting teacher layers 8, 16, 24) is provided as
  `DistillationHeads` + `distillation_loss`, used by the `os_kdft` method (sslsv/methods/distillation.py).
- The log-mels come from the toolkit's `LogMel` (80 bands, 25 ms / 10 ms, per-band mean and variance normalised).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.audio.features import LogMel
from sslsv.config import ConfigError, FeaturesConfig
from sslsv.encoders.base import Encoder
from sslsv.encoders.redimnet import (
    AttentiveStatsPooling,
    Block1d,
    Block2d,
    ChannelLayerNorm,
    EmbeddingHead,
    ReDimNetConfig,
    ReDimNetStage,
    ReDimNetStageBlock,
    WeightedAggregation,
    _stages,
)
from sslsv.encoders.sv_mixer import SVMixerBackbone, SVMixerConfig
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
        default_factory=lambda: _stages((1, 2, 1, 16), (2, 2, 1, 16), (1, 3, 1, 8), (2, 4, 1, 8), (1, 4, 1, 8),
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

    Args:
        cfg: the `encoder` section.
        in_features: unused (the model computes its own `n_mels` log-mels from the waveform).
    """

    input_kind = "waveform"

    def __init__(self, cfg: SSRFNetConfig, in_features: int = 0):
        super().__init__()
        width = cfg.channels * cfg.freq_bins
        self.sv_mixer = SVMixerBackbone(cfg.sv_mixer)
        self.logmel = LogMel(FeaturesConfig(n_mels=cfg.n_mels))
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
        self.pooling = AttentiveStatsPooling(width, cfg.pool_bottleneck, global_context=True)
        self.head = EmbeddingHead(self.pooling.out_dim, cfg.embed_dim, cfg.embedding_bn)
        self.embed_dim, self.frame_dim = cfg.embed_dim, width

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> S (B, C*F, T_mel // 2 - 1): log-mels (+ training noise) -> strided conv -> InstanceNorm."""
        spec = self.logmel(wave)  # (B, n_mels, T_mel), float32
        if self.training and self.spec_noise_std[1] > 0:
            low, high = self.spec_noise_std
            std = torch.empty(spec.shape[0], 1, 1, device=spec.device).uniform_(low, high)
            spec = spec + std * torch.randn_like(spec)
        return self.spec_stem(spec.to(self.spec_stem[0].weight.dtype))

    def forward_with_states(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) -> (final aggregated frames (B, C*F, T), SV-Mixer states (B, L+1, T', H)); the states feed
        `DistillationHeads` (their last entry) when a method distils a teacher."""
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
        return self.forward_with_states(wave)[0]

    def forward_layers(self, wave: torch.Tensor) -> torch.Tensor:
        """The SV-Mixer states (B, L+1, T, H), for layer-wise back-ends."""
        return self.sv_mixer.forward_layers(wave)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(self.forward_frames(wave)))


@ENCODERS.register("ssrfnet", config=SSRFNetConfig)
def ssrfnet(cfg: SSRFNetConfig, in_features: int) -> SSRFNet:
    """SSRFNet (Koo, Heo et al., 2026): SV-Mixer + ReDimNet with projection-based stage-wise fusion; 75.2 M."""
    return SSRFNet(cfg, in_features)


# ----------------------------------------------------------------------------------------------------------------
# OS-KDFT distillation (for a method to wire in; the encoder does not use it)
# ----------------------------------------------------------------------------------------------------------------


class DistillationHeads(nn.Module):
    """DistilHuBERT-style prediction heads (OS-KDFT, Heo et al., Interspeech 2023; SSRFNet's
    `loss/distillhubert_loss.py`): each head is Linear(H -> D_t) -> GELU -> Linear(D_t -> D_t) on the LAST student
    state and predicts one teacher layer (WavLM-Large layers 8, 16, 24 of 25 in the reference; 6.30 M parameters for
    H = D_t = 1024, training only). The teacher is frozen, in inference mode, and receives no gradients.

    Shapes: last student state (B, T, H) -> predictions (B, num_heads, T, D_t).
    """

    def __init__(self, student_dim: int = 1024, teacher_dim: int = 1024, num_heads: int = 3):
        super().__init__()
        self.heads = nn.ModuleList([
            nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.GELU(), nn.Linear(teacher_dim, teacher_dim))
            for _ in range(num_heads)
        ])

    def forward(self, last_state: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(last_state) for head in self.heads], dim=1)


def distillation_loss(student_states: torch.Tensor, teacher_states: torch.Tensor,
                      cos_lambda: float = 1.0) -> torch.Tensor:
    """DistilHuBERT loss as in OS-KDFT / SSRFNet:

        L = mean_b sum_h [ mean_{t,d} |p_{b,h,t,d} - y_{b,h,t,d}|  -  lambda * sum_t log sigmoid(cos(p_{b,h,t}, y_{b,h,t})) ]

    (the L1 term is averaged over time and channels, the cosine term summed over time, as in the reference).

    Args:
        student_states: head predictions p, (B, num_heads, T, D).
        teacher_states: the selected teacher layers y, (B, num_heads, T, D) (detached; the teacher is frozen).
        cos_lambda: lambda (1 in the reference).
    Returns:
        scalar loss.
    """
    if student_states.shape != teacher_states.shape:
        raise ValueError(f"student {tuple(student_states.shape)} and teacher {tuple(teacher_states.shape)} differ")
    teacher_states = teacher_states.detach()
    l1 = (student_states - teacher_states).abs().mean(dim=(2, 3))  # (B, h)
    cos = F.cosine_similarity(student_states, teacher_states, dim=-1)  # (B, h, T)
    return (l1 - cos_lambda * F.logsigmoid(cos).sum(dim=2)).sum(dim=1).mean()
