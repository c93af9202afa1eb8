"""Checkpoints written atomically: a kill or a full disk never leaves a half-written file in place of a good one."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

CHECKPOINT_PATTERN = re.compile(r"checkpoint_e(\d+)_s(\d+)\.pt$")
WEIGHTS_PATTERN = re.compile(r"weights_e(\d+)\.pt$")


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def checkpoint_name(epoch: int, step: int) -> str:
    return f"checkpoint_e{epoch:04d}_s{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Resumable checkpoints, oldest first (ordered by global step)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def list_epoch_weights(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := WEIGHTS_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def prune(paths: list[Path], keep: int) -> None:
    for path in paths[: max(len(paths) - keep, 0)]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - name the file whatever went wrong
        raise RuntimeError(f"cannot read checkpoint {path}: {error}") from None


def average_state_dicts(paths: list[Path]) -> dict:
    """Element-wise mean of floating-point tensors (parameters and BN statistics); integer buffers from the last."""
    states = [load_checkpoint(p) for p in paths]
    out = {}
    for key, last in states[-1].items():
        if torch.is_floating_point(last):
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out
