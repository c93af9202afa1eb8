"""RDINO, regularised DINO (Chen et al., "Pushing the limits of self-supervised speaker verification using
regularized distillation framework", ICASSP 2023, arXiv:2211.04168): DINO (methods/dino.py, review Eq. 11) plus
two VICReg-style regularisation terms on the student's and the teacher's embeddings (review section 3.1: "a
diversity term and a redundancy elimination term, based on the variance and covariance components of the VICReg
objective function").

    L_RDINO = L_DINO + lambda_e ( alpha L_div + beta L_re )
    L_div   = 1/2 ( v(S) + v(T) ),   v(Z) = 1/D sum_d max(0, 1 - sqrt(Var(z^d) + 1e-4))     (VICReg's v)
    L_re    = c'(S) + c'(T),         c'(Z) = 1/K sum_{d != d'} C(Z)_{d d'}^2,  C: covariance with 1/(N - 1)

S, T (N, D): the student's and the teacher's embeddings of each utterance, averaged over its G global views, over
the global batch of N utterances. The embeddings are the head's D = 8192-dimensional layer: the RDINO head is
Linear-BN-GELU (2048), Linear-BN-GELU (2048), Linear (8192) -> regularised embedding, then Linear to the 256
bottleneck, L2 normalisation and DINO's weight-normalised K = 65 536-way last layer. The teacher's terms carry no
gradient (its weights are an EMA), so only the student's are optimised; they are kept in the logged value.
lambda_e ramps linearly from 0.05 at epoch 0 to lambda at epoch W - 1 (numpy linspace over W = 10 epochs), then
stays at lambda. The equations are those that 3D-Speaker's code computes (speakerlab/loss/dino_loss.py RegLoss,
speakerlab/bin/train_rdino.py), the authors' release; the paper's printed normalisations were not checked here.

Settings: 3D-Speaker's published recipe (modelscope/3D-Speaker egs/voxceleb/sv-rdino conf/rdino.yaml, 3.16 % EER
on VoxCeleb1-O with ECAPA-TDNN C = 1024; the paper reports 3.29 %): alpha = std_coeff = 10, beta = cov_coeff = 1,
lambda = lambd = 0.2; DINO's tau_s 0.1, tau_t 0.04, centre momentum 0.9, EMA 0.996 -> 1, BN in the head, last
layer frozen for 1 epoch, 2 global (4 s) + 4 local (2 s) views; SGD lr 0.4 x 208 / 256, wd 5e-5, 10 warm-up
epochs, 70 epochs, gradient clipping 3 per parameter. Normalisation of c': 3D-Speaker's RegLoss divides the sum of
squared off-diagonal covariances by its `out_dim`, the DINO output size K = 65 536, rather than by the embedding
size D = 8192 of VICReg's c(Z) (methods/vicreg.py); c' keeps that, i.e. c' = c x D / K, so that beta = 1 is the
published run's weight.
Distributed: S and T are gathered from every rank (S with gradients, `distributed.gather`), as 3D-Speaker's
FullGatherLayer. Evaluation uses the teacher (as DINO).

Implementation: RDINO is DINO (its forward, loss, centring, EMA teacher, options) with the RDINO head in place of
DINOHead (DINO's constructor builds a DINOHead first, which RDINO's replaces); the heads record their 8192-d
embeddings during DINO's forward (`RDINOHead.recording`), and the regularisation is added to DINO's loss. The
"dino" metric is DINO's loss (with its options), the logged loss the total.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sslsv import distributed
from sslsv.config import require
from sslsv.methods.base import Batch, StepOutput, TrainingInfo
from sslsv.methods.dino import DINO, DINOConfig
from sslsv.methods.ema import momentum_copy
from sslsv.methods.heads import DINOHead
from sslsv.methods.vicreg import covariance_loss, variance_loss
from sslsv.registry import METHODS


@dataclass
class RDINOConfig(DINOConfig):
    embedding_dim: int = 8192  # D: the regularised layer of the head (3D-Speaker's add_dim)
    variance_weight: float = 10.0  # alpha (std_coeff)
    covariance_weight: float = 1.0  # beta (cov_coeff)
    regularization_weight: float = 0.2  # lambda (lambd)
    regularization_warmup_start: float = 0.05  # lambda_e at epoch 0
    regularization_warmup_epochs: int = 10  # W: lambda_e reaches lambda at epoch W - 1

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.embedding_dim >= 2, "method.embedding_dim", "at least 2", self.embedding_dim)
        for name in ("variance_weight", "covariance_weight", "regularization_weight", "regularization_warmup_start",
                     "regularization_warmup_epochs"):
            require(getattr(self, name) >= 0, f"method.{name}", ">= 0", getattr(self, name))


class RDINOHead(nn.Module):
    """in_dim -> hidden (BN) GELU -> hidden (BN) GELU -> embedding_dim (the regularised embedding), then DINO's
    head from there: Linear to the bottleneck, L2 normalisation, weight-normalised out_dim-way last layer.
    `forward` gives the last layer's output (what DINO distils); inside `recording()`, it also keeps the
    regularised embeddings of each call, in call order."""

    def __init__(self, in_dim: int, hidden_dim: int, embedding_dim: int, bottleneck_dim: int, out_dim: int,
                 batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for d_in, d_out in ((in_dim, hidden_dim), (hidden_dim, hidden_dim)):
            layers.append(nn.Linear(d_in, d_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, embedding_dim))
        for layer in layers:
            if isinstance(layer, nn.Linear):  # DINO's initialisation, as DINOHead
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.expander = nn.Sequential(*layers)
        # num_layers=1: one Linear (embedding -> bottleneck), L2 normalisation, the weight-normalised last layer
        self.projection = DINOHead(embedding_dim, bottleneck_dim=bottleneck_dim, out_dim=out_dim, num_layers=1)
        self._recorded: list[torch.Tensor] | None = None

    @property
    def last_layer(self) -> nn.Module:
        return self.projection.last_layer

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        e = self.expander(y)
        if self._recorded is not None:
            self._recorded.append(e)
        return self.projection(e)

    @contextmanager
    def recording(self):
        """Yields the list that collects the regularised embeddings of every forward call made meanwhile."""
        self._recorded = []
        try:
            yield self._recorded
        finally:
            self._recorded = None

    def cancel_last_layer_gradients(self) -> None:
        self.projection.cancel_last_layer_gradients()


def rdino_regularization(student: torch.Tensor, teacher: torch.Tensor, out_dim: int, variance_weight: float = 10.0,
                         covariance_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha L_div + beta L_re (module docstring) on S, T (n, D) of this rank, gathered over ranks.
    Returns (value, {"diversity": L_div, "redundancy": L_re}, detached)."""
    s = distributed.gather(student.to(torch.promote_types(student.dtype, torch.float32)))
    t = distributed.gather_no_grad(teacher.to(torch.promote_types(teacher.dtype, torch.float32)))
    d = s.shape[1]
    diversity = (variance_loss(s) + variance_loss(t)) / 2
    redundancy = (covariance_loss(s) + covariance_loss(t)) * d / out_dim  # c' = c D / K
    terms = {"diversity": diversity.detach(), "redundancy": redundancy.detach()}
    return variance_weight * diversity + covariance_weight * redundancy, terms


@METHODS.register("rdino", config=RDINOConfig)
class RDINO(DINO):
    """RDINO: DINO + diversity (variance) and redundancy-elimination (covariance) terms on an 8192-d head layer."""

    def __init__(self, encoder, cfg: RDINOConfig, info: TrainingInfo):
        super().__init__(encoder, cfg, info)
        # the RDINO head in place of DINO's (DINO builds its own first: see the module docstring)
        self.head = RDINOHead(encoder.embed_dim, cfg.hidden_dim, cfg.embedding_dim, cfg.bottleneck_dim, cfg.out_dim,
                              batch_norm=cfg.head_batch_norm)
        self.teacher_head = momentum_copy(self.head)

    def regularization_weight(self, epoch: int) -> float:
        """lambda_e: numpy.linspace(start, lambda, W)[epoch] for epoch < W, then lambda."""
        cfg = self.cfg
        w = cfg.regularization_warmup_epochs
        if epoch >= w:
            return cfg.regularization_weight
        fraction = epoch / (w - 1) if w > 1 else 0.0
        start = cfg.regularization_warmup_start
        return start + fraction * (cfg.regularization_weight - start)

    def forward(self, batch: Batch) -> StepOutput:
        cfg, g = self.cfg, self.cfg.global_views
        if len({tuple(view.shape) for view in batch.views[:g]}) > 1:
            raise ValueError("rdino: the global views (the first dataset.views group) must all have the same length")
        with self.head.recording() as student, self.teacher_head.recording() as teacher:
            output = super().forward(batch)  # DINO (and its options); the heads record their embeddings
        # The first call of each head covers the global views (they come first and share one length), G x B rows.
        rows = g * batch.views[0].shape[0]
        if not student or not teacher or student[0].shape[0] < rows or teacher[0].shape[0] < rows:
            raise RuntimeError("rdino: the heads did not see the global views in their first call")
        regularization, terms = rdino_regularization(
            student[0][:rows].view(g, -1, cfg.embedding_dim).mean(dim=0),
            teacher[0][:rows].view(g, -1, cfg.embedding_dim).mean(dim=0), cfg.out_dim,
            cfg.variance_weight, cfg.covariance_weight)
        weight = self.regularization_weight(self.epoch)
        metrics = {**output.metrics, "dino": output.loss.detach(), **terms,
                   "regularization_weight": torch.tensor(weight, device=output.loss.device)}
        return StepOutput(output.loss + weight * regularization, metrics)
