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

Embedding cache (`embedding_cache`): inside `with embedding_cache(RunLayout(run).embedding_cache):` (what `sslsv
evaluate`, `fuse`, `analyze` and `pseudo-label` do unless given --no-cache), extract_embeddings of audio files by
an nn.Module keeps each file's embedding and reuses it on a later call. An entry is used only when every part of its
key is unchanged: the weights (a content hash of the model's state dict, its class and repr: another weights file,
averaged or random weights, any edited tensor invalidate), the extraction settings (sample rate, crops: count,
seconds and seed, max_trim; the embeddings are always the raw, un-normalised ones), and the file (absolute path,
size and mtime in ns; a seeded crop also by its row). Only the files without a valid entry are embedded, batched
among themselves: their embeddings can differ from those of a complete re-extraction by what max_trim allows
(a file cut by at most that fraction of its length; evaluation.max_trim = 0 makes every embedding exact).
Entries are stored in parts (`<folder>/<key>/part_*.pt`, each written atomically by sslsv.runs.atomic_save and
read memory-mapped); a 9th part merges them all into one. The device is not part of the key (CPU and GPU
embeddings agree to float tolerance). A non-default precision (`amp`: bf16 / fp16 autocast) and a channels_last
(NHWC) model and a compiled one are (key entries "amp", "layout" and "compiled"), so their embeddings never mix with
fp32 eager NCHW ones; the default key is unchanged by them.

Precision (`amp`): "none" (default) runs the model in float32 as it is; "bf16" / "fp16" run the model call under
torch.autocast(device type, dtype) inside the same inference_mode loop (fp16 only on CUDA). Embeddings are always
returned as float32.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from math import ceil, gcd
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sslsv.audio.io import AudioError, audio_info, read_audio, read_crop
from sslsv.evaluation.errors import EvaluationError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["AMP_DTYPES", "Crops", "EmbeddingCache", "crop_starts", "embedding_cache", "extract_embeddings",
           "model_fingerprint", "plan_batches", "read_crops"]

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

    def __init__(self, sources: list, batches: list[np.ndarray], sample_rate: int, crops: Crops | None,
                 seed_rows: Sequence[int] | None = None):
        self.sources = sources
        self.batches = batches
        self.sample_rate = sample_rate
        self.crops = crops
        self.seed_rows = seed_rows  # row of each source in the caller's list (seeded crops); None: its index

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, row: int) -> np.ndarray:
        source = self.sources[row]
        if isinstance(source, np.ndarray):
            return source
        if self.crops is not None:
            return self.crops.read(source, self.sample_rate, row if self.seed_rows is None else self.seed_rows[row])
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
                   device: torch.device, bar, amp: str = "none") -> torch.Tensor:
    """The batching loop: (count, D) embeddings, or (count, N, D) when each source gives N crops; the model call
    under torch.autocast when `amp` is bf16 or fp16 (AMP_DTYPES)."""
    embeddings: torch.Tensor | None = None
    batches = iter(loader)
    dtype = AMP_DTYPES[amp]
    try:
        with torch.inference_mode():
            for waves, rows in batches:
                flat = waves.reshape(-1, waves.shape[-1])  # (B, S), or (B * N, S) for crops
                flat = flat.to(device=device, dtype=torch.float32, non_blocking=True)
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    out = model(flat)
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
                       crops: Crops | None = None, batch_size: int | None = None, amp: str = "none",
                       compile: bool = False) -> torch.Tensor:
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
        amp: "none" (float32, the default), "bf16" or "fp16" (CUDA only): the model call runs under
            torch.autocast(device type, that dtype); the embeddings are float32 either way.
        compile: run the model through torch.compile with dynamic shapes (compiled_for_extraction): faster batches
            after a one-off compilation (tens of seconds on a CPU, less once inductor's on-disk cache holds it).

    Returns:
        (U, D) float32 CPU tensor, row i the embedding of paths[i]; with crops (U, N, D), raw (not normalised).
        No paths: (0, 0), or (0, N, 0) with crops.

    Raises:
        AudioError: a file cannot be read, is empty, or a waveform holds NaN/Inf (the message names it).
        EvaluationError: the model returned NaN/Inf embeddings (the message names the inputs and any non-finite
            weight tensor).
        ValueError: invalid arguments (among them fp16 off CUDA), or the model does not return (B, D).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not 0.0 <= max_trim < 1.0:
        raise ValueError(f"max_trim must be in [0, 1), got {max_trim}")
    if batch_seconds <= 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"batch_seconds and batch_size must be positive, got {batch_seconds} and {batch_size}")
    device = torch.device(device)
    check_amp(amp, device)
    sources = _sources(paths, root, crops)
    if not sources:
        return torch.empty(0, 0, dtype=torch.float32) if crops is None else torch.empty(0, crops.count, 0)

    def extract(chosen: list, seed_rows: list[int] | None) -> torch.Tensor:
        return _extract(model, chosen, seed_rows, sample_rate, device, batch_seconds, max_trim, progress,
                        num_workers, crops, batch_size, amp, compile)

    folder = _CACHE_FOLDER.get()
    if folder is None or not isinstance(model, torch.nn.Module) or not all(isinstance(s, str) for s in sources):
        return extract(sources, None)
    cache = EmbeddingCache.for_model(folder, model, sample_rate, crops, max_trim, amp, compile)
    return cache.extract(sources, crops, extract)


def _extract(model, sources: list, seed_rows: list[int] | None, sample_rate: int, device: torch.device,
             batch_seconds: float, max_trim: float, progress: bool, num_workers: int, crops: Crops | None,
             batch_size: int | None, amp: str = "none", compile: bool = False) -> torch.Tensor:
    """extract_embeddings of resolved sources, without the cache."""
    lengths = _lengths(sources, sample_rate, crops, num_workers)
    batches = plan_batches(lengths, batch_seconds * sample_rate, max_trim if crops is None else 0.0, batch_size)
    loader = DataLoader(_AudioDataset(sources, batches, sample_rate, crops, seed_rows), batch_size=None,
                        shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), desc="embeddings" if crops is None else f"embeddings ({crops.count} crops)",
                   unit="file", file=sys.stderr, dynamic_ncols=True)
    try:
        runner = compiled_for_extraction(model) if compile else model
        embeddings = _embed_batches(runner, loader, len(sources), None if crops is None else crops.count, device, bar,
                                    amp)
    finally:
        if bar is not None:
            bar.close()
    _check_finite(embeddings, sources, model)
    return embeddings


def compiled_for_extraction(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model under torch.compile with dynamic shapes, so batches of every length share a handful of graphs
    instead of one per length (torch still specialises a batch of one, batches from 16 on and a size threshold of
    inductor's CPU code: 5 graphs for 300 VoxCeleb1-like files). A model made of a
    `frontend` and an `encoder` (SpeakerModel) compiles its encoder only: the log-mel front-end is faster eager
    (Fast ResNet-34, 24 x 8 s on 2 CPU cores: 0.51 s with the encoder compiled, 0.63 s with both) and torchaudio's
    spectrogram breaks the graph anyway. The weights are the model's own (nothing is copied); compiled code is
    cached by torch per module, so later calls with the same model do not compile again."""
    frontend, encoder = getattr(model, "frontend", None), getattr(model, "encoder", None)
    if isinstance(frontend, torch.nn.Module) and isinstance(encoder, torch.nn.Module):
        compiled = torch.compile(encoder, dynamic=True)
        return lambda waveform: compiled(frontend(waveform))
    return torch.compile(model, dynamic=True)


def check_amp(amp: str, device: torch.device) -> None:
    """ValueError (one line) for an unknown `amp` or fp16 off CUDA (CPU autocast has no fp16 convolutions)."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp fp16 needs a CUDA device, got {device}; use bf16 on {device.type}")


def is_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's 4-D weights are in the channels_last (NHWC) memory format (a 1 x 1 kernel with one
    channel is both; any tensor that is NHWC and not NCHW decides)."""
    return any(t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
               for t in model.parameters())


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


# ------------------------------------------------------------------------------------------------ cache

_CACHE_FOLDER: ContextVar[Path | None] = ContextVar("sslsv_embedding_cache", default=None)
CACHE_MAX_PARTS = 8  # a 9th part merges all of them into one


@contextmanager
def embedding_cache(folder: str | Path | None):
    """Within the block, extract_embeddings of audio files by an nn.Module reuses and stores embeddings under
    `folder` (normally RunLayout(run).embedding_cache); None disables the cache (--no-cache). See the module
    docstring for the key."""
    token = _CACHE_FOLDER.set(Path(folder) if folder is not None else None)
    try:
        yield
    finally:
        _CACHE_FOLDER.reset(token)


def model_fingerprint(model: torch.nn.Module) -> str:
    """Content hash of a model's weights: its class, its repr (layer settings) and every tensor of its state dict
    (name, dtype, shape, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\n{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_key(path: str, row: int, crops: Crops | None) -> tuple[str, int, int]:
    """(name, size, mtime_ns) of an audio file's entry; a seeded crop's name carries the row it is drawn for."""
    stat = os.stat(path)
    name = os.path.abspath(path)
    if crops is not None and crops.seed is not None:
        name += f"#row{crops.first_row + row}"
    return name, int(stat.st_size), int(stat.st_mtime_ns)


class EmbeddingCache:
    """The entries of one (weights, extraction settings) key: `<folder>/<key>/part_*.pt` plus key.json, which
    describes the key. Use through `embedding_cache`; `extract` serves what it holds and embeds the rest."""

    def __init__(self, folder: str | Path, key: dict):
        self.key = key
        digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=10).hexdigest()
        self.folder = Path(folder) / digest

    @classmethod
    def for_model(cls, folder: str | Path, model: torch.nn.Module, sample_rate: int, crops: Crops | None,
                  max_trim: float, amp: str = "none", compile: bool = False) -> "EmbeddingCache":
        settings = {"sample_rate": sample_rate, "embeddings": "raw",
                    "crops": None if crops is None else {"count": crops.count, "seconds": crops.seconds,
                                                         "seed": crops.seed},
                    "max_trim": max_trim if crops is None else None}
        # Only non-default precision, layout and compilation enter the key: the default key (and cache) is unchanged.
        if amp != "none":
            settings["amp"] = amp
        if is_channels_last(model):
            settings["layout"] = "channels_last"
        if compile:
            settings["compiled"] = True
        return cls(folder, {"weights": model_fingerprint(model), **settings})

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part_*.pt"))

    def _load(self) -> tuple[dict[str, tuple[int, int, int, int]], list[dict]]:
        """{name: (part, row, size, mtime_ns)} of the newest entry of each file, and the loaded parts."""
        index: dict[str, tuple[int, int, int, int]] = {}
        loaded = []
        for path in self.parts():
            try:
                part = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except FileNotFoundError:  # merged away by another process meanwhile
                continue
            except Exception as error:  # noqa: BLE001 - a damaged part is a miss, not a failure
                print(f"warning: ignoring the unreadable embedding-cache part {path} ({type(error).__name__})")
                continue
            number = len(loaded)
            loaded.append({**part, "path": path})
            for row, (name, size, mtime) in enumerate(zip(part["files"], part["sizes"].tolist(),
                                                          part["mtimes"].tolist())):
                index[name] = (number, row, size, mtime)
        return index, loaded

    def extract(self, sources: list[str], crops: Crops | None,
                compute: Callable[[list, list[int]], torch.Tensor]) -> torch.Tensor:
        """Embeddings of `sources` (rows in order): valid entries from the cache, the others from
        compute(sources subset, their rows), which are then stored. Prints one line with hits and misses."""
        keys = [_file_key(source, row, crops) for row, source in enumerate(sources)]
        index, parts = self._load()
        hits: dict[int, list[tuple[int, int]]] = {}  # part -> [(source row, part row)]
        missing = []
        for row, (name, size, mtime) in enumerate(keys):
            entry = index.get(name)
            if entry is not None and entry[2:] == (size, mtime):
                hits.setdefault(entry[0], []).append((row, entry[1]))
            else:
                missing.append(row)
        computed = compute([sources[i] for i in missing], missing) if missing else None
        found = {number: parts[number]["embeddings"][torch.as_tensor([r for _, r in pairs])]
                 for number, pairs in hits.items()}
        sample = computed if computed is not None else next(iter(found.values()))
        out = torch.empty(len(sources), *sample.shape[1:], dtype=torch.float32)
        for number, pairs in hits.items():
            out[torch.as_tensor([row for row, _ in pairs])] = found[number]
        if computed is not None:
            out[torch.as_tensor(missing)] = computed
            self._store([keys[i] for i in missing], computed, len(parts))
        print(f"embedding cache {self.folder}: {len(sources) - len(missing)} of {len(sources)} files cached (hit), "
              f"{len(missing)} embedded (miss)")
        return out

    def _store(self, keys: list[tuple[str, int, int]], embeddings: torch.Tensor, existing_parts: int) -> None:
        from sslsv.runs import atomic_save

        self.folder.mkdir(parents=True, exist_ok=True)
        description = self.folder / "key.json"
        if not description.exists():
            description.write_text(json.dumps(self.key, indent=1))
        name = f"part_{time.time_ns():020d}_{os.getpid()}.pt"
        atomic_save(_part(keys, embeddings), self.folder / name)
        if existing_parts + 1 > CACHE_MAX_PARTS:
            self._merge()

    def _merge(self) -> None:
        """Rewrite the newest entry of every file into one part, then delete the parts it was read from."""
        from sslsv.runs import atomic_save

        index, parts = self._load()
        if len(parts) < 2:
            return
        names = sorted(index, key=lambda n: index[n][:2])
        keys = [(n, index[n][2], index[n][3]) for n in names]
        rows = torch.stack([parts[index[n][0]]["embeddings"][index[n][1]] for n in names])
        atomic_save(_part(keys, rows), self.folder / f"part_{time.time_ns():020d}_{os.getpid()}.pt")
        for part in parts:
            part["path"].unlink(missing_ok=True)


def _part(keys: list[tuple[str, int, int]], embeddings: torch.Tensor) -> dict:
    return {"files": [k[0] for k in keys], "sizes": torch.tensor([k[1] for k in keys], dtype=torch.int64),
            "mtimes": torch.tensor([k[2] for k in keys], dtype=torch.int64),
            "embeddings": embeddings.detach().to(torch.float32).contiguous()}
