"""SDPN, Self-Distillation Prototypes Network (Chen et al., "Self-Distillation Prototypes Network: Learning Robust
Speaker Representations without Supervision", ICASSP 2025, arXiv:2308.02774): a teacher-student (EMA) network
whose student assigns the local views of an utterance to the same learnable prototypes as the teacher's global
view (review section 3.1: "using Sinkhorn-Knopp and Me-Max regularization to refine target distributions, and
introduces a diversity regularization loss"). The equations are those of 3D-Speaker's code (the authors' release:
speakerlab/loss/sdpn_loss.py, keleo_loss.py, bin/train_sdpn.py); the paper writes L = L_CE + mu L_DR.

    p_i     = softmax( cos(z_i, c_1..c_K) / tau )                        student, local view i (z: head output)
    q_i     = SK( sharpen( softmax( cos(z'_i, c_1..c_K) / tau ), T ) )   teacher, global view (no gradient)
    sharpen(p, T)_k = p_k^(1/T) / sum_k' p_k'^(1/T);  SK: Sinkhorn-Knopp, 3 iterations, over the global batch
    L_CE    = 1/(B L) sum_{views} sum_i H(q_i, p_i),   H(q, p) = -sum_k q_k log p_k
    L_MEMAX = sum_k pbar_k log pbar_k + log K = log K - H(pbar),  pbar: mean of the p_i over views and global batch
    L_DR    = sum_{views} -1/B sum_i log( min_{j != i} || y_i/||y_i|| - y_j/||y_j|| || + 1e-8 )
    L       = L_CE + w_me L_MEMAX + mu L_DR

c_k: K learnable prototypes shared by student and teacher (the teacher uses the student's current ones); z, z':
the L2-normalised outputs of the head (Linear-BN-GELU 2048, Linear-BN-GELU 2048, Linear 256). L_DR, the paper's
diversity regularisation, is the Kozachenko-Leonenko (KoLeo) estimator of the differential entropy (Sablayrolles
et al., 2019) on the encoder's representations y of each local view's batch (this rank's), summed over the L local
views: it pushes every speaker embedding away from its nearest neighbour in the batch. Me-max (mean-entropy
maximisation; Assran et al., "Semi-supervised learning of visual features by non-parametrically predicting view
assignments with support samples" (PAWS), ICCV 2021, the review's [93]) keeps every prototype in use.

Implementation: the prototypes are DINO's weight-normalised last layer (methods/heads.py DINOHead, without bias,
rows normalised: its outputs are the cosines to the prototypes; its initialisation, uniform in +-1/sqrt(256), is
3D-Speaker's), and the Sinkhorn-Knopp step is SwAV's (methods/swav.py) applied to log q (epsilon 1: the codes of
the probabilities themselves, as 3D-Speaker's distributed_sinkhorn).

Settings: 3D-Speaker's published recipe (modelscope/3D-Speaker egs/voxceleb/sv-sdpn conf/sdpn.yaml and
speakerlab/loss/sdpn_loss.py; 1.80 % EER on VoxCeleb1-O with ECAPA-TDNN C = 1024): K = 1024 prototypes of
dimension 256, tau = 0.1, T = 0.25, Sinkhorn on, w_me = 1, mu = koleo_loss_weight = 0.1, EMA 0.996 -> 1, BN in the
head; 1 global (4 s) view for the teacher and 4 local (2 s) views for the student; SGD lr 0.4 x 384 / 256, wd 5e-5,
10 warm-up epochs, 150 epochs, gradient clipping 3 per parameter. Deviations: the prototypes are an ordinary
parameter of the method here, so they get the trainer's weight decay and clipping (3D-Speaker: no weight decay, no
clipping) and their gradient is averaged over ranks like every other (3D-Speaker sums it over ranks).
Evaluation uses the teacher encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslsv import distributed
from sslsv.config import require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views
from sslsv.methods.collapse import CLUSTER_ENTROPY, DEFAULT_RULES, Below, NearMaximum, Threshold
from sslsv.methods.dino import _per_length
from sslsv.methods.ema import cosine_schedule, momentum_copy, update_momentum
from sslsv.methods.heads import DINOHead
from sslsv.methods.signals import cluster_usage_entropy, method_metrics, softmax_entropy
from sslsv.methods.swav import sinkhorn_knopp
from sslsv.registry import METHODS


@dataclass
class SDPNConfig:
    global_views: int = 1  # the first views of batch.views go through the teacher, the others through the student
    hidden_dim: int = 2048
    output_dim: int = 256  # dimension of z and of the prototypes
    head_batch_norm: bool = True
    num_prototypes: int = 1024  # K
    temperature: float = 0.1  # tau
    sharpen_temperature: float = 0.25  # T
    sinkhorn: bool = True
    sinkhorn_iterations: int = 3
    me_max_weight: float = 1.0  # w_me
    diversity_weight: float = 0.1  # mu (KoLeo)
    momentum_start: float = 0.996  # EMA m, cosine to momentum_end
    momentum_end: float = 1.0

    def __post_init__(self) -> None:
        require(self.global_views >= 1, "method.global_views", "at least 1", self.global_views)
        for name in ("hidden_dim", "output_dim", "sinkhorn_iterations"):
            require(getattr(self, name) >= 1, f"method.{name}", "at least 1", getattr(self, name))
        require(self.num_prototypes >= 2, "method.num_prototypes", "at least 2", self.num_prototypes)
        for name in ("temperature", "sharpen_temperature"):
            require(getattr(self, name) > 0, f"method.{name}", "positive", getattr(self, name))
        for name in ("me_max_weight", "diversity_weight"):
            require(getattr(self, name) >= 0, f"method.{name}", ">= 0", getattr(self, name))
        require(0 <= self.momentum_start <= self.momentum_end <= 1, "method.momentum_start",
                "0 <= momentum_start <= momentum_end <= 1", self.momentum_start)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) renormalised over the last dimension."""
    sharp = p.pow(1.0 / temperature)
    return sharp / sharp.sum(dim=-1, keepdim=True)


def me_max(probabilities: torch.Tensor) -> torch.Tensor:
    """log K - H(mean of the (N, K) probabilities over the global batch) >= 0; 0 when every prototype is used
    equally."""
    mean = distributed.gather(probabilities).mean(dim=0)
    return (mean * torch.log(mean.clamp_min(1e-30))).sum() + math.log(mean.shape[0])


def koleo(y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy term of (B, D) vectors: -mean_i log(distance from y_i to its nearest neighbour),
    after L2 normalisation (the neighbour is picked without gradient)."""
    y = F.normalize(y.to(torch.promote_types(y.dtype, torch.float32)), dim=-1, eps=eps)
    with torch.no_grad():
        dots = y @ y.T
        dots.fill_diagonal_(-2.0)  # below any cosine: never its own neighbour
        neighbour = dots.argmax(dim=1)
    return -torch.log((y - y[neighbour]).norm(dim=1) + eps).mean()


class SDPNLoss(nn.Module):
    """L_CE + w_me L_MEMAX (module docstring). Args: student (L, B, K) and teacher (G, B, K) cosines to the
    prototypes. Each student view is paired with each teacher view (G = 1: 3D-Speaker's recipe).
    Returns (loss, student probabilities (L B, K), teacher targets (G B, K), cross-entropy, me-max), the last four
    detached."""

    def __init__(self, temperature: float = 0.1, sharpen_temperature: float = 0.25, sinkhorn: bool = True,
                 sinkhorn_iterations: int = 3, me_max_weight: float = 1.0):
        super().__init__()
        self.temperature, self.sharpen_temperature = temperature, sharpen_temperature
        self.sinkhorn, self.sinkhorn_iterations, self.me_max_weight = sinkhorn, sinkhorn_iterations, me_max_weight

    def targets(self, teacher: torch.Tensor) -> torch.Tensor:
        """q for teacher cosines (n, K): sharpened softmax, then Sinkhorn-Knopp over the global batch."""
        with torch.no_grad():
            q = sharpen(F.softmax(teacher.float() / self.temperature, dim=-1), self.sharpen_temperature)
            if self.sinkhorn:
                q = sinkhorn_knopp(torch.log(q), epsilon=1.0, iterations=self.sinkhorn_iterations)
            return q

    def forward(self, student: torch.Tensor, teacher: torch.Tensor):
        probs = F.softmax(student.float() / self.temperature, dim=-1)  # (L, B, K)
        targets = torch.stack([self.targets(t) for t in teacher])  # (G, B, K)
        log_probs = torch.log(probs.clamp_min(1e-30))
        cross_entropy = torch.stack([-(q * log_probs).sum(dim=-1).mean() for q in targets]).mean()
        regulariser = me_max(probs.flatten(0, 1))
        loss = cross_entropy + self.me_max_weight * regulariser
        return (loss, probs.flatten(0, 1).detach(), targets.flatten(0, 1), cross_entropy.detach(),
                regulariser.detach())


# Me-max keeps the prototypes in use; a collapse shows as one prototype taking every sample (cluster entropy) or
# as uniform teacher targets (NearMaximum of the per-sample target entropy, bounded by log K).
SDPN_RULES = DEFAULT_RULES + (
    CLUSTER_ENTROPY,
    Below("prototype_usage_entropy", Threshold("min_prototype_usage_entropy", 0.5),
          "the student's probabilities all peak on the same prototypes", label="prototype usage entropy"),
    NearMaximum("target_entropy"),
)


@METHODS.register("sdpn", config=SDPNConfig)
class SDPN(Method):
    """SDPN: self-distillation onto shared learnable prototypes, Sinkhorn targets, me-max and KoLeo diversity."""

    collapse_rules = SDPN_RULES

    def __init__(self, encoder, cfg: SDPNConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        # DINOHead: MLP to output_dim, L2 normalisation, then the prototypes as its weight-normalised last layer
        self.head = DINOHead(encoder.embed_dim, cfg.hidden_dim, cfg.output_dim, cfg.num_prototypes,
                             batch_norm=cfg.head_batch_norm)
        self.teacher_encoder = momentum_copy(encoder)
        self.teacher_mlp = momentum_copy(self.head.mlp)  # the teacher uses the student's prototypes
        self.loss = SDPNLoss(cfg.temperature, cfg.sharpen_temperature, cfg.sinkhorn, cfg.sinkhorn_iterations,
                             cfg.me_max_weight)
        self.entropy_bounds = {"target_entropy": math.log(cfg.num_prototypes)}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.teacher_encoder), (self.head.mlp, self.teacher_mlp)]

    def embedding_model(self):
        return self.teacher_encoder

    def forward(self, batch: Batch) -> StepOutput:
        g = self.cfg.global_views
        if len(batch.views) < g + 1:
            raise ValueError(f"sdpn needs at least {g + 1} views (dataset.views: {g} global for the teacher, then "
                             f"local ones for the student)")
        local_views = batch.views[g:]
        representations = encode_views(self.encoder, local_views)
        student = torch.stack(_per_length(self.head, representations, local_views))  # (L, B, K) cosines
        with torch.no_grad():
            prototypes = self.head.last_layer
            teacher = torch.stack(encode_views(
                lambda x: prototypes(F.normalize(self.teacher_mlp(self.teacher_encoder(x)), dim=-1)),
                batch.views[:g]))
        loss, probs, targets, cross_entropy, regulariser = self.loss(student, teacher)
        diversity = torch.stack([koleo(y) for y in representations]).sum()
        loss = loss + self.cfg.diversity_weight * diversity
        metrics = {
            "cross_entropy": cross_entropy,
            "me_max": regulariser,
            "diversity": diversity.detach(),
            "target_entropy": softmax_entropy(torch.log(targets.clamp_min(1e-30))),
            "prototype_usage_entropy": cluster_usage_entropy(probs),
            "cluster_entropy": cluster_usage_entropy(targets.argmax(dim=1), self.cfg.num_prototypes),
            **method_metrics(torch.cat(representations), self.diagnostics_due),
        }
        return StepOutput(loss, metrics)

    def after_optimizer_step(self, progress: float) -> None:
        m = cosine_schedule(progress, self.cfg.momentum_start, self.cfg.momentum_end)
        for online, ema in self.momentum_pairs():
            update_momentum(online, ema, m)
