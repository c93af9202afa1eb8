"""CPC (van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018, arXiv:1807.03748)
for speaker verification.

Review (Lepage & Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review", 2026,
arXiv:2602.10829), section 2.1.1, Eq. (1):

    L_CPC = -1/(B T) sum_i sum_{t=t0+1..T} log( l(p_i^(t), y_i^(t)) / sum_{j in B} l(p_i^(t), y_j^(t)) ),
    l(a, b) = exp(cos(a, b) / tau)

y_i^(t), y'_i^(t): frame-level encoder outputs (`SpeakerModel.forward_frames`, (B, C, T)) of the anchor x_i and of
the positive x'_i (two crops of one utterance); an autoregressive aggregator g_phi (GRU, 256) reads y^(1..t0) and
its last state z^(t0) is mapped by one linear predictor per future step (h_psi) to p^(t0+k), k = 1..4 (t0 = T - 4).
Targets: the review defines y' from x' for Eq. (1); as in the authors' code (theolepage/sslsv, methods/CPC/CPC.py),
the targets are the *positive's* last 4 frames y'^(t0+k) (`cross_view: true`), so the context must carry what the
two crops share (the speaker and the channel) rather than the next phones of its own crop; `cross_view: false`
predicts each view's own future instead. One direction, anchor context -> positive targets, as Eq. (1) and the
authors; `symmetric: true` adds positive -> anchor and averages the two. Negatives: the other utterances' frames at
the same step. Settings (section 4.3): GRU 256, 4 predicted steps, tau = 1.0.

Logits (`logits`): the authors' code scores with raw dot products p . y (methods/CPC/CPCLoss.py:
`InfoNCELoss(temperature=1.0, normalize=False)`), the default `dot`, which the review's Table 12 results come from;
`cosine` is the literal Eq. (1), cos(p, y) / tau. With cosine logits at tau = 1 every logit lies in [-1, 1], so the
loss cannot go below log(1 + (N - 1) e^-2), 3.57 nats for N = 256: not comparable with Table 12. `temperature`
divides either kind of logit.
Distributed: targets are gathered from every rank with gradients, so negatives come from the global batch
(rank-shifted labels, as SimCLR).

Read-out: the shipped Fast ResNet-34 configs evaluate the parameter-free mean of the frames (`gap`, no head),
which the cross-view targets train. With `encoder.pooling: gru`, g_phi *is* the encoder's pooling, and the evaluated
representation is its last state over the whole utterance (theolepage/sslsv embeds with `aggregator(encoder(x))`).
With any other pooling, CPC trains a GRU of its own, and a parametric pooling or head gets no gradient from
Eq. (1): it keeps its initialisation yet produces the evaluated representation (ECAPA-TDNN's ASTP and head). A
zero-weighted sum of the encoder's parameters keeps them all in the graph so that DDP does not fail on unused
parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError
from sslsv.encoders.pooling import RecurrentPooling
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import method_metrics, softmax_entropy


@dataclass
class CPCConfig:
    aggregator_dim: int = 256  # GRU hidden size, review section 4.3
    prediction_steps: int = 4  # T - t0
    temperature: float = 1.0  # tau
    logits: Literal["cosine", "dot"] = "dot"  # dot: the authors' p . y / tau; cosine: Eq. (1), cos(p, y) / tau
    cross_view: bool = True  # targets: the positive view's future frames (y'); false: each view's own
    symmetric: bool = False  # cross_view: also predict the anchor's future from the positive, and average

    def __post_init__(self) -> None:
        if self.prediction_steps < 1 or self.aggregator_dim < 1:
            raise ConfigError("method.prediction_steps: prediction_steps and aggregator_dim must be positive")
        if self.temperature <= 0:
            raise ConfigError("method.temperature: must be positive")


class CPCLoss(nn.Module):
    """Eq. (1) for one set of sequences, with `logits` "dot" (p . y / tau, the authors') or "cosine" (cos / tau).

    Args:
        predictions: (B, K, C) p_i^(t0+k); targets: (B, K, C) y_i^(t0+k), k = 1..K.
    Returns:
        (loss, logits (K, B, N) detached): for each step, local rows against the N global targets.
    """

    def __init__(self, temperature: float = 1.0, logits: str = "dot"):
        super().__init__()
        if logits not in ("cosine", "dot"):
            raise ConfigError(f"method.logits: 'cosine' or 'dot', got {logits!r}")
        self.temperature = temperature
        self.logits = logits

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps, _ = predictions.shape
        # float32 at least: raw dot products of frame features are not bounded, half precision would round them.
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            dtype = torch.promote_types(predictions.dtype, torch.float32)
            p = predictions.to(dtype).transpose(0, 1)  # (K, B, C)
            y = distributed.gather(targets).to(dtype).transpose(0, 1)  # (K, N, C)
            if self.logits == "cosine":
                p, y = F.normalize(p, dim=2), F.normalize(y, dim=2)
            logits = torch.bmm(p, y.transpose(1, 2)) / self.temperature  # (K, B, N)
            labels = torch.arange(batch, device=p.device) + distributed.rank() * batch
            loss = F.cross_entropy(logits.reshape(steps * batch, -1), labels.repeat(steps))
        return loss, logits.detach()


@METHODS.register("cpc", config=CPCConfig)
class CPC(Method):
    """CPC: predict future frame representations against other utterances' frames (review Eq. 1); GRU 256, 4 steps."""

    def __init__(self, encoder, cfg: CPCConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        if not encoder.has_frames:
            raise ConfigError(f"method.name: cpc needs an encoder with frame-level outputs (forward_frames; "
                              f"{type(encoder.encoder).__name__} has none)")
        frame_dim = encoder.encoder.frame_dim
        pooling = encoder.encoder.frame_pooling()
        if isinstance(pooling, RecurrentPooling):
            if pooling.out_dim != cfg.aggregator_dim:
                raise ConfigError(f"method.aggregator_dim: {cfg.aggregator_dim}, but the encoder's gru pooling, which "
                                  f"is CPC's aggregator, has {pooling.out_dim} units")
            self.aggregator = None  # g_phi is the encoder's pooling: what Eq. (1) trains is what is evaluated
        else:
            self.aggregator = RecurrentPooling(frame_dim, cfg.aggregator_dim)
        self.predictors = nn.ModuleList(nn.Linear(cfg.aggregator_dim, frame_dim) for _ in range(cfg.prediction_steps))
        self.loss = CPCLoss(cfg.temperature, cfg.logits)

    @property
    def context_network(self) -> RecurrentPooling:
        """g_phi: the encoder's gru pooling, or CPC's own GRU when the encoder pools otherwise."""
        return self.aggregator if self.aggregator is not None else self.encoder.encoder.frame_pooling()

    def _predict(self, frames: torch.Tensor, target_frames: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Context from frames (B, C, T) up to t0 = T - K; targets: the last K frames of target_frames (B, C, T')
        (the positive view; default `frames` itself). Returns predictions (B, K, C), targets (B, K, C), z^(t0)."""
        steps = self.cfg.prediction_steps
        target_frames = frames if target_frames is None else target_frames
        for name, f in (("context", frames), ("target", target_frames)):
            if f.shape[2] <= steps:
                raise ValueError(f"cpc: {f.shape[2]} {name} frames, need more than {steps} (use longer views)")
        z = self.context_network.contexts(frames.transpose(1, 2)[:, :-steps])[:, -1]  # (B, H)
        predictions = torch.stack([head(z) for head in self.predictors], dim=1)  # (B, K, C)
        return predictions, target_frames.transpose(1, 2)[:, -steps:], z

    def _frames(self, batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(context frames, target frames) pairs: anchor -> positive between the first two views (and positive ->
        anchor when symmetric), or every view with itself (cross_view false)."""
        if self.cfg.cross_view:
            f1, f2 = encode_views(self.encoder.forward_frames, two_views(batch, "cpc"))
            return [(f1, f2), (f2, f1)] if self.cfg.symmetric else [(f1, f2)]
        return [(f, f) for f in encode_views(self.encoder.forward_frames, batch.views)]

    def forward(self, batch: Batch) -> StepOutput:
        losses, entropies, contexts = [], [], []
        for frames, target_frames in self._frames(batch):
            predictions, targets, z = self._predict(frames, target_frames)
            loss, logits = self.loss(predictions, targets)
            losses.append(loss)
            entropies.append(softmax_entropy(logits.flatten(0, 1)))
            contexts.append(z)
        loss = torch.stack(losses).mean()
        # Keep every encoder parameter in the graph (a non-recurrent pooling and the head are unused by Eq. 1), for DDP.
        loss = loss + 0.0 * sum(p.sum() for p in self.encoder.parameters() if p.requires_grad)
        metrics = {"contrastive_entropy": torch.stack(entropies).mean(),
                   **method_metrics(torch.cat(contexts), self.diagnostics_due)}
        return StepOutput(loss, metrics)
