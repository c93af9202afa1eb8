"""Collapse diagnostics (review, section 6.1 and Figure 4): cheap, detached signals that every method logs, a
detector that turns them into a message, and a plot of every `train/*` signal of a run.

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
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from sslsv.config import CollapseConfig, ConfigError  # noqa: F401 - CollapseConfig re-exported

# --------------------------------------------------------------------------------------------------------- signals


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """z: (B, D) -> mean over dimensions of the batch std of L2-normalised rows."""
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(dim=0, unbiased=False).mean()


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """z: (B, D) -> exp(H(p)), p_k = s_k / sum(s) over the singular values s of z."""
    s = torch.linalg.svdvals(z.detach().float())
    p = s / s.sum().clamp_min(eps)
    entropy = -(p * torch.log(p.clamp_min(eps))).sum()
    return torch.exp(entropy)


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
    terms = torch.where(p > 0, p * (log_p - log_p_student.detach().float()), torch.zeros_like(p))
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


# -------------------------------------------------------------------------------------------------------- detector


class CollapseDetector:
    """Watches the per-step metrics; `check` returns a message once a collapse rule has held for
    `patience_steps` consecutive checks (and again every `patience_steps` while it keeps holding).

    entropy_bounds: maximum value of entropy metrics, e.g. {"teacher_entropy": log(65536)} (methods expose it as
    their `entropy_bounds` attribute).
    """

    def __init__(self, cfg: CollapseConfig, entropy_bounds: dict[str, float] | None = None):
        self.cfg = cfg
        # Kept by reference: a method may fill its bounds on its first step (SimCLR: log(2N - 1)).
        self.entropy_bounds = entropy_bounds if entropy_bounds is not None else {}
        self.streaks: dict[str, int] = {}

    @property
    def should_stop(self) -> bool:
        return self.cfg.action == "stop"

    def _rules(self, metrics: dict[str, float]) -> dict[str, str]:
        """Rules that hold for these metrics: name -> explanation."""
        cfg, found = self.cfg, {}

        def value(name: str) -> float | None:
            v = metrics.get(name, metrics.get(f"train/{name}"))
            return None if v is None or not math.isfinite(float(v)) else float(v)

        std = value("embedding_std")
        if std is not None and std < cfg.min_embedding_std:
            found["embedding_std"] = (f"embedding std {std:.2e} < {cfg.min_embedding_std:g}: embeddings are almost "
                                      f"constant (complete collapse)")
        rank = value("effective_rank")
        if rank is not None and rank < cfg.min_effective_rank:
            found["effective_rank"] = (f"effective rank {rank:.2f} < {cfg.min_effective_rank:g}: embeddings span about "
                                       f"one direction (dimensional collapse)")
        teacher = value("teacher_entropy")
        if teacher is not None and teacher < cfg.min_teacher_entropy:
            found["teacher_entropy_low"] = (f"teacher entropy {teacher:.3g} < {cfg.min_teacher_entropy:g}: one-hot "
                                            f"teacher outputs (dimensional collapse; is centering on?)")
        usage = value("teacher_usage_entropy")
        if usage is not None and usage < cfg.min_teacher_usage_entropy:
            found["teacher_usage_entropy"] = (f"teacher usage entropy {usage:.3g} < {cfg.min_teacher_usage_entropy:g}: "
                                              f"every sample's teacher output peaks on the same dimensions "
                                              f"(dimensional collapse; is centering on?)")
        bound = self.entropy_bounds.get("teacher_entropy")
        if teacher is not None and usage is not None and bound and teacher <= cfg.teacher_sharpened_fraction * bound:
            # usage - teacher = I(sample; output) over the batch (>= 0); bound - teacher = nats lost from uniform.
            ratio = max(usage - teacher, 0.0) / (bound - teacher)
            if ratio < cfg.min_teacher_information_ratio:
                found["teacher_information"] = (
                    f"teacher entropy {teacher:.3g} of {bound:.3g} but usage entropy {usage:.3g}: the teacher sharpens "
                    f"the same way for every sample ({ratio:.1%} of its sharpening tells samples apart < "
                    f"{cfg.min_teacher_information_ratio:.0%}; dimensional collapse under way, is centering on?)")
        for name, bound in self.entropy_bounds.items():
            v = value(name)
            if v is not None and bound > 0 and v >= cfg.max_entropy_ratio * bound:
                found[f"{name}_high"] = (f"{name} {v:.3f} is within {1 - cfg.max_entropy_ratio:.1%} of its maximum "
                                         f"{bound:.3f}: uniform distribution (informational collapse: constant "
                                         f"embeddings, no negatives, temperature too high or no sharpening)")
        gap = value("negative_gap")
        if gap is not None and gap > cfg.max_negative_gap:
            found["negative_gap"] = (f"negative gap {gap:.3f} > {cfg.max_negative_gap:g}: the queued negatives are far "
                                     f"from every current embedding, so the positive is told apart by the age of the "
                                     f"keys, not the speaker (drifting key encoder; is the momentum encoder on?)")
        clusters = value("cluster_entropy")
        if clusters is not None and clusters < cfg.min_cluster_entropy:
            found["cluster_entropy"] = (f"cluster usage entropy {clusters:.3f} < {cfg.min_cluster_entropy:g}: "
                                        f"almost every sample falls in one cluster")
        kl = value("kl_teacher_student")
        if kl is not None and cfg.min_kl_teacher_student is not None and kl < cfg.min_kl_teacher_student:
            found["kl_teacher_student"] = (f"KL(teacher || student) {kl:.2e} < {cfg.min_kl_teacher_student:g}: "
                                           f"constant outputs")
        return found

    def check(self, step: int, metrics: dict[str, float]) -> str | None:
        """metrics: this step's scalars (keys with or without the `train/` prefix). Returns a message or None."""
        if not self.cfg.enabled:
            return None
        holding = self._rules(metrics)
        self.streaks = {name: self.streaks.get(name, 0) + 1 for name in holding}
        due = [holding[n] for n, count in self.streaks.items() if count % self.cfg.patience_steps == 0]
        if not due:
            return None
        longest = max(self.streaks.values())
        return f"collapse suspected at step {step} (for {longest} checks): " + "; ".join(due)

    def state_dict(self) -> dict:
        return {"streaks": dict(self.streaks)}

    def load_state_dict(self, state: dict) -> None:
        self.streaks = dict(state.get("streaks", {}))


# ------------------------------------------------------------------------------------------------------------ plot


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics log (train the run first)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON record") from None
        step = record.get("step")
        if step is not None and records and step < records[-1].get("step", step):
            # A resumed run starts again after its last checkpoint: the interrupted run's lines from that step on
            # were superseded, so keep only the resumed run's.
            records = [r for r in records if r.get("step", -1) < step]
        records.append(record)
    return records


def plot_diagnostics(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """Plot the loss and every `train/*` signal of run_dir/metrics.jsonl over steps, one panel each.
    Returns the PNG path (default run_dir/diagnostics.png)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(run_dir)
    names = ["loss"] if any("loss" in r for r in records) else []
    for record in records:
        for key in record:
            if key.startswith("train/") and key not in names:
                names.append(key)
    if not names:
        raise ValueError(f"{run_dir}/metrics.jsonl: no loss or train/* signal to plot")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(4.5 * cols, 3.0 * rows))
    FigureCanvasAgg(figure)
    for i, name in enumerate(names):
        axis = figure.add_subplot(rows, cols, i + 1)
        points = [(r["step"], r[name]) for r in records if name in r and isinstance(r[name], (int, float))]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, linewidth=1.2)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out_png) if out_png else Path(run_dir) / "diagnostics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out


def method_metrics(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two signals every method logs for its embeddings (B, D)."""
    return {"embedding_std": embedding_std(z), "effective_rank": effective_rank(z)}
