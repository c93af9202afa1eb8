"""Python API to embed audio and score pairs with a trained run: `sslsv.load(run_dir).embed([...])`.

    import sslsv
    model = sslsv.load("models/simclr/fast_resnet34")
    emb = model.embed(["a.wav", "b.wav"])          # (2, D) float32, L2-normalised
    score = model.score("a.wav", "b.wav")         # cosine similarity

Files and waveforms given as arrays or tensors go together, in one call, through the evaluation's length-sorted
batching (sslsv.evaluation.embeddings.extract_embeddings) with max_trim = 0: only items of exactly equal length
share a batch, so no padding or trimming ever changes an embedding, and files give the numbers of `evaluate.py`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from sslsv.evaluation.embeddings import extract_embeddings
from sslsv.distributed import resolve_device
from sslsv.runs import load_model

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
        # One extraction for every item: equal lengths share a batch, nothing is padded or trimmed (max_trim 0).
        out = extract_embeddings(self.model, items, self.sample_rate, self.device, batch_seconds=self.batch_seconds,
                                 max_trim=0.0, progress=progress, num_workers=0)
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
