"""MoCo (He et al., 2020, arXiv 1911.05722; v2: Chen et al., 2020, arXiv 2003.04297) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.1.3, Eq. (3):

    L_MoCo = -1/B sum_i log( l(z_i, z'_i) / ( l(z_i, z'_i) + sum_{j in J} l(z_i, q_j) ) ),  l(a, b) = exp(cos(a, b) / tau)

z_i: query (online encoder f_theta, projector g_phi) of one view; z'_i: key of the other view from the momentum
encoder (theta' <- m theta' + (1 - m) theta); q_j: the memory queue of past keys. Settings (section 4.3):
tau = 0.03, |Q| = 32 768, m = 0.999, no projector. Authors' code: theolepage/sslsv `methods/MoCo/MoCo.py`
@1169b6b (symmetric: both views are queries, one queue per view, the two losses averaged; followed here).

Distributed: keys of all ranks go into the queue (`gather_no_grad`), so every rank holds the same queue.
Shuffled BN (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", 2020,
arXiv:1911.05722, section 3.3; kept by MoCo v2), `shuffle_bn: true` (default): every batch norm of the method keeps
per-device statistics under DDP (`sync_batch_norm()` is False, so the trainer does not convert them), and the key
branch's inputs are shuffled across ranks (`distributed.shuffle_across_ranks`: all_gather, one permutation drawn
on rank 0 and broadcast, each rank encodes its chunk) and its outputs unshuffled, so the BN statistics a key sees
never come from the sub-batch its query was normalised with; otherwise the model can tell the positive by the
batch statistics it shares with the query ("cheating", He et al. section 3.3). This is the authors' setup: the
authors' code (theolepage/sslsv `methods/MoCo/MoCo.py`, `_batch_shuffle_ddp`) shuffles the keys, and every MoCo
config of theirs sets `ddp_sync_batchnorm: false`. `shuffle_bn: false`: global-batch BN (SyncBatchNorm, or
GlobalBatchNorm on gloo) everywhere and no shuffle, as for every other method. In one process the shuffle does
nothing (one device has only one set of batch statistics), as in the authors' code with one device: a
single-device run does not reproduce shuffled BN.

Option `margin` (off by default): the positive's logit moved by a CosFace / ArcFace / AdaFace margin, fixed,
scheduled or learnable (sslsv/methods/margins.py; "MoCo + Margin" in the authors' `methods/MoCoMargins`).

State changes are separate no-grad methods called from `after_optimizer_step`: the EMA of the key encoder, then
`update_queue` with the keys of the step. Ablation (review Figure 4a): `use_momentum_encoder: false` takes keys
from the online encoder (stop-gradient, no EMA).

Diagnostic `negative_gap` (review section 6.1: without the momentum encoder "the model exploits inconsistencies
between recent positives and stale negatives"): mean cosine of the queries to the other utterances' keys of the
current step minus their mean cosine to the queued keys (only the rows filled with real keys). A consistent queue
makes both alike, so the gap stays near 0; a drifting key encoder makes every current key closer to every query
than any stale negative, so the positive is found by the weights' age rather than the speaker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.collapse import DEFAULT_RULES, Above, NearMaximum, Threshold
from sslsv.methods.ema import momentum_copy, update_momentum
from sslsv.methods.heads import ProjectorConfig, build_projector
from sslsv.methods.margins import ContrastiveMargin, MarginConfig
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import method_metrics, softmax_entropy


@dataclass
class MoCoConfig:
    temperature: float = 0.03  # tau, review section 4.3 (Table 2)
    queue_size: int = 32768  # |Q|, review section 4.3 (Table 1)
    momentum: float = 0.999  # m, review section 4.3 (Table 3)
    use_momentum_encoder: bool = True  # False: collapse ablation of Figure 4(a)
    # DDP: per-device BN and key inputs shuffled across ranks (He et al. section 3.3; the authors' MoCo configs);
    # false: global-batch BN, no shuffle. No effect in one process.
    shuffle_bn: bool = True
    projector: ProjectorConfig = field(default_factory=lambda: ProjectorConfig(enabled=False))
    # margin on the positive logit (CosFace / ArcFace / AdaFace; sslsv.methods.margins); kind none: plain Eq. (3)
    margin: MarginConfig = field(default_factory=MarginConfig)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("method.temperature: must be positive")
        if self.queue_size < 1:
            raise ConfigError("method.queue_size: must be at least 1")
        if not 0 <= self.momentum <= 1:
            raise ConfigError("method.momentum: must be in [0, 1]")


class MoCoLoss(nn.Module):
    """Eq. (3): InfoNCE of each query against its key (positive) and the queue (negatives).

    Args:
        z1: queries (B, D); z2: keys (B, D), row i of both from the same utterance (no gradient needed);
        queue: (Q, D) negatives (L2-normalised).
    Returns:
        (loss, logits (B, 1 + Q) detached, for diagnostics); column 0 holds the positive.
    """

    def __init__(self, temperature: float = 0.03, margin: ContrastiveMargin | None = None):
        super().__init__()
        self.temperature = temperature
        self.margin = margin  # psi on the positives' cosines (sslsv.methods.margins); None: plain Eq. (3)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, queue: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norms = z1.norm(dim=1)  # queries' norms before normalisation (AdaFace margin)
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        positive = (z1 * z2).sum(dim=1, keepdim=True)  # (B, 1)
        negative = z1 @ queue.to(z1.dtype).T  # (B, Q)
        logits = torch.cat([positive, negative], dim=1) / self.temperature  # (B, 1 + Q)
        target = torch.zeros(len(z1), dtype=torch.long, device=z1.device)
        if self.margin is None or not self.margin.enabled:
            return F.cross_entropy(logits, target), logits.detach()
        moved = self.margin(positive[:, 0], norms).to(positive.dtype)[:, None]
        margin_logits = torch.cat([moved, negative], dim=1) / self.temperature
        # the returned logits (diagnostics: accuracy, entropy) stay those of the plain loss
        return F.cross_entropy(margin_logits, target), logits.detach()


@torch.no_grad()
def negative_gap(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """Mean cos(query i, key j) over i != j of the current step minus mean cos(query, queued key).

    queries, keys: (B, D), row i of both from the same utterance; queue: (Q, D) L2-normalised.
    """
    q, k = F.normalize(queries.detach().float(), dim=1), F.normalize(keys.detach().float(), dim=1)
    b = len(q)
    current = q @ k.T
    off_diagonal = (current.sum() - current.diagonal().sum()) / (b * (b - 1))
    return off_diagonal - (q @ queue.float().T).mean()


@METHODS.register("moco", config=MoCoConfig)
class MoCo(Method):
    """MoCo: contrastive with a momentum key encoder and a queue of negatives (review Eq. 3); tau 0.03, |Q| 32768."""

    # Review section 6.1 (Figure 4a): a uniform softmax over the queue (complete collapse, too high a temperature);
    # stale queued negatives (no momentum encoder: measured on the demo corpus, healthy gap 0.0002-0.006, without
    # the momentum encoder 0.26-0.37).
    collapse_rules = DEFAULT_RULES + (
        NearMaximum("contrastive_entropy"),
        Above("negative_gap", Threshold("max_negative_gap", 0.1),
              "the queued negatives are far from every current embedding, so the positive is told apart by the age "
              "of the keys, not the speaker (drifting key encoder; is the momentum encoder on?)",
              label="negative gap", fmt=".3f"),
    )

    def __init__(self, encoder, cfg: MoCoConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        self.projector, dim = build_projector(cfg.projector, encoder.embed_dim)
        if cfg.use_momentum_encoder:
            self.key_encoder = momentum_copy(encoder)
            self.key_projector = momentum_copy(self.projector)
        self.loss = MoCoLoss(cfg.temperature, ContrastiveMargin(cfg.margin, info.epochs if info is not None else 0))
        self.register_buffer("queue", F.normalize(torch.randn(2, cfg.queue_size, dim), dim=2))  # one per view
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.entropy_bounds = {"contrastive_entropy": math.log(cfg.queue_size + 1)}
        self._pending_keys: torch.Tensor | None = None
        self.keys_seen = 0  # real keys written to each view's queue so far (the rest still holds random vectors)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if not self.cfg.use_momentum_encoder:
            return []
        return [(self.encoder, self.key_encoder), (self.projector, self.key_projector)]

    def sync_batch_norm(self) -> bool:
        """Shuffled BN needs per-device batch norm (global statistics would make the shuffle a no-op)."""
        return not self.cfg.shuffle_bn

    @torch.no_grad()
    def _keys(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Keys (B, D) of each view (B, S) from the momentum branch (the online one without momentum encoder), one
        pass per view, with the same cross-rank shuffle for every view under DDP when `shuffle_bn`."""
        if self.cfg.use_momentum_encoder:
            network = lambda x: self.key_projector(self.key_encoder(x))  # noqa: E731
        else:
            network = lambda x: self.projector(self.encoder(x))  # noqa: E731
        if not (self.cfg.shuffle_bn and distributed.world_size() > 1):
            return [network(x) for x in views]
        shuffled, permutation = distributed.shuffle_across_ranks(*views)
        return [distributed.unshuffle_across_ranks(network(x), permutation) for x in shuffled]

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "moco")
        q1, q2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        k1, k2 = self._keys([x1, x2])
        k1, k2 = F.normalize(k1, dim=1).to(q1.dtype), F.normalize(k2, dim=1).to(q1.dtype)
        queue = self.queue.clone()
        loss_1, logits_1 = self.loss(q1, k2, queue[1])
        loss_2, logits_2 = self.loss(q2, k1, queue[0])
        loss = (loss_1 + loss_2) / 2
        # Keys of every rank, enqueued after the optimiser step (update_queue).
        self._pending_keys = torch.stack([distributed.gather_no_grad(k1), distributed.gather_no_grad(k2)])
        accuracy = torch.cat([logits_1, logits_2]).argmax(dim=1).eq(0).float().mean()
        metrics = {"accuracy": accuracy,
                   "contrastive_entropy": (softmax_entropy(logits_1) + softmax_entropy(logits_2)) / 2,
                   **method_metrics(torch.cat([q1, q2]), self.diagnostics_due)}
        metrics.update(self.loss.margin.metrics(loss.device))
        filled = min(self.keys_seen, self.cfg.queue_size)
        if filled > 0 and len(q1) > 1:
            metrics["negative_gap"] = (negative_gap(q1, k2, queue[1, :filled]) + negative_gap(q2, k1, queue[0, :filled])) / 2
        return StepOutput(loss, metrics)

    @torch.no_grad()
    def update_queue(self, keys: torch.Tensor) -> None:
        """Write keys (2, N, D) (one set per view, N = global batch) at the queue pointer, wrapping around."""
        size = self.queue.shape[1]
        n = min(keys.shape[1], size)
        rows = (int(self.queue_ptr) + torch.arange(n, device=self.queue.device)) % size
        self.queue[:, rows] = keys[:, -n:].to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)
        self.keys_seen = min(self.keys_seen + n, size)

    def on_epoch_start(self, epoch: int) -> None:
        self.loss.margin.set_epoch(epoch)

    def extra_state(self) -> dict:
        return {"keys_seen": self.keys_seen}

    def load_extra_state(self, state: dict) -> None:
        # A checkpoint without the count comes from a run whose queue had long been filled.
        self.keys_seen = int(state.get("keys_seen", self.cfg.queue_size))

    def after_optimizer_step(self, progress: float) -> None:
        for online, ema in self.momentum_pairs():
            update_momentum(online, ema, self.cfg.momentum)
        if self._pending_keys is not None:
            self.update_queue(self._pending_keys)
            self._pending_keys = None
