"""Layer-wise back-ends: pool the hidden states (B, L, T, D) of any model that exposes `forward_layers`.

- LAP, Layer Attentive Pooling with ASTP (Kim, Park, Shin, Han, "Rethinking Leveraging Pre-Trained Multi-Layer
  Representations for Speaker Verification", Interspeech 2025, arXiv 2512.22148). Reference: sadPororo/LAP
  `src/modules/pooling_layers/layer_aggregation.py` @9c7e22d. Measured 1,714,480 parameters for WavLM-Base+
  (D = 768, L = 13; arith 1.71 M) and 2,312,464 for WavLM-Large (D = 1024, L = 25; arith 2.31 M).
- UniPool (Kim et al., "Universal Pooling Method of Multi-layer Features from Pretrained Models for Speaker
  Verification", 2024, arXiv 2409.07770). Reference: sadPororo/UniPool-SV `src/benchmarks/UniPool/model.py`
  @29d80b4. Measured 2,869,476 parameters for wav2vec2-base (D = 768, L = 12; arith 2.87 M).

LAP, per frame t and head h (d = D/h channels of the (d, L) slice X_{t,h}):
    z = SE_h(mean_d X) + SE_h(max_d X),  SE_h(v) = W2_h ReLU(W1_h v + b1_h) + b2_h  (L -> L/2 -> L, shared by paths)
    s = dropout(sigmoid(z)) in R^L;  y_{t,h} = max_l (X_{t,h} * s)_l;  Y = BN(Conv1x1(concat_h y))
on BN2d + 1x1 conv of the input. The scores are time-dynamic: one per frame, head and layer.

- MHFA, multi-head factorised attentive pooling (Peng, Plchot, Stafylakis, Mosner, Burget, Cernocky, "An
  attention-based backend allowing efficient fine-tuning of transformer models for speaker verification", SLT 2022,
  arXiv 2210.01273). Reference: theolepage/sslsv `sslsv/encoders/S3PRL.py` (class MHFA, 64 heads, compression 128).
  Per head h, with layer weights w^k, w^v (softmax over the L states, initialised equal):
      k_t = W_k sum_l softmax(w^k)_l x_{l,t} + b_k,   v_t = W_v sum_l softmax(w^v)_l x_{l,t} + b_v   (D -> d_c)
      a_{t,h} = softmax_t(q_h . k_t + c_h),   r_h = sum_t a_{t,h} v_t,   e = W_o [r_1; ...; r_H] + b_o
  2,302,554 parameters for WavLM-Base+ states (D = 768, L = 13), 64 heads, d_c = 128, 256-d output (arith).
- Weighted sum + ASTP (SUPERB style): softmax-weighted sum of the states (weights initialised equal) -> ASTP
  (global context, bottleneck 128) -> BN -> Linear -> embed_dim.

Neither pooling fits the POOLINGS interface (in_dim -> (B, C, T) input), so they are back-end modules; the
registered encoders are `sv_mixer_lap` and `sv_mixer_unipool` (SV-Mixer front + back-end) and `pretrained_speech`
(torchaudio WavLM / HuBERT / wav2vec 2.0 + any of these back-ends; sslsv/encoders/pretrained_speech.py).

Deviations:
- The squeeze-excite weights are initialised with Kaiming / Xavier uniform (UniPool's choice) instead of LAP's
  standard normal, which saturates the sigmoid at initialisation.
- UniPool's residual around the D2Block + channel attention is applied once (x + f(x)); the reference wraps an
  already residual module in a second residual (2x + f(x)).
- The ASTP attention dropout (LAP, UniPool: 0.1) drops attention weights, not frames; span-out augmentation and
  padding masks are not implemented (batches have equal lengths here).
- `sv_mixer_lap` / `sv_mixer_unipool` train their SV-Mixer front from scratch (or as an `os_kdft` student); the
  papers' setting, a pretrained WavLM / HuBERT / wav2vec 2.0 front, is the `pretrained_speech` encoder.
- MHFA: no padding masks (batches have equal lengths), the reference's layer-wise learning rates and
  regularisation towards the pretrained weights are not implemented (`encoder.grad_scale` scales the gradient
  that reaches the speech model instead).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, require
from sslsv.encoders.base import Encoder
from sslsv.encoders.blocks import EmbeddingHead, attentive_stats_pooling
from sslsv.encoders.sv_mixer import TINY_MIXER, SVMixerBackbone, SVMixerConfig
from sslsv.registry import ENCODERS


class LayerAttentivePooling(nn.Module):
    """LAP: hidden states (B, L, T, D) -> (B, out_dim, T).

    Args:
        num_layers: L.
        in_dim: D.
        out_dim: width after the output 1x1 conv (512 in LAP).
        heads: h (16 in LAP, 4 in UniPool); must divide proj_dim.
        proj_dim: width of the input 1x1 projection (LAP: D; UniPool: out_dim).
        bias: biases of the two 1x1 projections (LAP: True; UniPool: False).
        dropout: dropout on the scores (0.1).
    """

    def __init__(self, num_layers: int, in_dim: int, out_dim: int = 512, heads: int = 16,
                 proj_dim: int | None = None, bias: bool = True, dropout: float = 0.1):
        super().__init__()
        proj_dim = proj_dim or in_dim
        if proj_dim % heads:
            raise ConfigError(f"encoder.heads: {heads} heads do not divide the {proj_dim} channels")
        self.heads = heads
        self.in_norm = nn.BatchNorm2d(in_dim)
        self.in_proj = nn.Conv2d(in_dim, proj_dim, 1, bias=bias) if heads > 1 or proj_dim != in_dim else nn.Identity()
        hidden = max(num_layers // 2, 1)
        self.sq_weight = nn.Parameter(torch.empty(heads, num_layers, hidden))
        self.sq_bias = nn.Parameter(torch.zeros(heads, hidden))
        self.ex_weight = nn.Parameter(torch.empty(heads, hidden, num_layers))
        self.ex_bias = nn.Parameter(torch.zeros(heads, num_layers))
        for w in self.sq_weight:
            nn.init.kaiming_uniform_(w, nonlinearity="relu")
        for w in self.ex_weight:
            nn.init.xavier_uniform_(w)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Conv1d(proj_dim, out_dim, 1, bias=bias)
        self.out_norm = nn.BatchNorm1d(out_dim)
        self.out_dim = out_dim

    def _excite(self, v: torch.Tensor) -> torch.Tensor:
        # v: (B, T, h, L); per-head SE across layers, L -> L/2 -> L
        v = F.relu(torch.einsum("bthl,hlr->bthr", v, self.sq_weight) + self.sq_bias)
        return torch.einsum("bthr,hrl->bthl", v, self.ex_weight) + self.ex_bias

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, h, d, L) -> layer significance (B, T, h, L), before dropout."""
        return torch.sigmoid(self._excite(x.mean(dim=3)) + self._excite(x.amax(dim=3)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(self.in_norm(states.permute(0, 3, 2, 1)))  # (B, D', T, L)
        b, d, t, layers = x.shape
        x = x.reshape(b, self.heads, d // self.heads, t, layers).permute(0, 3, 1, 2, 4)  # (B, T, h, d, L)
        s = self.dropout(self.scores(x))  # (B, T, h, L)
        y = (x * s.unsqueeze(3)).amax(dim=-1)  # max over layers -> (B, T, h, d)
        y = y.reshape(b, t, d).transpose(1, 2)  # (B, D', T)
        return self.out_norm(self.out_proj(y))


class LAPBackend(nn.Module):
    """LAP (16 heads, -> 512) -> ASTP (global context, bottleneck 256, ReLU-BN, attention dropout 0.1)
    -> BN(1024) -> Linear -> 192 -> BN. States (B, L, T, D) -> (B, embed_dim)."""

    def __init__(self, num_layers: int, in_dim: int, lap_dim: int = 512, heads: int = 16, bottleneck: int = 256,
                 dropout: float = 0.1, embed_dim: int = 192):
        super().__init__()
        self.lap = LayerAttentivePooling(num_layers, in_dim, lap_dim, heads, dropout=dropout)
        self.pooling = attentive_stats_pooling(lap_dim, bottleneck, True, "relu_bn", dropout)
        self.head = EmbeddingHead(self.pooling.out_dim, embed_dim, embedding_bn=True)

    def forward_frames(self, states: torch.Tensor) -> torch.Tensor:
        return self.lap(states)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(self.lap(states)))


# ----------------------------------------------------------------------------------------------------------------
# UniPool
# ----------------------------------------------------------------------------------------------------------------


class AttentiveVAD(nn.Module):
    """Per output layer, a SUPERB softmax mix over all layers (logits initialised to the identity), then a per-layer
    Linear D -> 1 -> sigmoid: a frame-by-layer gate. (B, D, L, T) -> (B, D, L, T)."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.mix = nn.Parameter(torch.eye(num_layers))  # (L_out, L_in) logits
        self.weight = nn.Parameter(torch.empty(num_layers, dim))
        nn.init.xavier_uniform_(self.weight)
        self.bias = nn.Parameter(torch.zeros(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("ij,bdjt->bdit", torch.softmax(self.mix, dim=1), x)
        gate = torch.sigmoid(torch.einsum("bdlt,ld->blt", x, self.weight) + self.bias[None, :, None])
        return x * gate.unsqueeze(1)


class D2Block(nn.Module):
    """D3Net's densely connected multi-dilated block on the (layer, frame) grid: 1x1 down to `width`; dense layer i
    sums BN-ReLU-conv3x3(dilation d_j) of each earlier output j <= i; the outputs are concatenated -> width * 4."""

    def __init__(self, in_dim: int, width: int, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.projection = nn.Conv2d(in_dim, width, 1)
        self.dense = nn.ModuleList([
            nn.ModuleList([
                nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, dilation=d, padding=d))
                for d in dilations[: i + 1]
            ])
            for i in range(len(dilations))
        ])
        self.out_dim = width * (len(dilations) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.projection(x)]
        for convs in self.dense:
            outputs.append(sum(conv(outputs[j]) for j, conv in enumerate(convs)))
        return torch.cat(outputs, dim=1)


class ChannelAttention(nn.Module):
    """CBAM-style channel attention: sigmoid(MLP_avg(avgpool x) + MLP_max(maxpool x)) * x; each MLP is
    1x1 C -> r -> ReLU -> BN -> 1x1 r -> C."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.BatchNorm2d(hidden),
                                 nn.Conv2d(hidden, channels, 1))

        self.avg_mlp, self.max_mlp = mlp(), mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avg_mlp(x.mean(dim=(2, 3), keepdim=True)) + self.max_mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(scale)


class D3Block(nn.Module):
    """1x1 conv D -> 4*width + BN, then per block: attentive VAD, then x + ChannelAttention(D2Block(x)).
    (B, D, L, T) -> (B, 4*width*blocks, L, T)."""

    def __init__(self, in_dim: int, num_layers: int, width: int = 128, blocks: int = 1):
        super().__init__()
        dim = 4 * width
        self.projection = nn.Sequential(nn.Conv2d(in_dim, dim, 1), nn.BatchNorm2d(dim))
        self.vad = nn.ModuleList([AttentiveVAD(dim, num_layers) for _ in range(blocks)])
        self.dense = nn.ModuleList([nn.Sequential(D2Block(dim, width), ChannelAttention(dim, dim // 4))
                                    for _ in range(blocks)])
        self.out_dim = dim * blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(x)
        outputs = []
        for vad, dense in zip(self.vad, self.dense):
            x = vad(x)
            x = x + dense(x)
            outputs.append(x)
        return torch.cat(outputs, dim=1)


class UniPoolBackend(nn.Module):
    """UniPool: D3Block -> layer-attention pool (LAP with 4 heads, bias-free 1x1 convs, -> 4*width) -> ASTP
    (bottleneck 2*width, ReLU-BN) -> BN -> Linear -> 192 -> BN. States (B, L, T, D) -> (B, embed_dim)."""

    def __init__(self, num_layers: int, in_dim: int, width: int = 128, blocks: int = 1, heads: int = 4,
                 dropout: float = 0.1, embed_dim: int = 192):
        super().__init__()
        self.d3 = D3Block(in_dim, num_layers, width, blocks)
        dim = 4 * width
        self.layer_pool = LayerAttentivePooling(num_layers, self.d3.out_dim, dim, heads, proj_dim=dim, bias=False,
                                                dropout=dropout)
        self.pooling = attentive_stats_pooling(dim, dim // 2, True, "relu_bn", dropout)
        self.head = EmbeddingHead(self.pooling.out_dim, embed_dim, embedding_bn=True)

    def forward_frames(self, states: torch.Tensor) -> torch.Tensor:
        x = self.d3(states.permute(0, 3, 1, 2))  # (B, D, L, T) -> (B, 4w, L, T)
        return self.layer_pool(x.permute(0, 2, 3, 1))  # (B, L, T, 4w) -> (B, 4w, T)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(self.forward_frames(states)))


# ----------------------------------------------------------------------------------------------------------------
# MHFA, weighted sum + ASTP
# ----------------------------------------------------------------------------------------------------------------


class LayerWeightedSum(nn.Module):
    """SUPERB's softmax-weighted sum of the states, weights initialised equal: (B, L, T, D) -> (B, T, D)."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bltd,l->btd", states, torch.softmax(self.weights, dim=0))


class MHFABackend(nn.Module):
    """MHFA (Peng et al., 2022; module docstring): two layer-weighted sums (keys, values) compressed to d_c, one
    attention over time per head on the keys, per-head weighted means of the values, concatenated -> Linear.
    States (B, L, T, D) -> (B, embed_dim).

    Args:
        num_layers: L.
        in_dim: D.
        heads: H (64 in the reference).
        compression: d_c (128).
        embed_dim: output width.
    """

    def __init__(self, num_layers: int, in_dim: int, heads: int = 64, compression: int = 128, embed_dim: int = 256):
        super().__init__()
        self.keys = LayerWeightedSum(num_layers)
        self.values = LayerWeightedSum(num_layers)
        self.compress_keys = nn.Linear(in_dim, compression)
        self.compress_values = nn.Linear(in_dim, compression)
        self.attention = nn.Linear(compression, heads)
        self.output = nn.Linear(heads * compression, embed_dim)

    def attention_weights(self, states: torch.Tensor) -> torch.Tensor:
        """a: (B, T, H), summing to 1 over T."""
        return torch.softmax(self.attention(self.compress_keys(self.keys(states))), dim=1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        weights = self.attention_weights(states)  # (B, T, H)
        values = self.compress_values(self.values(states))  # (B, T, d_c)
        pooled = torch.einsum("bth,btc->bhc", weights, values)  # (B, H, d_c)
        return self.output(pooled.flatten(1))


class WeightedASTPBackend(nn.Module):
    """SUPERB-style: softmax-weighted sum of the states -> ASTP (global context, bottleneck 128, tanh) -> BN ->
    Linear -> embed_dim. States (B, L, T, D) -> (B, embed_dim); frames: the weighted sum (B, D, T)."""

    def __init__(self, num_layers: int, in_dim: int, bottleneck: int = 128, embed_dim: int = 192):
        super().__init__()
        self.mix = LayerWeightedSum(num_layers)
        self.pooling = attentive_stats_pooling(in_dim, bottleneck)
        self.head = EmbeddingHead(self.pooling.out_dim, embed_dim, embedding_bn=False)

    def forward_frames(self, states: torch.Tensor) -> torch.Tensor:
        return self.mix(states).transpose(1, 2)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(self.forward_frames(states)))


# ----------------------------------------------------------------------------------------------------------------
# Encoders: SV-Mixer front + layer-wise back-end
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SVMixerLAPConfig:
    sv_mixer: SVMixerConfig = field(default_factory=SVMixerConfig)  # its embed_dim / pool_bottleneck are unused
    heads: int = 16  # LAP heads
    lap_dim: int = 512
    pool_bottleneck: int = 256
    dropout: float = 0.1
    embed_dim: int = 192

    def __post_init__(self) -> None:
        require(self.heads >= 1, "encoder.heads", "at least 1", self.heads)
        require(0 <= self.dropout < 1, "encoder.dropout", "in [0, 1)", self.dropout)
        if self.sv_mixer.hidden_size % self.heads:
            raise ConfigError(f"encoder.heads: {self.heads} heads do not divide sv_mixer.hidden_size "
                              f"{self.sv_mixer.hidden_size}")
        if min(self.lap_dim, self.pool_bottleneck, self.embed_dim) < 1:
            raise ConfigError("encoder.lap_dim: widths must be positive")


@dataclass
class SVMixerUniPoolConfig:
    sv_mixer: SVMixerConfig = field(default_factory=SVMixerConfig)  # its embed_dim / pool_bottleneck are unused
    width: int = 128  # D3Block conv_dim; block width 4 * width
    blocks: int = 1
    heads: int = 4
    dropout: float = 0.1
    embed_dim: int = 192

    def __post_init__(self) -> None:
        if self.width < 1 or self.blocks < 1 or self.embed_dim < 1:
            raise ConfigError("encoder.width: width, blocks and embed_dim must be positive")
        require(self.heads >= 1, "encoder.heads", "at least 1", self.heads)
        require(0 <= self.dropout < 1, "encoder.dropout", "in [0, 1)", self.dropout)
        if (4 * self.width) % self.heads:
            raise ConfigError(f"encoder.heads: {self.heads} heads do not divide the {4 * self.width} channels")


class _SVMixerWithBackend(Encoder):
    """SV-Mixer front + layer-wise back-end. Frames: the back-end's layer-pooled sequence (B, frame_dim, T), which
    its ASTP reads; layers: all SV-Mixer states (B, L+1, T, H), whichever of them the back-end reads."""

    input_kind = "waveform"
    has_frames = True
    has_layers = True
    backend: nn.Module
    skip_first_state: bool

    def __init__(self, sv_mixer: SVMixerConfig):
        super().__init__()
        self.sv_mixer = SVMixerBackbone(sv_mixer)
        self.num_layers, self.layer_dim = self.sv_mixer.num_layers, sv_mixer.hidden_size

    def forward_layers(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> SV-Mixer states (B, L+1, T, H)."""
        return self.sv_mixer.forward_layers(wave)

    def _read(self, states: torch.Tensor) -> torch.Tensor:
        """The states the back-end reads."""
        return states[:, 1:] if self.skip_first_state else states

    def forward_frames(self, wave: torch.Tensor) -> torch.Tensor:
        return self.backend.forward_frames(self._read(self.forward_layers(wave)))

    def frame_pooling(self) -> nn.Module:
        return self.backend.pooling

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.backend(self._read(self.forward_layers(wave)))

    def forward_with_layers(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.forward_layers(wave)
        return self.backend(self._read(states)), states


@ENCODERS.register("sv_mixer_lap", config=SVMixerLAPConfig,
                   example={"encoder": {"sv_mixer": dict(TINY_MIXER), "heads": 4, "lap_dim": 16,
                                        "pool_bottleneck": 8, "embed_dim": 12}})
class SVMixerLAP(_SVMixerWithBackend):
    """SV-Mixer + LAP/ASTP back-end (Kim et al., 2025) over all 13 states; 192-d, BN on the embedding."""

    skip_first_state = False  # LAP reads the embedding output too

    def __init__(self, cfg: SVMixerLAPConfig, in_features: int = 0):
        super().__init__(cfg.sv_mixer)
        self.backend = LAPBackend(self.sv_mixer.num_layers, cfg.sv_mixer.hidden_size, cfg.lap_dim, cfg.heads,
                                  cfg.pool_bottleneck, cfg.dropout, cfg.embed_dim)
        self.embed_dim, self.frame_dim = cfg.embed_dim, cfg.lap_dim


@ENCODERS.register("sv_mixer_unipool", config=SVMixerUniPoolConfig,
                   example={"encoder": {"sv_mixer": dict(TINY_MIXER), "width": 4, "heads": 4, "embed_dim": 12}})
class SVMixerUniPool(_SVMixerWithBackend):
    """SV-Mixer + UniPool back-end (Kim et al., 2024) over states 1..L; 192-d, BN on the embedding."""

    skip_first_state = True  # UniPool reads layers 1..L

    def __init__(self, cfg: SVMixerUniPoolConfig, in_features: int = 0):
        super().__init__(cfg.sv_mixer)
        self.backend = UniPoolBackend(cfg.sv_mixer.layers, cfg.sv_mixer.hidden_size, cfg.width, cfg.blocks,
                                      cfg.heads, cfg.dropout, cfg.embed_dim)
        self.embed_dim, self.frame_dim = cfg.embed_dim, 4 * cfg.width
