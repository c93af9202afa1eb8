"""SimCLR (Chen et al., 2020, arXiv 2002.05709) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.1.2, Eq. (2):

    L_SimCLR = -1/B sum_i log( l(z_i, z'_i) / sum_j l(z_i, z'_j) ),   l(a, b) = exp(cos(a, b) / tau)

"the implementation is symmetric, resulting in 2B positive pairs with 2(B - 1) negative pairs each": every one
of the 2B embeddings is an anchor whose positive is the other view of its utterance and whose negatives are the
2(B - 1) embeddings of the other utterances, both views (NT-Xent). Settings (section 4.3): tau = 0.03, no projector.
Under torchrun the negatives come from the global batch: local anchors are scored against gathered embeddings.

Options (off by default): `margin` moves the positive's logit (CosFace / ArcFace / AdaFace, fixed, scheduled or
learnable; sslsv/methods/margins.py, "SimCLR + Margin" of review section 3.1.1); `ssps` replaces the second
view's embedding by a queued pseudo-positive from a nearby cluster (SimCLR-SSPS; sslsv/methods/ssps.py). With SSPS
the replaced rows of z' are detached queue entries, so only z gets their gradient (as the authors' code).
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
from sslsv.methods.margins import ContrastiveMargin, MarginConfig
from sslsv.methods.ssps import SSPS, SSPSConfig, reference_representations
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import method_metrics, softmax_entropy


@dataclass
class SimCLRConfig:
    temperature: float = 0.03  # review, section 4.3
    projector: ProjectorConfig = field(default_factory=lambda: ProjectorConfig(enabled=False))
    # margin on the positive logit (CosFace / ArcFace / AdaFace; sslsv.methods.margins); kind none: plain Eq. (2)
    margin: MarginConfig = field(default_factory=MarginConfig)
    # self-supervised positive sampling (sslsv.methods.ssps); needs one extra view (the reference crop) at the end
    ssps: SSPSConfig = field(default_factory=SSPSConfig)

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

    def __init__(self, temperature: float = 0.03, margin: ContrastiveMargin | None = None):
        super().__init__()
        self.temperature = temperature
        self.margin = margin  # psi on the positives' cosines (sslsv.methods.margins); None: plain Eq. (2)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        norms = torch.cat([z1, z2]).norm(dim=1)  # (2B,) anchors' norms before normalisation (AdaFace margin)
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        batch = z1.shape[0]
        n = batch * distributed.world_size()
        offset = distributed.rank() * batch
        anchors = torch.cat([z1, z2])  # (2B, D)
        candidates = torch.cat([distributed.gather(z1), distributed.gather(z2)])  # (2N, D)
        local = torch.arange(batch, device=z1.device) + offset
        self_index = torch.cat([local, local + n])
        positive_index = torch.cat([local + n, local])
        rows = torch.arange(2 * batch, device=z1.device)
        if self.margin is None or not self.margin.enabled:
            logits = anchors @ candidates.T / self.temperature  # (2B, 2N)
            plain = logits
        else:
            cosines = anchors @ candidates.T
            moved = self.margin(cosines[rows, positive_index], norms).to(cosines.dtype)
            logits = cosines.scatter(1, positive_index[:, None], moved[:, None]) / self.temperature
            plain = cosines.detach() / self.temperature  # the metrics stay those of the plain loss
        self_mask = torch.zeros_like(logits, dtype=torch.bool)
        self_mask[rows, self_index] = True
        logits = logits.masked_fill(self_mask, float("-inf"))
        plain = plain.masked_fill(self_mask, float("-inf"))
        loss = F.cross_entropy(logits, positive_index)
        accuracy = (plain.argmax(dim=1) == positive_index).float().mean()
        return loss, {"accuracy": accuracy.detach(), "contrastive_entropy": softmax_entropy(plain)}


@METHODS.register("simclr", config=SimCLRConfig)
class SimCLR(Method):
    """SimCLR: contrastive, in-batch negatives (review Eq. 2); tau 0.03, no projector."""

    # A uniform softmax over the 2N - 1 candidates: the positive is no longer told apart (complete collapse).
    collapse_rules = DEFAULT_RULES + (NearMaximum("contrastive_entropy"),)

    def __init__(self, encoder, cfg: SimCLRConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.projector, _ = build_projector(cfg.projector, encoder.embed_dim)
        self.loss = NTXentLoss(cfg.temperature, ContrastiveMargin(cfg.margin, info.epochs if info is not None else 0))
        self.ssps = None
        if cfg.ssps.enabled:
            self.ssps = SSPS(cfg.ssps, info.num_samples, positives=1,
                             positive_in_reference_space=not cfg.projector.enabled,
                             recordings=info.recordings)
        self.entropy_bounds: dict[str, float] = {}

    def on_epoch_start(self, epoch: int) -> None:
        self.loss.margin.set_epoch(epoch)
        if self.ssps is not None:
            self.ssps.set_epoch(epoch)

    def forward(self, batch: Batch) -> StepOutput:
        if self.ssps is not None and len(batch.views) < 3:
            raise ValueError("simclr with method.ssps needs 3 views per utterance: 2 training views, then the "
                             "reference crop as the last group of dataset.views")
        x1, x2 = two_views(batch, "simclr")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        embeddings = torch.cat([z1, z2])
        ssps_metrics = {}
        if self.ssps is not None and self.ssps.collecting:
            # SSPS (authors' BaseSiameseMethod.train_step): the second view's embedding is replaced by a queued
            # pseudo-positive; the step's own z2 goes into the queue after the optimiser step.
            reference = reference_representations(self.encoder, batch.views[-1])
            (positive,), ssps_metrics = self.ssps.substitute(batch.indices, reference, [z2], batch.labels)
            self.ssps.stage(batch.indices, reference, [z2], batch.labels)
            z2 = positive
        loss, metrics = self.loss(z1, z2)
        candidates = 2 * len(z1) * distributed.world_size() - 1
        self.entropy_bounds["contrastive_entropy"] = math.log(candidates)  # read by the collapse detector
        return StepOutput(loss, {**metrics, **method_metrics(embeddings, self.diagnostics_due), **ssps_metrics,
                                 **self.loss.margin.metrics(loss.device)})

    def after_optimizer_step(self, progress: float) -> None:
        if self.ssps is not None:
            self.ssps.commit()

    def extra_state(self) -> dict:
        return {"ssps": self.ssps.state()} if self.ssps is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.ssps is not None and "ssps" in state:
            self.ssps.load_state(state["ssps"])
