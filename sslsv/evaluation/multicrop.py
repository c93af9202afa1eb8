"""Multi-crop test embeddings and scoring: N evenly spaced crops of L seconds per utterance.

Instead of one full-length embedding, every utterance gets N embeddings, one per crop of L seconds. The crops
start at N evenly spaced positions from the beginning to the end of the file (the first crop starts at sample 0,
the last one ends at the last sample); a file shorter than L is first repeated (wrap-around, as in training) to
exactly L samples, never zero-padded, so its N crops are identical. A trial's score is the mean of the N x N
matrix of cosine similarities between the enrolment crops and the test crops.

Scoring is vectorised over trials: chunks of trials gather their (chunk, N, D) normalised crop embeddings and one
einsum reduces each pair of crop sets to the mean of its N x N cosine matrix. Since
mean_ij <e_i, t_j> = <mean_i e_i, mean_j t_j>, the einsum contracts to a dot product of crop means, so the cost
is that of plain cosine scoring (no N x N matrix is materialised).

Score normalisation against a cohort uses the same definition of an utterance-vs-cohort score: the mean over the
utterance's crops of the cosine with a cohort row (`crop_cohort_statistics`).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["crop_cohort_statistics", "crop_starts", "extract_multicrop_embeddings", "multicrop_scores", "read_crops",
           "utterance_vectors"]


def crop_starts(num_samples: int, crop_samples: int, num_crops: int) -> np.ndarray:
    """Start of each of `num_crops` evenly spaced crops of `crop_samples` in a signal of `num_samples`.

    Args:
        num_samples: length of the (already repeated, if shorter) signal.
        crop_samples: crop length.
        num_crops: N >= 1.

    Returns:
        (N,) int64 starts, from 0 to num_samples - crop_samples (all 0 when the signal is not longer than a crop).
    """
    if num_crops < 1 or crop_samples < 1:
        raise ValueError(f"num_crops and crop_samples must be >= 1, got {num_crops} and {crop_samples}")
    last = max(0, num_samples - crop_samples)
    return np.round(np.linspace(0, last, num_crops)).astype(np.int64)


def read_crops(path: str | Path, sample_rate: int, crop_seconds: float, num_crops: int) -> np.ndarray:
    """The (N, S) float32 crops of one file (S = round(crop_seconds * sample_rate)); see the module docstring."""
    from sslsv.audio.io import read_audio

    wave = read_audio(path, sample_rate)
    size = int(round(crop_seconds * sample_rate))
    if size < 1:
        raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
    if len(wave) < size:
        wave = np.resize(wave, size)  # repeats the file cyclically: no zero padding
    starts = crop_starts(len(wave), size, num_crops)
    return np.stack([wave[s:s + size] for s in starts]).astype(np.float32, copy=False)


class _CropsDataset(Dataset):
    def __init__(self, paths: Sequence[str], sample_rate: int, crop_seconds: float, num_crops: int):
        self.paths, self.sample_rate, self.crop_seconds, self.num_crops = list(paths), sample_rate, crop_seconds, num_crops

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(read_crops(self.paths[i], self.sample_rate, self.crop_seconds, self.num_crops))


def extract_multicrop_embeddings(model, paths: Sequence[str | Path], sample_rate: int, crop_seconds: float,
                                 num_crops: int, device: str | torch.device = "cpu", batch_seconds: float = 300.0,
                                 num_workers: int = 0, progress: bool = True) -> torch.Tensor:
    """Embed N evenly spaced crops of every file.

    Args:
        model: waveform (B, S) on `device` -> (B, D); the caller chooses train/eval mode.
        paths: (U,) audio files.
        sample_rate: rate the model expects.
        crop_seconds: L, the length of a crop.
        num_crops: N, crops per file.
        device: where the model runs.
        batch_seconds: audio fed to the model per batch (files per batch = batch_seconds / (N L), at least 1).
        num_workers: DataLoader worker processes reading the audio.
        progress: tqdm bar on stderr.

    Returns:
        (U, N, D) float32 CPU tensor (raw, not normalised); (0, N, 0) for no paths.
    """
    if crop_seconds <= 0 or num_crops < 1:
        raise ValueError(f"need crop_seconds > 0 and num_crops >= 1, got {crop_seconds} and {num_crops}")
    paths = [str(p) for p in paths]
    if not paths:
        return torch.empty(0, num_crops, 0)
    files_per_batch = max(1, int(batch_seconds // (num_crops * crop_seconds)))
    loader = DataLoader(_CropsDataset(paths, sample_rate, crop_seconds, num_crops), batch_size=files_per_batch,
                        shuffle=False, num_workers=num_workers)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="multi-crop embeddings", unit="file", file=sys.stderr, dynamic_ncols=True)
    out = []
    device = torch.device(device)
    with torch.inference_mode():
        for crops in loader:  # (B, N, S)
            b, n, s = crops.shape
            emb = model(crops.reshape(b * n, s).to(device=device, dtype=torch.float32))
            out.append(emb.float().cpu().reshape(b, n, -1))
            if bar is not None:
                bar.update(b)
    if bar is not None:
        bar.close()
    return torch.cat(out).clone()


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def multicrop_scores(embeddings, enroll_idx, test_idx, batch: int = 100_000) -> np.ndarray:
    """Mean of the N x N crop cosine matrix of every trial, in chunks of `batch` trials (no loop over trials).

    Args:
        embeddings: (U, N, D) crop embeddings (tensor on any device, or numpy); (U, D) is treated as N = 1.
        enroll_idx: (T,) row of each trial's enrolment utterance.
        test_idx: (T,) row of each trial's test utterance.
        batch: trials per chunk.

    Returns:
        (T,) float32 numpy scores in [-1, 1].
    """
    e = _as_tensor(embeddings).detach().float()
    if e.dim() == 2:
        e = e[:, None, :]
    if e.dim() != 3:
        raise ValueError(f"embeddings must be (U, N, D), got shape {tuple(e.shape)}")
    enroll = torch.as_tensor(np.asarray(enroll_idx), dtype=torch.int64).reshape(-1)
    test = torch.as_tensor(np.asarray(test_idx), dtype=torch.int64).reshape(-1)
    if enroll.shape != test.shape:
        raise ValueError(f"enroll_idx and test_idx differ in length: {len(enroll)} vs {len(test)}")
    for name, idx in (("enroll_idx", enroll), ("test_idx", test)):
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= e.shape[0]):
            raise IndexError(f"{name} has values outside [0, {e.shape[0]})")
    normed = F.normalize(e, dim=-1)
    n = normed.shape[1]
    scores = torch.empty(len(enroll), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(enroll), batch):
            a = normed[enroll[start:start + batch].to(normed.device)]  # (b, N, D)
            b = normed[test[start:start + batch].to(normed.device)]  # (b, N, D)
            scores[start:start + batch] = (torch.einsum("tid,tjd->t", a, b) / (n * n)).cpu()
    return scores.numpy()


def utterance_vectors(embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, D) direction and (U,) scale such that an utterance's mean crop cosine with a unit vector c is
    scale * <normalize(direction), c>: for (U, N, D) the mean m of the normalised crops and |m|; for (U, D) the
    embedding itself and 1."""
    e = _as_tensor(embeddings).detach().float()
    if e.dim() == 2:
        return e, torch.ones(e.shape[0], device=e.device)
    if e.dim() != 3:
        raise ValueError(f"embeddings must be (U, D) or (U, N, D), got shape {tuple(e.shape)}")
    mean = F.normalize(e, dim=-1).mean(dim=1)
    return mean, mean.norm(dim=1)


def crop_cohort_statistics(embeddings, cohort, top_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each utterance's cohort scores, a cohort score being the mean crop cosine with a cohort row.

    For (U, D) embeddings this is exactly normalization.cohort_statistics; for (U, N, D) the per-crop-averaged
    scores are |m| * cos(m, c) (see utterance_vectors), so the statistics of cos(m, c) are scaled by |m| (top-n
    selection is unchanged by a positive scale).

    Returns:
        (mean, std), each (U,) float32.
    """
    from sslsv.evaluation.normalization import cohort_statistics

    direction, scale = utterance_vectors(embeddings)
    mean, std = cohort_statistics(direction, cohort, top_n)
    return mean * scale.to(mean.device), std * scale.to(std.device)
