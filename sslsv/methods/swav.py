"""SwAV (Caron et al., 2020, arXiv 2006.09882) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.2.2, Eq. (5):

    L_SwAV = -1/(B P) sum_i sum_k a_{i,k} log( l(z'_i, c_k) / sum_k' l(z'_i, c_k') ),   l(a, b) = exp(cos(a, b) / tau)

a_{i,k}: code (soft assignment) of the anchor embedding z_i to prototype c_k, from the Sinkhorn-Knopp algorithm
(3 iterations, epsilon 0.05) over the batch (plus a queue); "swapped" prediction: the code of each view is
predicted from the other view, and the two losses are averaged. Settings (section 4.3): tau = 0.1, P = 6000
prototypes, queue of 3840 embeddings from epoch 15, prototypes frozen during the first epoch; projector
2048-2048-512. Authors' code: facebookresearch/swav `main_swav.py` (distributed_sinkhorn).

Deviations: (1) the loss is averaged over samples and summed over prototypes, as the authors' code
(facebookresearch/swav; theolepage/sslsv SwAVLoss): Eq. (5) times P. (2) Prototypes are renormalised to the unit
sphere after every optimiser step (the authors renormalise before each forward; same effect), so their dot
products with normalised embeddings are cosines.
Distributed: Sinkhorn sums are all-reduced, so codes are balanced over the global batch; each rank keeps a queue
of queue_size / world_size of its own embeddings (as the authors' code). The queue is a plain tensor, not a
buffer (DDP would overwrite every rank's queue with rank 0's), checkpointed through `extra_state`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.collapse import CLUSTER_ENTROPY, DEFAULT_RULES
from sslsv.methods.heads import ProjectorConfig, build_projector
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import cluster_usage_entropy, method_metrics


@dataclass
class SwAVConfig:
    temperature: float = 0.1  # tau, review section 4.3
    num_prototypes: int = 6000  # P (Table 4)
    sinkhorn_iterations: int = 3
    epsilon: float = 0.05
    queue_size: int = 3840  # |Q_SwAV|, global (split across ranks)
    queue_start_epoch: int = 15  # 0-based epoch from which the queue is filled (used once full)
    freeze_prototypes_epochs: int = 1
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.epsilon <= 0:
            raise ConfigError("method.temperature: temperature and epsilon must be positive")
        if self.num_prototypes < 2 or self.sinkhorn_iterations < 1 or self.queue_size < 0:
            raise ConfigError("method.num_prototypes: need >= 2 prototypes, >= 1 Sinkhorn iteration, queue_size >= 0")
        for name in ("queue_start_epoch", "freeze_prototypes_epochs"):
            require(getattr(self, name) >= 0, f"method.{name}", ">= 0", getattr(self, name))


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Codes (n, P) from scores (n, P) (cosines to the prototypes): Q = exp(scores / eps)^T rescaled alternately so
    that every prototype receives 1/P of the mass and every sample 1/N, over the global batch of N = n * world
    samples. Returns Q^T * N: each row sums to 1."""
    q = torch.exp(scores.to(torch.promote_types(scores.dtype, torch.float32)) / epsilon).T  # (P, n)
    prototypes = q.shape[0]
    samples = q.shape[1] * distributed.world_size()
    q = q / distributed.all_reduce_sum(q.sum())
    for _ in range(iterations):
        q = q / distributed.all_reduce_sum(q.sum(dim=1, keepdim=True)) / prototypes  # rows: 1/P each
        q = q / q.sum(dim=0, keepdim=True) / samples  # columns: 1/N each
    return (q * samples).T


class SwAVLoss(nn.Module):
    """Swapped prediction, Eq. (5) (summed over prototypes, averaged over samples).

    Args:
        scores1, scores2: (B, P) cosines of the embeddings of views 1 and 2 to the prototypes;
        codes1, codes2: (B, P) Sinkhorn codes of views 1 and 2 (no gradient).
    Returns:
        1/2 [ CE(codes1, softmax(scores2 / tau)) + CE(codes2, softmax(scores1 / tau)) ].
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, scores1, scores2, codes1, codes2) -> torch.Tensor:
        loss_1 = -(codes1 * F.log_softmax(scores2 / self.temperature, dim=1)).sum(dim=1).mean()
        loss_2 = -(codes2 * F.log_softmax(scores1 / self.temperature, dim=1)).sum(dim=1).mean()
        return (loss_1 + loss_2) / 2


@METHODS.register("swav", config=SwAVConfig)
class SwAV(Method):
    """SwAV: online clustering with Sinkhorn codes and swapped prediction (review Eq. 5); P 6000, tau 0.1."""

    collapse_rules = DEFAULT_RULES + (CLUSTER_ENTROPY,)

    def __init__(self, encoder, cfg: SwAVConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        self.projector, dim = build_projector(cfg.projector, encoder.embed_dim)
        self.prototypes = nn.Linear(dim, cfg.num_prototypes, bias=False)
        self._normalise_prototypes()
        self.loss = SwAVLoss(cfg.temperature)
        self.local_queue_size = cfg.queue_size // distributed.world_size()
        self.queue: torch.Tensor | None = None  # (2, local_queue_size, D), filled from queue_start_epoch
        self.queue_count = 0
        self.epoch = 0
        self._pending: torch.Tensor | None = None
        self.entropy_bounds = {}

    @torch.no_grad()
    def _normalise_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def _queue_active(self) -> bool:
        return self.local_queue_size > 0 and self.epoch >= self.cfg.queue_start_epoch

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "swav")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        scores1, scores2 = self.prototypes(z1), self.prototypes(z2)  # (B, P) cosines
        use_queue = self._queue_active() and self.queue is not None and self.queue_count >= self.local_queue_size
        codes = []
        for view, scores in enumerate((scores1, scores2)):
            scores = scores.detach()
            if use_queue:
                scores = torch.cat([self.prototypes(self.queue[view].to(scores.dtype)).detach(), scores])
            codes.append(sinkhorn_knopp(scores, self.cfg.epsilon, self.cfg.sinkhorn_iterations)[-len(z1):])
        loss = self.loss(scores1, scores2, codes[0], codes[1])
        if self._queue_active():
            self._pending = torch.stack([z1.detach(), z2.detach()])  # enqueued after the optimiser step
        assignments = torch.cat([scores1, scores2]).detach().argmax(dim=1)
        metrics = {"cluster_entropy": cluster_usage_entropy(assignments, self.cfg.num_prototypes),
                   "queue_used": torch.tensor(float(use_queue), device=loss.device),
                   **method_metrics(torch.cat([z1, z2]), self.diagnostics_due)}
        return StepOutput(loss, metrics)

    @torch.no_grad()
    def update_queue(self, embeddings: torch.Tensor) -> None:
        """Push embeddings (2, B, D) of this rank to the front of the queue, dropping the oldest."""
        if self.queue is None:
            self.queue = embeddings.new_zeros(2, self.local_queue_size, embeddings.shape[2])
        n = min(embeddings.shape[1], self.local_queue_size)
        self.queue = torch.cat([embeddings[:, :n].to(self.queue.dtype), self.queue[:, : self.local_queue_size - n]], dim=1)
        self.queue_count = min(self.queue_count + n, self.local_queue_size)

    def before_optimizer_step(self, epoch: int) -> None:
        if epoch < self.cfg.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None  # frozen: the optimiser skips parameters without gradient

    def after_optimizer_step(self, progress: float) -> None:
        self._normalise_prototypes()
        if self._pending is not None:
            self.update_queue(self._pending)
            self._pending = None

    def extra_state(self) -> dict:
        return {"queue": None if self.queue is None else self.queue.cpu(), "queue_count": self.queue_count}

    def load_extra_state(self, state: dict) -> None:
        queue = state.get("queue")
        device = self.prototypes.weight.device
        self.queue = None if queue is None else queue.to(device)
        self.queue_count = int(state.get("queue_count", 0))
