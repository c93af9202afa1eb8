"""Collapse signals (review, section 6.1 and Figure 4): cheap, detached scalars that methods log next to their loss
and that the collapse rules declared by the methods watch (applied by sslsv.training.diagnostics).

Signals (all return a 0-d tensor, computed without gradients):

- `embedding_std(z)`: std over the batch of the L2-normalised embeddings, averaged over dimensions. Healthy
  embeddings spread over the sphere give about 1/sqrt(D); constant embeddings give 0 (complete collapse).
- `effective_rank(z)`: exp of the entropy of the normalised singular values (Roy & Vetterli, 2007; RankMe).
  Between 1 (rank-one, dimensional collapse) and min(B, D).
- `softmax_entropy(logits)`: mean entropy (nats) of the softmax rows. Contrastive distribution (SimCLR/MoCo):
  log(number of candidates) means uniform, i.e. the negatives are indistinguishable from the positive (constant
  embeddings). DINO teacher: 0 = one-hot (no centering, dimensional collapse), log(out_dim) = uniform (no
  sharpening, informational collapse).
- `negative_gap` (MoCo, `methods/moco.py`): mean cosine of queries to the current step's other keys minus to the
  queued keys; near 0 with a consistent queue, large when the key encoder drifts (no momentum encoder).
- `kl_divergence(p_teacher, log_p_student)`: Eq. (13), mean over rows; 0 with a constant output.
- `cluster_usage_entropy(x)`: entropy of how samples spread over clusters (assignments or soft codes); 0 means
  every sample lands in one cluster. DINO logs it for its teacher probabilities (`teacher_usage_entropy`): a healthy
  teacher is nearly one-hot per sample (Table 9) but on different outputs for different samples.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """z: (B, D) -> mean over dimensions of the batch std of L2-normalised rows."""
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(dim=0, unbiased=False).mean()


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """z: (B, D) -> exp(H(p)), p_k = s_k / sum(s) over the singular values s of z; NaN when z holds NaN or Inf."""
    z = z.detach().float()
    finite = torch.isfinite(z)
    # The SVD raises on non-finite input: decompose a finite stand-in and report NaN, so that the trainer's
    # non-finite loss check (not a linear-algebra traceback) names the step. No host sync: the choice is a where.
    s = torch.linalg.svdvals(torch.where(finite, z, torch.zeros_like(z)))
    p = s / s.sum().clamp_min(eps)
    entropy = -(p * torch.log(p.clamp_min(eps))).sum()
    return torch.where(finite.all(), torch.exp(entropy), torch.full_like(entropy, float("nan")))


@torch.no_grad()
def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits: (B, K) -> mean over rows of -sum_k p_k log p_k, p = softmax(row). Masked entries may be -inf."""
    log_p = F.log_softmax(logits.detach().float(), dim=-1)
    p = log_p.exp()
    return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(dim=-1).mean()


@torch.no_grad()
def kl_divergence(p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """Eq. (13): mean over rows of sum_x P_t(x) (log P_t(x) - log P_s(x)). Shapes (B, K)."""
    p = p_teacher.detach().float()
    log_p = torch.log(p.clamp_min(1e-30))
    # 0 log 0 = 0; a NaN teacher probability stays NaN (not 0, which would read as "teacher equals student")
    terms = torch.where(p != 0, p * (log_p - log_p_student.detach().float()), torch.zeros_like(p))
    return terms.sum(dim=-1).mean()


@torch.no_grad()
def cluster_usage_entropy(x: torch.Tensor, num_clusters: int | None = None) -> torch.Tensor:
    """Entropy (nats) of cluster usage.

    x: (N,) integer assignments (histogram over `num_clusters`, default max + 1), or (N, K) probabilities / soft
    codes (their mean over samples). log(K) = perfectly balanced, 0 = one cluster takes everything.
    """
    x = x.detach()
    if x.dim() == 1:
        usage = torch.bincount(x.long(), minlength=num_clusters or 0).float()
    elif x.dim() == 2:
        usage = x.float().sum(dim=0)
    else:
        raise ValueError(f"cluster_usage_entropy: expected (N,) assignments or (N, K) probabilities, got {tuple(x.shape)}")
    p = usage / usage.sum().clamp_min(1e-12)
    return -(p * torch.log(p.clamp_min(1e-30))).sum()



def method_metrics(z: torch.Tensor, full: bool = True) -> dict[str, torch.Tensor]:
    """The two signals every method logs for its embeddings (B, D). full=False leaves out `effective_rank` (an SVD):
    methods pass their `diagnostics_due` flag, which the trainer sets False on the steps between diagnostics
    (`trainer.diagnostics_every_steps`); every other caller gets both."""
    if not full:
        return {"embedding_std": embedding_std(z)}
    return {"embedding_std": embedding_std(z), "effective_rank": effective_rank(z)}
