"""CPC (van den Oord et al., 2018, arXiv 1807.03748) for speaker verification.

Review (../shared/papers/ssl_sv_review.txt), section 2.1.1, Eq. (1):

    L_CPC = -1/(B T) sum_i sum_{t=t0+1..T} log( l(p_i^(t), y_i^(t)) / sum_{j in B} l(p_i^(t), y_j^(t)) ),
    l(a, b) = exp(cos(a, b) / tau)

y_i^(t): frame-level encoder outputs (`SpeakerModel.forward_frames`, (B, C, T)); an autoregressive aggregator g_phi
(GRU, 256) reads y^(1..t0) and its last state z^(t0) is mapped by one linear predictor per future step
(h_psi) to p^(t0+k), k = 1..4 (t0 = T - 4). Negatives: the other utterances' frames at the same time step.
Settings (section 4.3): GRU 256, 4 predicted steps, tau = 1.0. Every view of the batch is an independent
sequence; the loss is averaged over views, predicted steps and utterances (the 1/T of Eq. (1) counts the
predicted steps). Distributed: targets are gathered from every rank with gradients, so negatives come from the
global batch (rank-shifted labels, as SimCLR).

Limitation: CPC trains the frame-level layers only; the encoder's pooling and output layer get no gradient from
Eq. (1) and stay at their initialisation, yet they produce the evaluated representation. A zero-weighted sum of
the encoder's parameters keeps them in the graph so that DDP does not fail on unused parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo
from sslsv.registry import METHODS
from sslsv.training import distributed
from sslsv.training.diagnostics import method_metrics, softmax_entropy


@dataclass
class CPCConfig:
    aggregator_dim: int = 256  # GRU hidden size, review section 4.3
    prediction_steps: int = 4  # T - t0
    temperature: float = 1.0  # tau

    def __post_init__(self) -> None:
        if self.prediction_steps < 1 or self.aggregator_dim < 1:
            raise ConfigError("method.prediction_steps: prediction_steps and aggregator_dim must be positive")
        if self.temperature <= 0:
            raise ConfigError("method.temperature: must be positive")


class CPCLoss(nn.Module):
    """Eq. (1) for one set of sequences.

    Args:
        predictions: (B, K, C) p_i^(t0+k); targets: (B, K, C) y_i^(t0+k), k = 1..K.
    Returns:
        (loss, logits (K, B, N) detached): for each step, local rows against the N global targets.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps, _ = predictions.shape
        p = F.normalize(predictions, dim=2).transpose(0, 1)  # (K, B, C)
        y = F.normalize(distributed.gather(targets), dim=2).transpose(0, 1)  # (K, N, C)
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
        frame_dim = encoder.encoder.frame_dim if hasattr(encoder.encoder, "frame_dim") else None
        if frame_dim is None:
            raise ConfigError(f"method.name: cpc needs an encoder with frame-level outputs and a `frame_dim` "
                              f"({type(encoder.encoder).__name__} has none)")
        self.aggregator = nn.GRU(frame_dim, cfg.aggregator_dim, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(cfg.aggregator_dim, frame_dim) for _ in range(cfg.prediction_steps))
        self.loss = CPCLoss(cfg.temperature)

    def _predict(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """frames (B, C, T) -> predictions (B, K, C), targets (B, K, C), context z^(t0) (B, H)."""
        steps = self.cfg.prediction_steps
        if frames.shape[2] <= steps:
            raise ValueError(f"cpc: {frames.shape[2]} frames, need more than {steps} (use longer views)")
        sequence = frames.transpose(1, 2)  # (B, T, C)
        context, _ = self.aggregator(sequence[:, :-steps])  # (B, t0, H)
        z = context[:, -1]  # (B, H)
        predictions = torch.stack([head(z) for head in self.predictors], dim=1)  # (B, K, C)
        return predictions, sequence[:, -steps:], z

    def forward(self, batch: Batch) -> StepOutput:
        groups, start, views = [], 0, batch.views
        while start < len(views):  # one encoder pass per run of equal-length views
            end = start + 1
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            groups.extend(self.encoder.forward_frames(torch.cat(views[start:end])).chunk(end - start))
            start = end
        losses, entropies, contexts = [], [], []
        for frames in groups:
            predictions, targets, z = self._predict(frames)
            loss, logits = self.loss(predictions, targets)
            losses.append(loss)
            entropies.append(softmax_entropy(logits.flatten(0, 1)))
            contexts.append(z)
        loss = torch.stack(losses).mean()
        # Keep every encoder parameter in the graph (pooling and head are unused by Eq. 1), for DDP.
        loss = loss + 0.0 * sum(p.sum() for p in self.encoder.parameters() if p.requires_grad)
        metrics = {"contrastive_entropy": torch.stack(entropies).mean(), **method_metrics(torch.cat(contexts))}
        return StepOutput(loss, metrics)
