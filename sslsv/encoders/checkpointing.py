"""Activation checkpointing of the encoders' repeated blocks: keep each block's input for the backward instead of
every activation inside it, and recompute the block's forward when the backward reaches it (Chen et al., "Training
Deep Nets with Sublinear Memory Cost", 2016, arXiv:1604.06174). Costs about one more forward of the blocks; cuts
what a training step keeps for its backward (DINO's 2 global + 4 local crops through the student) to the blocks'
inputs.

An encoder declares its blocks with `checkpoint_units() -> list[nn.Module]` (Fast ResNet-34 and its multi-scale
variant: the stem and the SE residual blocks; ECAPA-TDNN: the SE-Res2 blocks; ReDimNet: its stages; SV-Mixer: the
mixer blocks; SSRFNet: both). An encoder that declares nothing is left as it is.

`enable_activation_checkpointing(module)` finds every `Encoder` inside `module` (student, teacher, key encoder) and
replaces the `forward` of each declared block on the instance (a bound method in the instance's `__dict__`: no new
module, parameter or buffer, so state dicts keep their keys and load into a model with or without the option; a
deep copy, e.g. an EMA teacher made afterwards, gets its own). The new forward runs the block under
`torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` only when it is in training mode, grad mode is on and
something in it needs a gradient; otherwise (eval, `torch.no_grad()`, inference mode, a frozen teacher) it calls the
class's forward directly: same operations, same outputs, no checkpoint bookkeeping.

Batch norm: the recomputation runs the block again in training mode, which would update `running_mean`,
`running_var` and `num_batches_tracked` a second time. The checkpoint's recompute context snapshots every buffer of
the block when the recomputation starts and copies it back when it ends, so the buffers end a step exactly as
without checkpointing (the recomputed outputs use the batch statistics, not the running ones, so they do not depend
on the buffers). Under `torch.compile`, the checkpointed region is traced as a whole and its buffer updates happen
once in the compiled forward; the context is not passed there (compile accepts only dispatch modes as contexts).

Host memory: with checkpointing, a CPU step's peak is the backward's recomputation on top of the kept inputs, and
glibc keeps the blocks the forward freed in its arenas rather than handing them back (DINO Fast ResNet-34, batch 16:
1.48 GB free inside the arenas at the 3.5 GB RSS peak, 1.4 GB actually in use). `release_freed_host_memory()`
(malloc_trim) returns them; the trainer calls it between the forward and the backward of a CPU step with
checkpointing (peak PSS 3.73 -> 3.13-3.24 GB, same samples/s; without checkpointing the peak is the live
activations and trimming changes nothing).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
import types
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sslsv.encoders.base import Encoder


def checkpoint_units(encoder: nn.Module) -> list[nn.Module]:
    """The blocks `encoder` declares for checkpointing (`encoder.checkpoint_units()`), or [] when it declares none."""
    declared = getattr(encoder, "checkpoint_units", None)
    return list(declared()) if callable(declared) else []


def enable_activation_checkpointing(module: nn.Module) -> int:
    """Checkpoint the declared blocks of every encoder in `module` (itself included); returns how many blocks were
    wrapped by this call (blocks already wrapped, and encoders that declare none, are not counted)."""
    wrapped = 0
    for block in _declared_blocks(module):
        if not is_checkpointed(block):
            block.forward = types.MethodType(_checkpointed_forward, block)  # bound: a deep copy rebinds to the copy
            wrapped += 1
    return wrapped


def disable_activation_checkpointing(module: nn.Module) -> int:
    """Undo `enable_activation_checkpointing`: the blocks run their class's forward again; returns how many."""
    restored = 0
    for block in _declared_blocks(module):
        if is_checkpointed(block):
            del block.forward
            restored += 1
    return restored


def is_checkpointed(block: nn.Module) -> bool:
    """Whether `block`'s forward is the checkpointing one."""
    forward = block.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward


def _declared_blocks(module: nn.Module) -> list[nn.Module]:
    """The declared blocks of every Encoder in `module`, each once (in module order)."""
    blocks: dict[int, nn.Module] = {}
    for encoder in module.modules():
        if isinstance(encoder, Encoder):
            for block in checkpoint_units(encoder):
                blocks.setdefault(id(block), block)
    return list(blocks.values())


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """The block's forward, checkpointed when it is training, grad mode is on and an input or a parameter needs a
    gradient; the class's forward as it is otherwise."""
    forward = type(self).forward
    if not (self.training and torch.is_grad_enabled() and _needs_grad(self, args, kwargs)):
        return forward(self, *args, **kwargs)
    if torch.compiler.is_compiling():  # traced as one region: its buffer updates run once, in the forward
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return checkpoint(forward, self, *args, use_reentrant=False,
                      context_fn=functools.partial(_contexts, self), **kwargs)


def _needs_grad(block: nn.Module, args: tuple, kwargs: dict) -> bool:
    inputs = (*args, *kwargs.values())
    return (any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)
            or any(p.requires_grad for p in block.parameters()))


def _contexts(block: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """(forward context, recompute context) of the non-reentrant checkpoint: nothing, and buffers kept."""
    return contextlib.nullcontext(), _buffers_kept(block)


@contextlib.contextmanager
def _buffers_kept(block: nn.Module) -> Iterator[None]:
    """Every buffer of `block` (BN running mean and variance, num_batches_tracked) ends as it was on entering: the
    recomputation in the backward must not count the batch a second time. Also when the checkpoint stops the
    recomputation early (it does once it has what the backward needs)."""
    saved = [(buffer, buffer.detach().clone()) for buffer in block.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def release_freed_host_memory() -> bool:
    """Hand the free pages of the C heap back to the operating system (glibc's malloc_trim(0)); returns whether
    that could be done (False off Linux or with a C library without malloc_trim, e.g. musl: nothing happens)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
