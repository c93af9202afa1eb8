"""SimCLR (Chen et al., 2020, arXiv 2002.05709) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.1.2, Eq. (2):

    L_SimCLR = -1/B sum_i log( l(z_i, z'_i) / sum_j l(z_i, z'_j) ),   l(a, b) = exp(cos(a, b) / tau)

"the implementation is symmetric, resulting in 2B positive pairs with 2(B - 1) negative pairs each": every one
of the 2B embeddings is an anchor whose positive is the other view of its utterance and whose negatives are the
2(B - 1) embeddings of the other utterances, both views (NT-Xent). Settings (section 4.3): tau = 0.03, no projector.
Under torchrun the negatives come from the global batch: local anchors are scored against gathered embeddings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.collapse import DEFAULT_RULES, NearMaximum
from sslsv.methods.heads import ProjectorConfig, build_projector
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import method_metrics, softmax_entropy


@dataclass
class SimCLRConfig:
    temperature: float = 0.03  # review, section 4.3
    projector: ProjectorConfig = field(default_factory=lambda: ProjectorConfig(enabled=False))

    def __post_init__(self) -> None:
        require(self.temperature > 0, "method.temperature", "positive", self.temperature)


class NTXentLoss(nn.Module):
    """Symmetric NT-Xent, Eq. (2) of the review, with negatives gathered across ranks.

    Args:
        z1, z2: embeddings of the two views, (B, D) each; row i of z1 and z2 come from the same utterance.
    Returns:
        (scalar: mean over the 2B local anchors of -log softmax of the positive among the 2N - 1 global candidates
        (N = global batch), i.e. the anchor itself is excluded; detached metrics: top-1 accuracy and the mean
        entropy of the contrastive distribution, log(2N - 1) when embeddings are constant).
    """

    def __init__(self, temperature: float = 0.03):
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        batch = z1.shape[0]
        n = batch * distributed.world_size()
        offset = distributed.rank() * batch
        anchors = torch.cat([z1, z2])  # (2B, D)
        candidates = torch.cat([distributed.gather(z1), distributed.gather(z2)])  # (2N, D)
        logits = anchors @ candidates.T / self.temperature  # (2B, 2N)
        local = torch.arange(batch, device=z1.device) + offset
        self_index = torch.cat([local, local + n])
        positive_index = torch.cat([local + n, local])
        rows = torch.arange(2 * batch, device=z1.device)
        self_mask = torch.zeros_like(logits, dtype=torch.bool)
        self_mask[rows, self_index] = True
        logits = logits.masked_fill(self_mask, float("-inf"))
        loss = F.cross_entropy(logits, positive_index)
        accuracy = (logits.argmax(dim=1) == positive_index).float().mean()
        return loss, {"accuracy": accuracy.detach(), "contrastive_entropy": softmax_entropy(logits)}


@METHODS.register("simclr", config=SimCLRConfig)
class SimCLR(Method):
    """SimCLR: contrastive, in-batch negatives (review Eq. 2); tau 0.03, no projector."""

    # A uniform softmax over the 2N - 1 candidates: the positive is no longer told apart (complete collapse).
    collapse_rules = DEFAULT_RULES + (NearMaximum("contrastive_entropy"),)

    def __init__(self, encoder, cfg: SimCLRConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.projector, _ = build_projector(cfg.projector, encoder.embed_dim)
        self.loss = NTXentLoss(cfg.temperature)
        self.entropy_bounds: dict[str, float] = {}

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "simclr")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        loss, metrics = self.loss(z1, z2)
        candidates = 2 * len(z1) * distributed.world_size() - 1
        self.entropy_bounds["contrastive_entropy"] = math.log(candidates)  # read by the collapse detector
        return StepOutput(loss, {**metrics, **method_metrics(torch.cat([z1, z2]))})
