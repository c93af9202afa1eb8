"""Full-length embedding extraction with length-sorted, padding-free batching.

Evaluation embeds whole utterances (4 s to several minutes). Running them one at a
time wastes the accelerator; batching them normally needs zero-padding, which changes
the statistics of pooled embeddings (mean / std / attention pooling all see the
zeros). Instead files are sorted by length and only files of (nearly) equal length are
batched, each cut to the batch's shortest file, with a bound on how much any file may
lose. With max_trim = 0 the result is exactly the one-by-one result.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from math import ceil, gcd
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["extract_embeddings", "plan_batches"]


def _resampled_length(num_frames: int, rate_in: int, rate_out: int) -> int:
    """Length of scipy.signal.resample_poly's output for this rate change."""
    if rate_in == rate_out:
        return num_frames
    g = gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    return ceil(num_frames * up / down)


def _read_audio(path: str, sample_rate: int) -> np.ndarray:
    """Read a file as mono float32 at `sample_rate` (channels averaged, polyphase resampling).

    Private stand-in until sslsv.audio.io.read_audio is wired in.

    Args:
        path: audio file readable by soundfile.
        sample_rate: target rate in Hz.

    Returns:
        (S,) float32 waveform.

    Raises:
        RuntimeError: the file cannot be read (message names it).
    """
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises LibsndfileError, OSError, RuntimeError...
        raise RuntimeError(f"cannot read audio file {path}: {error}") from error
    wave = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


def _audio_length(path: str, sample_rate: int) -> int:
    """Number of samples `path` will have after _read_audio, from its header only."""
    try:
        info = sf.info(path)
    except Exception as error:
        raise RuntimeError(f"cannot read audio file {path}: {error}") from error
    return _resampled_length(int(info.frames), int(info.samplerate), sample_rate)


def plan_batches(lengths: Sequence[int], max_samples: float, max_trim: float) -> list[np.ndarray]:
    """Group files into padding-free batches (greedy over files sorted by length).

    Walking from the shortest file up, a batch starts at its shortest file (length m)
    and file i (length L_i >= m) may join while (a) every member cut to m loses at most
    max_trim of its own length, L_i - m <= max_trim * L_i, and (b) the audio actually fed
    to the model stays within budget, (batch size + 1) * m <= max_samples. A file alone
    always forms a batch, even if it exceeds the budget.

    Args:
        lengths: (N,) length of each file in samples.
        max_samples: budget of samples per batch (batch_seconds * sample_rate).
        max_trim: largest fraction of its own length a file may lose (0 = equal lengths only).

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
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


class _BatchDataset(Dataset):
    """One item = one planned batch: the files read, cut to the shortest, stacked."""

    def __init__(self, paths: list[str], batches: list[np.ndarray], sample_rate: int):
        self.paths = paths
        self.batches = batches
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.batches[item]
        waves = [_read_audio(self.paths[i], self.sample_rate) for i in indices]
        # Header lengths planned the batch; cut to the shortest actual length so a header
        # that over-reports frames can only shorten, never pad.
        length = min(len(w) for w in waves)
        if length == 0:
            empty = self.paths[indices[int(np.argmin([len(w) for w in waves]))]]
            raise RuntimeError(f"audio file {empty} contains no samples")
        batch = torch.from_numpy(np.stack([w[:length] for w in waves]))
        return batch, torch.as_tensor(indices, dtype=torch.int64)


def extract_embeddings(model: Callable[[torch.Tensor], torch.Tensor], paths: Sequence[str | Path], sample_rate: int,
                       device: str | torch.device, batch_seconds: float = 300.0, max_trim: float = 0.01,
                       root: str | Path | None = None, progress: bool = True, num_workers: int = 2) -> torch.Tensor:
    """Embed whole audio files, batching files of nearly equal length without padding.

    Files are sorted by length and grouped by plan_batches: each batch is cut to its
    shortest file (the beginning of every file is kept), a file may join a batch only
    if that cut drops at most `max_trim` of its own length, and a batch holds at most
    `batch_seconds` of audio as fed to the model (a longer single file is its own
    batch). With max_trim = 0 only equal-length files share a batch, so embeddings are
    those of the one-by-one computation. A DataLoader's workers read (soundfile),
    average channels to mono and resample (scipy.signal.resample_poly) while the model
    runs under torch.inference_mode(). The caller chooses train/eval mode.

    Args:
        model: maps float32 waveforms (B, S) on `device` to embeddings (B, D).
        paths: (N,) audio files, absolute or relative to `root` (or to the working
            directory when root is None).
        sample_rate: rate the model expects, in Hz; other rates are resampled.
        device: where the model runs.
        batch_seconds: audio budget per batch in seconds (sum over the batch).
        max_trim: largest fraction of its own length a file may lose to batching.
        root: base directory of relative paths.
        progress: show a tqdm progress bar on stderr.
        num_workers: DataLoader worker processes (0 = read in this process).

    Returns:
        (N, D) float32 CPU tensor, row i the embedding of paths[i]; (0, 0) if no paths.

    Raises:
        RuntimeError: a file cannot be read or is empty (the message names it).
        ValueError: invalid arguments, or the model does not return (B, D).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not 0.0 <= max_trim < 1.0:
        raise ValueError(f"max_trim must be in [0, 1), got {max_trim}")
    if batch_seconds <= 0:
        raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
    device = torch.device(device)
    base = Path(root) if root is not None else None
    resolved = [str(Path(p) if base is None or Path(p).is_absolute() else base / p) for p in paths]
    if not resolved:
        return torch.empty(0, 0, dtype=torch.float32)

    # Header reads are I/O-bound; threads overlap them for large lists (e.g. 145k files).
    with ThreadPoolExecutor(max_workers=max(1, min(16, 4 * max(1, num_workers)))) as pool:
        lengths = list(pool.map(lambda p: _audio_length(p, sample_rate), resolved))
    empty = [p for p, n in zip(resolved, lengths) if n == 0]
    if empty:
        raise RuntimeError(f"{len(empty)} audio file(s) contain no samples, e.g. {empty[:3]}")

    batches = plan_batches(lengths, batch_seconds * sample_rate, max_trim)
    loader = DataLoader(_BatchDataset(resolved, batches, sample_rate), batch_size=None, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(resolved), desc="embeddings", unit="file", file=sys.stderr, dynamic_ncols=True)
    embeddings: torch.Tensor | None = None
    batches_iter = iter(loader)
    try:
        with torch.inference_mode():
            for waves, indices in batches_iter:
                out = model(waves.to(device=device, dtype=torch.float32, non_blocking=True))
                if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(indices):
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(f"model must return (batch, dim) embeddings, got {shape} for a batch of {len(indices)}")
                out = out.detach().to("cpu", torch.float32)
                if embeddings is None:
                    embeddings = torch.empty(len(resolved), out.shape[1], dtype=torch.float32)
                embeddings[indices] = out
                if bar is not None:
                    bar.update(len(indices))
    finally:
        # Stop the workers now rather than at garbage collection (matters when a read failed).
        shutdown = getattr(batches_iter, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del batches_iter
        if bar is not None:
            bar.close()
    assert embeddings is not None
    # inference_mode tensors cannot enter autograd later; hand back an ordinary tensor.
    return embeddings.clone() if embeddings.is_inference() else embeddings
