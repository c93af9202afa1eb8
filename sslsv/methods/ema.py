"""Momentum (EMA) helpers for teacher-student methods (MoCo, BYOL, DINO): review section 2, before Eq. (1):

    theta' <- m theta' + (1 - m) theta,   phi' <- m phi' + (1 - m) phi,   m in [0, 1)

Choice for BatchNorm buffers (running mean / variance): they are NOT averaged. The teacher runs in train mode on
its own inputs, so its running statistics track its own activations (as in the authors' MoCo, BYOL and DINO code,
lightly and solo-learn, which all average parameters only). `copy_buffers` exists for callers that want the
student's statistics instead (e.g. a teacher that is only ever run in eval mode).

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def deactivate_requires_grad(module: nn.Module) -> nn.Module:
    """Freeze every parameter of `module` (the teacher is updated by EMA, never by the optimiser)."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of `module`: the initial teacher (theta' = theta)."""
    return deactivate_requires_grad(copy.deepcopy(module))


@torch.no_grad()
def update_momentum(online: nn.Module, ema: nn.Module, m: float) -> None:
    """ema <- m * ema + (1 - m) * online for every parameter (m = 1: unchanged, m = 0: copy), as two fused
    multi-tensor operations (torch._foreach_*): no per-parameter Python loop, a few kernels for the whole model;
    the same arithmetic, element by element, as `p_ema.mul_(m).add_(p_online, alpha=1 - m)`."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    online_params = list(online.parameters())
    ema_params = list(ema.parameters())
    if len(online_params) != len(ema_params):
        raise ValueError("update_momentum: online and EMA modules have different parameter lists")
    if not ema_params:
        return
    torch._foreach_mul_(ema_params, m)
    torch._foreach_add_(ema_params, online_params, alpha=1.0 - m)


@torch.no_grad()
def copy_buffers(online: nn.Module, ema: nn.Module) -> None:
    """Copy buffers (BN running statistics) from `online` into `ema`."""
    for b_online, b_ema in zip(online.buffers(), ema.buffers()):
        b_ema.copy_(b_online)


def cosine_schedule(progress: float, start: float, end: float) -> float:
    """Cosine ramp from `start` (progress 0) to `end` (progress 1), e.g. EMA momentum 0.996 -> 1."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
