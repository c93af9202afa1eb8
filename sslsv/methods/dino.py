"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021, arXiv:2104.14294) for
speaker verification.

Review (Lepage & Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review", 2026,
arXiv:2602.10829), section 2.4.3, Eq. (11):

    L_DINO = 1/B sum_i sum_{t=1..G} sum_{s=1..G+L, s != t} H( (z'_{i,t} - c) / tau_t , z_{i,s} / tau_s )
    H(a, b) = -softmax(a) . log softmax(b)

z'_{i,t}: teacher output of global view t; z_{i,s}: student output of view s (G global then L local views);
c: running mean of the teacher outputs (centering), tau_t < tau_s (sharpening). The teacher (encoder + head) is an
EMA of the student, m from 0.996 to 1 (cosine). Settings (sections 4.3 and 5.4): G = 2 x 4 s, L = 4 x 2 s;
tau_s = 0.1, tau_t = 0.04 (optional linear warm-up from `warmup_teacher_temperature` over `warmup_teacher_epochs`,
as the original DINO; Table 9); centre momentum 0.9. Evaluation uses the teacher.

Head (section 4.3: "each layer, except the last one, is followed by a Batch Normalization"; the authors'
theolepage/sslsv methods/DINO/DINO.py `DINOHead`): Linear-BN-GELU, Linear-BN-GELU, Linear to the 256 bottleneck,
L2 normalisation, weight-normalised 65 536-way last layer without bias, its norm fixed to 1 (DINO's
`norm_last_layer`) and its gradient dropped during the first epoch (`freeze_last_layer_epochs`).
`head_batch_norm: false` is the original DINO's ViT head (`use_bn_in_head=False`). As in the authors' code, the
student head sees the global views in one pass and the local views in another, so its BN statistics are taken over
all the crops of one length (the teacher's over the G global crops).

Gradient clipping ("gradients with a norm exceeding 3.0 are clipped", section 4.3): the authors and DINO clip each
parameter tensor's gradient to norm 3 separately, which the DINO configs select with `trainer.grad_clip: 3.0,
trainer.grad_clip_mode: per_parameter` (`global` clips the norm of all gradients together, a much stronger limit).

Deviation: as the authors' code (facebookresearch/dino `main_dino.py` DINOLoss; theolepage/sslsv DINOLoss), the
sum over the G (G + L - 1) (teacher, student) pairs is averaged, i.e. Eq. (11) divided by the number of pairs.
Distributed: the centre update all-reduces the teacher outputs' mean across ranks (`update_center`, a no-grad
method called by `forward` after the loss, like DINOLoss.update_center). BN buffers: see methods/ema.py.
Ablations (review Figure 4b): `centering: false` (no c), `sharpening: false` (tau_t = tau_s).

Options (off by default):
- `consistency_weight` lambda > 0: DINO + Cosine loss (B. Han, Z. Chen, Y. Qian, "Self-supervised speaker
  verification using dynamic loss-gate and label correction", Interspeech 2022, review [58], section 3.1.2; the
  single-stage base of DLG-LC), L = L_DINO + lambda L_cos, L_cos the mean over the DINO pairs (t, s != t) of
  1 - cos(y'_t, y_s) between the teacher's and the student's representations (`cosine_consistency`).
- `ssps`: DINO-SSPS (sslsv/methods/ssps.py): each global view's teacher output is replaced by a queued teacher
  output of a pseudo-positive; the centre is updated with the outputs used as targets (as the authors' DINOLoss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views
from sslsv.methods.collapse import DEFAULT_RULES, Below, Compound, NearMaximum, Threshold
from sslsv.methods.ema import cosine_schedule, momentum_copy, update_momentum
from sslsv.methods.heads import DINOHead
from sslsv.methods.ssps import SSPS, SSPSConfig, reference_representations
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import cluster_usage_entropy, kl_divergence, method_metrics, softmax_entropy


@dataclass
class DINOConfig:
    global_views: int = 2  # G: the first G of batch.views go through the teacher (review section 4.3)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    # BN after each hidden layer of the head: the review's projector (section 4.3) and the authors' DINO head;
    # false: the original DINO's ViT head (use_bn_in_head=False).
    head_batch_norm: bool = True
    out_dim: int = 65536  # D_e (Table 8)
    student_temperature: float = 0.1  # tau_s
    teacher_temperature: float = 0.04  # tau_t (Table 9)
    teacher_temperature_warmup: bool = False
    warmup_teacher_temperature: float = 0.04
    warmup_teacher_epochs: int = 0
    center_momentum: float = 0.9
    momentum_start: float = 0.996  # EMA m, cosine to momentum_end
    momentum_end: float = 1.0
    freeze_last_layer_epochs: int = 1
    centering: bool = True
    sharpening: bool = True
    # lambda of the cosine consistency loss between teacher and student representations (DINO + Cosine loss,
    # Han et al., Interspeech 2022, the base of DLG-LC; review section 3.1.2); 0: off
    consistency_weight: float = 0.0
    # self-supervised positive sampling (sslsv.methods.ssps); needs one extra view (the reference crop) at the end
    ssps: SSPSConfig = field(default_factory=SSPSConfig)

    def __post_init__(self) -> None:
        require(self.consistency_weight >= 0, "method.consistency_weight", ">= 0", self.consistency_weight)
        if self.global_views < 1:
            raise ConfigError("method.global_views: must be at least 1")
        if min(self.student_temperature, self.teacher_temperature, self.warmup_teacher_temperature) <= 0:
            raise ConfigError("method.teacher_temperature: temperatures must be positive")
        if not 0 <= self.momentum_start <= self.momentum_end <= 1:
            raise ConfigError("method.momentum_start: need 0 <= momentum_start <= momentum_end <= 1")
        if not 0 <= self.center_momentum < 1:
            raise ConfigError("method.center_momentum: must be in [0, 1)")
        for name in ("hidden_dim", "bottleneck_dim", "out_dim"):
            require(getattr(self, name) >= 1, f"method.{name}", "at least 1", getattr(self, name))
        for name in ("warmup_teacher_epochs", "freeze_last_layer_epochs"):
            require(getattr(self, name) >= 0, f"method.{name}", ">= 0", getattr(self, name))


class DINOLoss(nn.Module):
    """Eq. (11), averaged over the (teacher view, student view) pairs with different indices.

    Args:
        teacher: list of G teacher outputs (B, K) (no gradient); student: list of G + L student outputs (B, K),
        the first G from the same global views as the teacher; center: (1, K); teacher_temperature: tau_t.
    Returns:
        (loss, teacher probabilities per global view, student log-probabilities per view), the last two detached.
    """

    def __init__(self, student_temperature: float = 0.1):
        super().__init__()
        self.student_temperature = student_temperature

    def forward(self, teacher: list[torch.Tensor], student: list[torch.Tensor], center: torch.Tensor,
                teacher_temperature: float) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        targets = [F.softmax((_fp32(t) - center) / teacher_temperature, dim=-1).detach() for t in teacher]
        log_probs = [F.log_softmax(_fp32(s) / self.student_temperature, dim=-1) for s in student]
        total, pairs = 0.0, 0
        for t, target in enumerate(targets):
            for s, log_p in enumerate(log_probs):
                if s == t:
                    continue
                total = total + (-(target * log_p).sum(dim=-1)).mean()
                pairs += 1
        return total / pairs, targets, [lp.detach() for lp in log_probs]


def cosine_consistency(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """DINO + Cosine loss's consistency term: the mean over the (teacher view t, student view s != t) pairs of
    DINOLoss of mean_i (1 - cos(y'_{i,t}, y_{i,s})), y' the teacher's and y the student's representations (the
    encoders' outputs, before the heads) of the views of utterance i.

    Args: teacher: G tensors (B, D) (no gradient); student: G + L tensors (B, D), the first G from the same views.
    """
    total, pairs = 0.0, 0
    for t, target in enumerate(teacher):
        for s, y in enumerate(student):
            if s == t:
                continue
            total = total + (1 - F.cosine_similarity(_fp32(y), _fp32(target.detach()), dim=1)).mean()
            pairs += 1
    return total / pairs


def _teacher_information(values: dict[str, float], bounds: dict[str, float],
                         thresholds: dict[str, float]) -> str | None:
    """Once the teacher has sharpened (entropy at most `teacher_sharpened_fraction` of log(out_dim)), the information
    its output carries about the sample, usage entropy - per-sample entropy (the batch's mutual information, >= 0),
    must be at least `min_teacher_information_ratio` of the nats it has lost from uniform, log(out_dim) - entropy
    (near 1 for a healthy one-hot teacher). Below: every sample sharpens the same way (no centering)."""
    teacher, usage, bound = values["teacher_entropy"], values["teacher_usage_entropy"], bounds.get("teacher_entropy")
    if not bound or teacher > thresholds["teacher_sharpened_fraction"] * bound:
        return None
    ratio = max(usage - teacher, 0.0) / (bound - teacher)
    limit = thresholds["min_teacher_information_ratio"]
    if ratio >= limit:
        return None
    return (f"teacher entropy {teacher:.3g} of {bound:.3g} but usage entropy {usage:.3g}: the teacher sharpens the "
            f"same way for every sample ({ratio:.1%} of its sharpening tells samples apart < {limit:.0%}; "
            f"dimensional collapse under way, is centering on?)")


# Review section 6.1: no centering ends in a one-hot teacher (dimensional collapse), no sharpening in a uniform one
# (informational collapse, NearMaximum below); a constant output makes the teacher-student KL vanish.
# min_teacher_entropy 0.03 sits between the review's Table 9 entropies of the collapsed tau_t = 0.01 run (0.02,
# 23.18 % EER) and of the working tau_t = 0.03 run (0.04, 7.42 %; 0.07 at the selected tau_t = 0.04).
DINO_RULES = DEFAULT_RULES + (
    Below("teacher_entropy", Threshold("min_teacher_entropy", 0.03),
          "one-hot teacher outputs (dimensional collapse: is centering on? is tau_t too low?)",
          label="teacher entropy"),
    Below("teacher_usage_entropy", Threshold("min_teacher_usage_entropy", 0.5),
          "every sample's teacher output peaks on the same dimensions (dimensional collapse; is centering on?)",
          label="teacher usage entropy"),
    Compound("teacher_information", ("teacher_entropy", "teacher_usage_entropy"),
             (Threshold("teacher_sharpened_fraction", 0.75, lambda v: 0 < v < 1, "must be in (0, 1)"),
              Threshold("min_teacher_information_ratio", 0.05)),
             _teacher_information, "the teacher sharpens the same way for every sample (no centering)"),
    NearMaximum("teacher_entropy"),
    # Off by default (None): a converged run also has a small KL.
    Below("kl_teacher_student", Threshold("min_kl_teacher_student", None), "constant outputs",
          label="KL(teacher || student)", fmt=".2e"),
)


@METHODS.register("dino", config=DINOConfig)
class DINO(Method):
    """DINO: self-distillation with multi-crop, centering and sharpening (review Eq. 11); evaluated with the teacher."""

    collapse_rules = DINO_RULES

    def __init__(self, encoder, cfg: DINOConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        self.head = DINOHead(encoder.embed_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                             batch_norm=cfg.head_batch_norm)
        self.teacher_encoder = momentum_copy(encoder)
        self.teacher_head = momentum_copy(self.head)
        self.loss = DINOLoss(cfg.student_temperature)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.epoch = 0
        self.ssps = None
        if cfg.ssps.enabled:
            # one queue per global view of teacher outputs (the authors' SSPS_NB_POS_EMBEDDINGS = 2)
            self.ssps = SSPS(cfg.ssps, info.num_samples, positives=cfg.global_views,
                             recordings=info.recordings)
        self.entropy_bounds = {"teacher_entropy": math.log(cfg.out_dim)}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head)]

    def embedding_model(self):
        return self.teacher_encoder

    def teacher_temperature(self, epoch: int) -> float:
        """tau_t for `epoch`: tau_s without sharpening; else linear warm-up, then constant."""
        cfg = self.cfg
        if not cfg.sharpening:
            return cfg.student_temperature
        if cfg.teacher_temperature_warmup and epoch < cfg.warmup_teacher_epochs:
            # linspace(start, end, N) over epochs 0..N-1, as DINO and the authors' DINOLoss: the end value is
            # reached at epoch N-1
            fraction = epoch / max(cfg.warmup_teacher_epochs - 1, 1)
            return cfg.warmup_teacher_temperature + fraction * (cfg.teacher_temperature - cfg.warmup_teacher_temperature)
        return cfg.teacher_temperature

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if self.ssps is not None:
            self.ssps.set_epoch(epoch)

    def forward(self, batch: Batch) -> StepOutput:
        g = self.cfg.global_views
        views = batch.views[:-1] if self.ssps is not None else batch.views  # SSPS: the last is the reference crop
        if len(views) < max(g, 2):
            extra = " plus the reference crop of method.ssps as the last group" if self.ssps is not None else ""
            raise ValueError(f"dino needs at least {max(g, 2)} views (dataset.views: {g} global, then local{extra})")
        representations = encode_views(self.encoder, views)  # student sees every view
        student = _per_length(self.head, representations, views)
        with torch.no_grad():
            teacher_representations = encode_views(self.teacher_encoder, views[:g])
            teacher = _per_length(self.teacher_head, teacher_representations, views[:g])
        ssps_metrics = {}
        if self.ssps is not None and self.ssps.collecting:
            # SSPS (authors' DINO.train_step): each global view's teacher output is replaced by a queued teacher
            # output of a pseudo-positive; references come from the teacher encoder.
            reference = reference_representations(self.teacher_encoder, batch.views[-1])
            replaced, ssps_metrics = self.ssps.substitute(batch.indices, reference, teacher, batch.labels)
            self.ssps.stage(batch.indices, reference, teacher, batch.labels)
            teacher = replaced
        center = self.center if self.cfg.centering else torch.zeros_like(self.center)
        loss, targets, log_probs = self.loss(teacher, student, center, self.teacher_temperature(self.epoch))
        if self.cfg.consistency_weight > 0:
            consistency = cosine_consistency(teacher_representations, representations)
            loss = loss + self.cfg.consistency_weight * consistency
            ssps_metrics["consistency_loss"] = consistency.detach()
        if self.cfg.centering:
            self.update_center(torch.cat(teacher))
        kl = torch.stack([kl_divergence(targets[t], log_probs[s])
                          for t in range(len(targets)) for s in range(len(log_probs)) if s != t]).mean()
        metrics = {
            "teacher_entropy": torch.stack([softmax_entropy(torch.log(p.clamp_min(1e-30))) for p in targets]).mean(),
            # Entropy of the batch's mean teacher distribution: which outputs the batch uses. Low per-sample entropy
            # is healthy (0.07 at tau_t = 0.04, Table 9) as long as samples pick different outputs; a low usage
            # entropy means every sample picks the same one (dimensional collapse, no centering).
            "teacher_usage_entropy": cluster_usage_entropy(torch.cat(targets)),
            "kl_teacher_student": kl,
            "teacher_temperature": torch.tensor(self.teacher_temperature(self.epoch), device=loss.device),
            **method_metrics(torch.cat(representations[:g]), self.diagnostics_due),
            **ssps_metrics,
        }
        return StepOutput(loss, metrics)

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """c <- m c + (1 - m) mean of the teacher outputs (B G, K) over the global batch."""
        batch_center = distributed.all_reduce_mean(_fp32(teacher_output).mean(dim=0, keepdim=True))
        self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1 - self.cfg.center_momentum)

    def before_optimizer_step(self, epoch: int) -> None:
        if epoch < self.cfg.freeze_last_layer_epochs:
            self.head.cancel_last_layer_gradients()

    def after_optimizer_step(self, progress: float) -> None:
        m = cosine_schedule(progress, self.cfg.momentum_start, self.cfg.momentum_end)
        for online, ema in self.momentum_pairs():
            update_momentum(online, ema, m)
        if self.ssps is not None:
            self.ssps.commit()

    def extra_state(self) -> dict:
        return {"ssps": self.ssps.state()} if self.ssps is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.ssps is not None and "ssps" in state:
            self.ssps.load_state(state["ssps"])


def _per_length(network, inputs: list[torch.Tensor], views: list[torch.Tensor]) -> list[torch.Tensor]:
    """network(input) for every input, one pass per group of views of the same shape (as `encode_views`): the head's
    BN sees the global crops together and the local crops together, as in the authors' DINO.forward."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault(tuple(view.shape), []).append(index)
    outputs: list[torch.Tensor | None] = [None] * len(inputs)
    for indices in groups.values():
        joined = inputs[indices[0]] if len(indices) == 1 else torch.cat([inputs[i] for i in indices])
        for i, output in zip(indices, network(joined).chunk(len(indices))):
            outputs[i] = output
    return outputs


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (softmax of 65 536 logits under AMP); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
