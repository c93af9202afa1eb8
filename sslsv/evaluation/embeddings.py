"""Embedding extraction, the one implementation: evaluation (full length), multi-crop scoring, pseudo-label
extraction and the Python API (sslsv.inference) all embed audio through `extract_embeddings`.

What is read of each source (a file, or an in-memory waveform already at the model's rate):

* the whole utterance (default). Evaluation embeds whole utterances (4 s to several minutes). Running them one
  at a time wastes the accelerator; batching them normally needs zero-padding, which changes the statistics of
  pooled embeddings (mean / std / attention pooling all see the zeros). Instead sources are sorted by length and
  only sources of (nearly) equal length are batched, each cut to the batch's shortest, with a bound on how much
  any may lose. With max_trim = 0 the result is exactly the one-by-one result.
* N crops of L seconds (`Crops`): evenly spaced from the first to the last sample (multi-crop scoring), or drawn
  at random with a seed per source row (one deterministic crop per utterance for pseudo-labels). A file shorter
  than a crop is repeated (wrap-around), never zero-padded. Every source then has the same N x L samples, so
  batches are consecutive sources within the audio budget.

One Dataset (`_AudioDataset`) reads a planned batch, and one loop (`_embed_batches`) runs the model on them.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import ceil, gcd
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sslsv.audio.io import AudioError, audio_info, read_audio, read_crop
from sslsv.evaluation.errors import EvaluationError

__all__ = ["Crops", "crop_starts", "extract_embeddings", "plan_batches", "read_crops"]

Source = Union[str, Path, np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class Crops:
    """Read `count` crops of `seconds` from each file instead of the whole file.

    Attributes:
        seconds: L, the length of a crop.
        count: N, crops per file.
        seed: None: evenly spaced starts, from the first sample to the last (see crop_starts). An int: random
            starts, the crops of source row i drawn by numpy's default_rng([seed, first_row + i]), so a crop does
            not depend on the batch, the process or the rank that reads it.
        first_row: row number of the first source, for the seeds (a shard's offset in its manifest).
    """

    seconds: float
    count: int = 1
    seed: int | None = None
    first_row: int = 0

    def __post_init__(self) -> None:
        if not self.seconds > 0 or self.count < 1:
            raise ValueError(f"crops need seconds > 0 and count >= 1, got {self.seconds} and {self.count}")

    def samples(self, sample_rate: int) -> int:
        """Samples of one crop at `sample_rate`."""
        size = int(round(self.seconds * sample_rate))
        if size < 1:
            raise ValueError(f"a crop of {self.seconds} s is shorter than one sample at {sample_rate} Hz")
        return size

    def read(self, path: str, sample_rate: int, row: int) -> np.ndarray:
        """The (N, S) float32 crops of source `row` (a file)."""
        if self.seed is None:
            return read_crops(path, sample_rate, self.seconds, self.count)
        rng = np.random.default_rng([self.seed, self.first_row + row])
        size = self.samples(sample_rate)
        return np.stack([read_crop(path, size, sample_rate, rng) for _ in range(self.count)])


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
    """The (N, S) float32 evenly spaced crops of one file (S = round(crop_seconds * sample_rate)); a file shorter
    than S is first repeated cyclically to S samples, so its N crops are identical and never zero-padded."""
    wave = read_audio(path, sample_rate)
    size = int(round(crop_seconds * sample_rate))
    if size < 1:
        raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
    if len(wave) < size:
        wave = np.resize(wave, size)  # repeats the file cyclically: no zero padding
    starts = crop_starts(len(wave), size, num_crops)
    return np.stack([wave[s:s + size] for s in starts]).astype(np.float32, copy=False)


def _resampled_length(num_frames: int, rate_in: int, rate_out: int) -> int:
    """Length of scipy.signal.resample_poly's output for this rate change."""
    if rate_in == rate_out:
        return num_frames
    g = gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    return ceil(num_frames * up / down)


def _audio_length(path: str, sample_rate: int) -> int:
    """Number of samples `path` will have after read_audio, from its header only."""
    file_rate, frames, _ = audio_info(path)
    return _resampled_length(frames, file_rate, sample_rate)


def plan_batches(lengths: Sequence[int], max_samples: float, max_trim: float,
                 max_files: int | None = None) -> list[np.ndarray]:
    """Group files into padding-free batches (greedy over files sorted by length).

    Walking from the shortest file up, a batch starts at its shortest file (length m)
    and file i (length L_i >= m) may join while (a) every member cut to m loses at most
    max_trim of its own length, L_i - m <= max_trim * L_i, and (b) the audio actually fed
    to the model stays within budget, (batch size + 1) * m <= max_samples, and (c) the batch
    holds at most max_files files. A file alone always forms a batch, even if it exceeds the
    budget. Files of equal length keep their order, so equal lengths give consecutive chunks.

    Args:
        lengths: (N,) length of each file in samples.
        max_samples: budget of samples per batch (batch_seconds * sample_rate).
        max_trim: largest fraction of its own length a file may lose (0 = equal lengths only).
        max_files: most files per batch (None: no limit).

    Returns:
        List of int64 index arrays into `lengths`, each sorted by increasing length.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        shortest = int(lengths[order[start]])
        end = start + 1
        while end < n:
            candidate = int(lengths[order[end]])
            if candidate - shortest > max_trim * candidate or (end - start + 1) * shortest > max_samples:
                break
            if max_files is not None and end - start >= max_files:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


class _AudioDataset(Dataset):
    """One item = one planned batch, (B, S) whole sources cut to the batch's shortest or (B, N, S) crops, and the
    (B,) source rows. A file that cannot be read raises the reader's AudioError; re-raised from a DataLoader worker
    it keeps its one-line message (sslsv.audio.io.AudioError drops the worker's traceback)."""

    def __init__(self, sources: list, batches: list[np.ndarray], sample_rate: int, crops: Crops | None):
        self.sources = sources
        self.batches = batches
        self.sample_rate = sample_rate
        self.crops = crops

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, row: int) -> np.ndarray:
        source = self.sources[row]
        if isinstance(source, np.ndarray):
            return source
        if self.crops is not None:
            return self.crops.read(source, self.sample_rate, row)
        return read_audio(source, self.sample_rate)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.batches[item]
        waves = [self._read(int(i)) for i in rows]
        # Header lengths planned the batch; cut to the shortest actual length so a header that over-reports
        # frames can only shorten, never pad (crops all have the same length already). The reader refuses empty
        # and too-short files, so no length is 0.
        length = min(w.shape[-1] for w in waves)
        batch = torch.from_numpy(np.stack([w[..., :length] for w in waves]))
        return batch, torch.as_tensor(rows, dtype=torch.int64)


def _sources(sources: Sequence[Source], root: str | Path | None, crops: Crops | None) -> list:
    """Paths resolved against `root` (as str) and waveforms as 1-D float32 numpy arrays."""
    base = Path(root) if root is not None else None
    out = []
    for i, source in enumerate(sources):
        if isinstance(source, (str, Path)):
            out.append(str(Path(source) if base is None or Path(source).is_absolute() else base / source))
            continue
        if not isinstance(source, (np.ndarray, torch.Tensor)):
            raise ValueError(f"item {i}: expected a path, numpy array or tensor, got {type(source).__name__}")
        if crops is not None:
            raise ValueError(f"item {i}: crops are read from files, not from waveforms")
        wave = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else source
        if wave.ndim != 1:
            raise ValueError(f"item {i}: waveforms must be 1-D (S,), got shape {tuple(wave.shape)}")
        if len(wave) == 0:
            raise ValueError(f"item {i} is an empty waveform")
        if not np.isfinite(wave).all():
            raise AudioError(f"item {i}: the waveform has {int((~np.isfinite(wave)).sum())} NaN/Inf sample(s)")
        out.append(np.ascontiguousarray(wave, dtype=np.float32))
    return out


def _lengths(sources: list, sample_rate: int, crops: Crops | None, num_workers: int) -> list[int]:
    """Length in samples of what is read of each source (crops: N x S)."""
    if crops is not None:
        return [crops.count * crops.samples(sample_rate)] * len(sources)

    def length(source) -> int:
        return len(source) if isinstance(source, np.ndarray) else _audio_length(source, sample_rate)

    # Header reads are I/O-bound; threads overlap them for large lists (e.g. 145k files). audio_info raises the
    # AudioError of an unreadable, empty or too-short file, before any file is decoded.
    with ThreadPoolExecutor(max_workers=max(1, min(16, 4 * max(1, num_workers)))) as pool:
        return list(pool.map(length, sources))


def _embed_batches(model: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, count: int, crops: int | None,
                   device: torch.device, bar) -> torch.Tensor:
    """The batching loop: (count, D) embeddings, or (count, N, D) when each source gives N crops."""
    embeddings: torch.Tensor | None = None
    batches = iter(loader)
    try:
        with torch.inference_mode():
            for waves, rows in batches:
                flat = waves.reshape(-1, waves.shape[-1])  # (B, S), or (B * N, S) for crops
                out = model(flat.to(device=device, dtype=torch.float32, non_blocking=True))
                if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != flat.shape[0]:
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(f"model must return (batch, dim) embeddings, got {shape} for a batch of "
                                     f"{flat.shape[0]}")
                out = out.detach().to("cpu", torch.float32)
                if crops is not None:
                    out = out.reshape(len(rows), crops, -1)
                if embeddings is None:
                    embeddings = torch.empty(count, *out.shape[1:], dtype=torch.float32)
                embeddings[rows] = out
                if bar is not None:
                    bar.update(len(rows))
    finally:
        # Stop the workers now rather than at garbage collection (matters when a read failed).
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del batches
    assert embeddings is not None
    # inference_mode tensors cannot enter autograd later; hand back an ordinary tensor.
    return embeddings.clone() if embeddings.is_inference() else embeddings


def extract_embeddings(model: Callable[[torch.Tensor], torch.Tensor], paths: Sequence[Source], sample_rate: int,
                       device: str | torch.device, batch_seconds: float = 300.0, max_trim: float = 0.01,
                       root: str | Path | None = None, progress: bool = True, num_workers: int = 2,
                       crops: Crops | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Embed whole audio files (or waveforms), or N crops of each file, in padding-free batches.

    Whole sources are sorted by length and grouped by plan_batches: each batch is cut to its shortest source
    (the beginning of every source is kept), a source may join a batch only if that cut drops at most `max_trim`
    of its own length, and a batch holds at most `batch_seconds` of audio as fed to the model (a longer single
    file is its own batch). With max_trim = 0 only equal-length sources share a batch, so embeddings are those of
    the one-by-one computation. With `crops`, consecutive files share a batch within the same budget. A
    DataLoader's workers read (soundfile), average channels to mono and resample (scipy.signal.resample_poly)
    while the model runs under torch.inference_mode(). The caller chooses train/eval mode.

    Args:
        model: maps float32 waveforms (B, S) on `device` to embeddings (B, D).
        paths: (U,) audio files, absolute or relative to `root` (or to the working directory when root is
            None), or 1-D waveforms (numpy arrays or tensors) already at `sample_rate`.
        sample_rate: rate the model expects, in Hz; files at other rates are resampled.
        device: where the model runs.
        batch_seconds: audio budget per batch in seconds (sum over the batch).
        max_trim: largest fraction of its own length a source may lose to batching.
        root: base directory of relative paths.
        progress: show a tqdm progress bar on stderr.
        num_workers: DataLoader worker processes (0 = read in this process).
        crops: read these crops of every file instead of the whole file (files only).
        batch_size: at most this many sources per batch (default: only the audio budget limits a batch).

    Returns:
        (U, D) float32 CPU tensor, row i the embedding of paths[i]; with crops (U, N, D), raw (not normalised).
        No paths: (0, 0), or (0, N, 0) with crops.

    Raises:
        AudioError: a file cannot be read, is empty, or a waveform holds NaN/Inf (the message names it).
        EvaluationError: the model returned NaN/Inf embeddings (the message names the inputs and any non-finite
            weight tensor).
        ValueError: invalid arguments, or the model does not return (B, D).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not 0.0 <= max_trim < 1.0:
        raise ValueError(f"max_trim must be in [0, 1), got {max_trim}")
    if batch_seconds <= 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"batch_seconds and batch_size must be positive, got {batch_seconds} and {batch_size}")
    device = torch.device(device)
    sources = _sources(paths, root, crops)
    if not sources:
        return torch.empty(0, 0, dtype=torch.float32) if crops is None else torch.empty(0, crops.count, 0)
    lengths = _lengths(sources, sample_rate, crops, num_workers)
    batches = plan_batches(lengths, batch_seconds * sample_rate, max_trim if crops is None else 0.0, batch_size)
    loader = DataLoader(_AudioDataset(sources, batches, sample_rate, crops), batch_size=None, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), desc="embeddings" if crops is None else f"embeddings ({crops.count} crops)",
                   unit="file", file=sys.stderr, dynamic_ncols=True)
    try:
        embeddings = _embed_batches(model, loader, len(sources), None if crops is None else crops.count, device, bar)
    finally:
        if bar is not None:
            bar.close()
    _check_finite(embeddings, sources, model)
    return embeddings


def _check_finite(embeddings: torch.Tensor, sources: list, model) -> None:
    """EvaluationError naming the sources whose embeddings are NaN/Inf and whether the model's weights are: a
    NaN embedding would otherwise turn into NaN scores and a meaningless EER."""
    bad = (~torch.isfinite(embeddings)).reshape(len(embeddings), -1).any(dim=1)
    if not bad.any():
        return
    rows = bad.nonzero().flatten().tolist()
    names = [s if isinstance(s, str) else f"waveform {i}" for i, s in ((r, sources[r]) for r in rows[:3])]
    weights = _non_finite_weights(model)
    if weights:
        cause = (f"{len(weights)} weight tensor(s) of the model are non-finite (e.g. {', '.join(weights[:3])}): "
                 "the weights come from a diverged training; use an earlier checkpoint")
    elif isinstance(model, torch.nn.Module):
        cause = "the model's weights are finite: the audio or the model's computation (an overflow) gives NaN/Inf"
    else:
        cause = "check the model and the audio"
    raise EvaluationError(f"the model returned non-finite (NaN/Inf) embeddings for {len(rows)} of {len(sources)} "
                          f"input(s), e.g. {', '.join(names)}; {cause}")


def _non_finite_weights(model) -> list[str]:
    """Names of the model's floating-point parameters and buffers holding a NaN or Inf."""
    if not isinstance(model, torch.nn.Module):
        return []
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
