"""Learning-rate schedules as pure functions of the optimiser step (so resuming needs only the step count).

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md)."""
from __future__ import annotations

import math

from sslsv.config import TrainerConfig


def learning_rate(cfg: TrainerConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimiser step `step` (0-based) of a run of cfg.epochs * steps_per_epoch steps.

    step: lr * gamma ** floor(epoch / step_epochs) (review, section 4.3: 5 % every 5 epochs)
    cosine: from lr at step 0 to min_lr at the last step
    warmup_cosine: linear from min_lr to lr over warmup_epochs, then cosine to min_lr at the last step
    Any schedule may have a linear warm-up (warmup_epochs > 0) from 0 (or min_lr for warmup_cosine).
    """
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "warmup_cosine" or cfg.schedule == "cosine":
        start = cfg.min_lr if cfg.schedule == "warmup_cosine" else 0.0
        if step < warmup:
            return start + (cfg.lr - start) * (step + 1) / warmup
        span = max(total - 1 - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return cfg.lr * cfg.step_gamma ** (epoch // max(cfg.step_epochs, 1))
    return cfg.lr
