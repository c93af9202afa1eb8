"""Temporal pooling layers: frame sequence (B, C, T) -> utterance vector (B, out_dim).

Registered in `sslsv.registry.POOLINGS` so that any encoder can take its pooling by name. Every pooling is built
from `(in_dim)` alone (further arguments have defaults) and exposes `out_dim`.

- sap, asp, stats, gap: see the classes.
- astp: attentive statistics pooling with global context (Desplanques et al., ECAPA-TDNN, Interspeech 2020,
  arXiv 2005.07143, "channel- and context-dependent statistics pooling"; as wespeaker's `ASTP`, written here from
  the paper). 2C out.
- lde: learnable dictionary encoding (Cai, Chen, Li, Odyssey 2018, arXiv 1804.05160; used by the FPM
  paper, Jung et al. 2020, arXiv 2004.03194, section 4). K*C out.
- gru: the last state of a unidirectional GRU over the frames (256 units). CPC's autoregressive aggregator g_phi
  is this layer when the encoder uses it, so that the context CPC trains is the representation that is evaluated
  and exported (as theolepage/sslsv, whose CPC embeds an utterance as its aggregator's last state).

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import torch
from torch import nn

from sslsv.registry import POOLINGS


class Pooling(nn.Module):
    out_dim: int


@POOLINGS.register("sap")
class SelfAttentivePooling(Pooling):
    """Self-attentive pooling (Cai et al., 2018): weights = softmax_t(a . tanh(W x_t + b)); out = sum_t w_t x_t."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.attention = nn.Linear(in_dim, in_dim)
        self.context = nn.Parameter(torch.empty(in_dim, 1))
        nn.init.xavier_normal_(self.context)
        self.out_dim = in_dim

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.attention(x.transpose(1, 2)))  # (B, T, C)
        return torch.softmax(h @ self.context, dim=1)  # (B, T, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)
        return (x.transpose(1, 2) * w).sum(dim=1)  # (B, C)


@POOLINGS.register("asp")
class AttentiveStatisticsPooling(SelfAttentivePooling):
    """Attentive statistics pooling (Okabe et al., 2018) with SAP's attention: weighted mean and std -> 2C."""

    def __init__(self, in_dim: int):
        super().__init__(in_dim)
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)  # (B, T, 1)
        frames = x.transpose(1, 2)  # (B, T, C)
        mean = (frames * w).sum(dim=1)
        var = (frames.pow(2) * w).sum(dim=1) - mean.pow(2)
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=1)


@POOLINGS.register("stats")
class StatisticsPooling(Pooling):
    """Statistics pooling (Snyder et al., 2018): mean and standard deviation over time -> 2C.

    std = sqrt(max(mean_t (x - mean)^2, 1e-5)), as theolepage/sslsv's `StatsPooling` (ResNet34.py). What the C rows
    are is the encoder's choice: Fast ResNet-34 feeds it every (channel, frequency) row of its last stage by default,
    as the authors do (`encoder.frequency`, sslsv/encoders/fast_resnet34.py), so C = channels x frequency there.
    """

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=2)
        std = x.var(dim=2, unbiased=False).clamp(min=1e-5).sqrt()
        return torch.cat([mean, std], dim=1)


@POOLINGS.register("gap")
class GlobalAveragePooling(Pooling):
    """Global average over time -> C."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)


@POOLINGS.register("gru")
class RecurrentPooling(Pooling):
    """Last hidden state of a one-layer GRU read over time -> hidden_dim (default 256, CPC's g_phi, review 4.3)."""

    def __init__(self, in_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden_dim, batch_first=True)
        self.out_dim = hidden_dim

    def contexts(self, sequence: torch.Tensor) -> torch.Tensor:
        """(B, T, C) frames -> (B, T, H) states z^(1..T): z^(t) has read frames 1..t only."""
        return self.gru(sequence)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contexts(x.transpose(1, 2))[:, -1]


def _weighted_mean_std(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, T), weights w (B, C or 1, T) summing to 1 over T -> mean, std, each (B, C).

    The variance is computed around the mean (not E[x^2] - E[x]^2) to avoid cancellation on long inputs.
    """
    mean = (x * w).sum(dim=2)
    var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=eps).sqrt()


@POOLINGS.register("astp")
class ContextAttentiveStatisticsPooling(Pooling):
    """Attentive statistics pooling with global context (ECAPA-TDNN, Desplanques et al. 2020) -> 2C.

    With global context the attention sees every frame together with the utterance's mean and std:

        h_t     = [x_t ; mu ; sigma]                       (3C; mu, sigma: plain mean and std over time)
        e_{t,c} = v_c^T f(W h_t + b) + k_c                 (W: bottleneck x 3C, v: C x bottleneck)
        a_{t,c} = softmax_t(e_{t,c})                       (channel-dependent weights over time)
        mu~_c   = sum_t a_{t,c} x_{t,c}
        sig~_c  = sqrt(sum_t a_{t,c} (x_{t,c} - mu~_c)^2)  (written around the mean)
        out     = [mu~ ; sig~]                             (2C)

    f is tanh (wespeaker's ASTP; the paper only calls it a non-linearity). `tdnn=True` makes
    f = tanh(BN(ReLU(.))), SpeechBrain's ECAPA pooling, which the ECAPA-TDNN encoder uses (reference parameter
    count).

    Args:
        in_dim: C, channels of the input (B, C, T).
        bottleneck: attention width (128 in ECAPA-TDNN).
        global_context: append the utterance mean/std to every frame before the attention.
        tdnn: insert ReLU + BatchNorm between the first convolution and tanh.
        tanh: keep the tanh (LAP/UniPool's back-ends use ReLU + BN alone: tdnn=True, tanh=False).
        dropout: dropout on the attention weights in training (LAP/UniPool: 0.1).
        eps: variance floor before the square root.
    """

    def __init__(self, in_dim: int, bottleneck: int = 128, global_context: bool = True, tdnn: bool = False,
                 tanh: bool = True, dropout: float = 0.0, eps: float = 1e-12):
        super().__init__()
        self.global_context, self.eps = global_context, eps
        layers: list[nn.Module] = [nn.Conv1d(3 * in_dim if global_context else in_dim, bottleneck, 1)]
        if tdnn:
            layers += [nn.ReLU(), nn.BatchNorm1d(bottleneck)]
        if tanh:
            layers.append(nn.Tanh())
        layers.append(nn.Conv1d(bottleneck, in_dim, 1))
        self.attention = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (B, C, T)
        if self.global_context:
            uniform = torch.full_like(x[:, :1], 1.0 / x.shape[2])  # (B, 1, T)
            mean, std = _weighted_mean_std(x, uniform, self.eps)  # (B, C) each
            T = x.shape[2]
            h = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, T), std.unsqueeze(2).expand(-1, -1, T)], dim=1)
        w = self.dropout(torch.softmax(self.attention(h), dim=2))  # (B, C, T), sums to 1 over T
        mean, std = _weighted_mean_std(x, w, self.eps)
        return torch.cat([mean, std], dim=1)  # (B, 2C)


@POOLINGS.register("lde")
class LearnableDictionaryEncoding(Pooling):
    """Learnable dictionary encoding (Cai, Chen, Li 2018) -> K*C.

    K codewords mu_k in R^C with learnable smoothing factors s_k >= 0 (softplus of a free parameter):

        r_{t,k} = x_t - mu_k                                          (residual of frame t to codeword k)
        w_{t,k} = exp(-s_k ||r_{t,k}||^2) / sum_j exp(-s_j ||r_{t,j}||^2)   (soft assignment over codewords)
        e_k     = sum_t w_{t,k} r_{t,k} / sum_t w_{t,k}                 (aggregated residual)
        out     = flatten(e_1 .. e_K), then L2-normalised               (the FPM paper adds the L2 norm)

    Args:
        in_dim: C, channels of the input (B, C, T).
        num_codewords: K (64 in the FPM paper and in Cai et al.).
        l2_normalize: L2-normalise the flattened encoding (FPM paper, section 4: "After the LDE layer,
            L2-normalization and an FC layer are added").

    Deviation: s_k is parametrised through softplus (init s_k = 1) so that the assignment stays a decreasing
    function of the distance; Cai et al. learn s_k directly.
    """

    def __init__(self, in_dim: int, num_codewords: int = 64, l2_normalize: bool = True):
        super().__init__()
        self.codewords = nn.Parameter(torch.empty(num_codewords, in_dim).uniform_(-1.0, 1.0) / in_dim**0.5)
        # softplus(0.5413) = 1.0
        self.smoothing = nn.Parameter(torch.full((num_codewords,), 0.5413))
        self.l2_normalize = l2_normalize
        self.out_dim = num_codewords * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Expanded form, so that no (B, T, K, C) residual tensor is built:
        #   ||x_t - mu_k||^2 = ||x_t||^2 - 2 x_t.mu_k + ||mu_k||^2
        #   e_k = sum_t w_tk (x_t - mu_k) / sum_t w_tk = (sum_t w_tk x_t) / (sum_t w_tk) - mu_k
        # float32 throughout: the expanded distance cancels badly in half precision, so autocast is turned off
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._encode(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.transpose(1, 2)  # (B, T, C)
        distances = (
            frames.pow(2).sum(dim=2, keepdim=True)  # (B, T, 1)
            - 2 * frames @ self.codewords.t()  # (B, T, K)
            + self.codewords.pow(2).sum(dim=1)  # (K,)
        ).clamp(min=0)
        s = nn.functional.softplus(self.smoothing)  # (K,)
        w = torch.softmax(-s * distances, dim=2)  # (B, T, K): soft assignment of each frame over codewords
        mass = w.sum(dim=1).unsqueeze(2)  # (B, K, 1)
        e = (w.transpose(1, 2) @ frames) / mass.clamp(min=1e-9) - self.codewords  # (B, K, C)
        e = e.flatten(1)  # (B, K*C)
        return nn.functional.normalize(e, dim=1) if self.l2_normalize else e


def build_pooling(name: str, in_dim: int, key: str = "encoder.pooling") -> Pooling:
    return POOLINGS.get(name, key=key).obj(in_dim)
