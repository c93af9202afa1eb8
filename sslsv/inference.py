"""Python API to embed audio and score pairs with a trained run: `sslsv.load(run_dir).embed([...])`.

    import sslsv
    model = sslsv.load("models/simclr/fast_resnet34")
    emb = model.embed(["a.wav", "b.wav"])          # (2, D) float32, L2-normalised
    score = model.score("a.wav", "b.wav")         # cosine similarity

Files go through the evaluation's padding-free, length-sorted batching (extract_embeddings), so `embed` gives the
same numbers as `evaluate.py`. Waveforms given as arrays or tensors are grouped by exact length and each group runs
as one batch, so no padding ever changes an embedding either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from sslsv.evaluation.embeddings import extract_embeddings
from sslsv.evaluation.evaluate import load_model, resolve_device

__all__ = ["SpeakerEmbedder", "load"]

Item = Union[str, Path, np.ndarray, torch.Tensor]


class SpeakerEmbedder:
    """A trained run's embedding model (waveform -> representation) in eval mode.

    Args:
        model: SpeakerModel (B, S) -> (B, D).
        sample_rate: rate the model expects; arrays and tensors must already be at this rate.
        device: where the model runs.
        batch_seconds: audio per batch, as in the evaluation config.
        source: which weights were loaded (for messages).
    """

    def __init__(self, model: torch.nn.Module, sample_rate: int, device: torch.device,
                 batch_seconds: float = 300.0, source: str = ""):
        self.model = model.eval()
        self.sample_rate = int(sample_rate)
        self.device = torch.device(device)
        self.batch_seconds = batch_seconds
        self.source = source
        self.embed_dim = int(getattr(model, "embed_dim", 0))

    def __repr__(self) -> str:
        return f"SpeakerEmbedder({self.source}, dim={self.embed_dim}, sample_rate={self.sample_rate}, device={self.device})"

    def _waveforms(self, waves: list[torch.Tensor]) -> torch.Tensor:
        """Embed waveforms of any lengths: one model call per distinct length, at most batch_seconds each."""
        lengths = np.array([w.shape[-1] for w in waves])
        if (lengths == 0).any():
            raise ValueError(f"item {int(np.argmax(lengths == 0))} is an empty waveform")
        per_batch = max(1, int(self.batch_seconds * self.sample_rate))
        results: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for length in np.unique(lengths):
                rows = np.flatnonzero(lengths == length)
                step = max(1, per_batch // int(length))
                for start in range(0, len(rows), step):
                    chunk = rows[start:start + step]
                    batch = torch.stack([waves[i] for i in chunk]).to(self.device, torch.float32)  # (b, S)
                    for i, e in zip(chunk, self.model(batch).float().cpu()):
                        results[int(i)] = e
        return torch.stack([results[i] for i in range(len(waves))])  # (N, D)

    def embed(self, items: Item | Sequence[Item], normalize: bool = True, progress: bool = False) -> np.ndarray:
        """Embeddings of audio files, 1-D waveforms, or a 2-D batch of waveforms.

        Args:
            items: a path, a 1-D array / tensor (S,), a 2-D array / tensor (B, S), or a list mixing paths and
                1-D waveforms. Waveforms are float samples at `sample_rate`.
            normalize: L2-normalise the rows (what cosine scoring uses).
            progress: progress bar for files.

        Returns:
            (N, D) float32 numpy array, row i for item i (a 2-D batch counts as B items).

        Raises:
            ValueError: unsupported item type or shape, empty waveform.
            RuntimeError: unreadable file (named).
        """
        if isinstance(items, (str, Path)):
            items = [items]
        elif isinstance(items, (np.ndarray, torch.Tensor)):
            if items.ndim == 1:
                items = [items]
            elif items.ndim == 2:
                items = list(items)
            else:
                raise ValueError(f"waveform batches must be (S,) or (B, S), got shape {tuple(items.shape)}")
        items = list(items)
        if not items:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        paths, waves = {}, {}
        for i, item in enumerate(items):
            if isinstance(item, (str, Path)):
                paths[i] = str(item)
            elif isinstance(item, (np.ndarray, torch.Tensor)):
                if item.ndim != 1:
                    raise ValueError(f"item {i}: waveforms in a list must be 1-D (S,), got shape {tuple(item.shape)}")
                waves[i] = torch.as_tensor(np.ascontiguousarray(item) if isinstance(item, np.ndarray) else item).float()
            else:
                raise ValueError(f"item {i}: expected a path, numpy array or tensor, got {type(item).__name__}")
        out = torch.empty(len(items), self.embed_dim)
        if paths:
            rows = list(paths)
            out[rows] = extract_embeddings(self.model, list(paths.values()), self.sample_rate, self.device,
                                           batch_seconds=self.batch_seconds, max_trim=0.0, progress=progress,
                                           num_workers=0)
        if waves:
            rows = list(waves)
            out[rows] = self._waveforms(list(waves.values()))
        if normalize:
            out = F.normalize(out, dim=1)
        return out.numpy().astype(np.float32, copy=False)

    def score(self, a: Item, b: Item) -> float:
        """Cosine similarity between two items (paths or 1-D waveforms)."""
        e = self.embed([a, b], normalize=True)
        return float(e[0] @ e[1])


def load(run_dir: str | Path, device: str | torch.device = "cpu", use_average: bool = True,
         batch_seconds: float | None = None) -> SpeakerEmbedder:
    """Load a run directory's model (averaged weights when present and `use_average`).

    Raises:
        RunError: not a run directory, or no weights.
    """
    torch_device = resolve_device(str(device)) if isinstance(device, str) else torch.device(device)
    model, config, source = load_model(run_dir, use_average, torch_device)
    return SpeakerEmbedder(model, config.features.sample_rate, torch_device,
                           batch_seconds or config.evaluation.batch_seconds, source)
