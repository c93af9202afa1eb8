"""Python API to embed audio and score pairs with a trained run: `sslsv.load(run_dir).embed([...])`.

    import sslsv
    model = sslsv.load("models/simclr/fast_resnet34")
    emb = model.embed(["a.wav", "b.wav"])          # (2, D) float32, L2-normalised (normalize=False: raw)
    emb = model.embed([wave_8k], sample_rate=8000)  # arrays at another rate are resampled first
    score = model.score("a.wav", "b.wav")         # cosine similarity

Batching is evaluate.py's: files and waveforms given in one call go together through the evaluation's extractor
(sslsv.evaluation.embeddings.extract_embeddings) with the run's `evaluation.batch_seconds` and
`evaluation.max_trim`. Items are sorted by length and items of nearly equal length share a batch, each cut to the
batch's shortest, losing at most max_trim (1 %) of its own length; nothing is zero-padded. So embedding the files of
a trial list in one call gives exactly the embeddings, and the scores, of `evaluate.py` on that list. An item's
embedding does depend on which other items it is embedded with, by that trim: `score("a.wav", "b.wav")` embeds the
two files alone, where evaluate.py may have cut either to a batch-mate's length (on the demo run, the first demo
trial scores 0.979505 alone and 0.979324 in evaluate.py, whose batch cut one file by under 1 %).
`sslsv.load(run, max_trim=0)` makes every embedding independent of the others (only equal lengths share a
batch: the full-length, one-by-one result) at the cost of more, smaller batches.

Precision, layout and compilation are evaluate.py's too: the run's evaluation.amp, evaluation.channels_last and
evaluation.compile unless `sslsv.load(run, amp="bf16", channels_last=True, compile=True)` says otherwise (bf16
autocast, NHWC for encoders that declare it, torch.compile of the encoder: see docs/evaluation.md).

Inputs are checked before anything is embedded, and a bad one raises AudioError naming it: files go through the
one reader (sslsv.audio.io: missing, directory, unreadable, empty, shorter than MIN_AUDIO_SECONDS, truncated,
NaN/Inf samples; stereo files are averaged to mono; files at another rate are resampled). Waveforms must be mono:
a 1-D (S,) array, or a 2-D (B, S) batch of them, at `sample_rate=` Hz (default: the model's rate, which is what
they are assumed to be when it is not given), resampled to the model's rate with the reader's polyphase filter. A
multi-channel array is refused rather than guessed at, since (2, S) stereo and a batch of two utterances look
alike: average the channels first. Too short (under MIN_AUDIO_SECONDS) and NaN/Inf waveforms are refused too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from sslsv.audio.io import MIN_AUDIO_SECONDS, AudioError, check_audio_files, resample
from sslsv.evaluation.embeddings import check_amp, extract_embeddings
from sslsv.evaluation.evaluate import ExtractionRuntime, extraction_layout, with_extraction
from sslsv.distributed import resolve_device
from sslsv.runs import load_model

__all__ = ["SpeakerEmbedder", "load"]

Item = Union[str, Path, np.ndarray, torch.Tensor]


class SpeakerEmbedder:
    """A trained run's embedding model (waveform -> representation) in eval mode.

    Args:
        model: SpeakerModel (B, S) -> (B, D).
        sample_rate: rate the model expects; files and waveforms at other rates are resampled to it.
        device: where the model runs.
        batch_seconds: audio per batch, as the evaluation config's `evaluation.batch_seconds`.
        source: which weights were loaded (for messages).
        max_trim: largest fraction of its length an item may lose to batching, as `evaluation.max_trim`
            (0: only equal lengths share a batch).
        amp: "none" (float32), "bf16" or "fp16" (CUDA only) autocast of the model calls, as `evaluation.amp`.
        channels_last: run the model NHWC during extraction (encoders that declare it), as
            `evaluation.channels_last` resolved for the device.
        compile: torch.compile the encoder (dynamic lengths), as `evaluation.compile`.
    """

    def __init__(self, model: torch.nn.Module, sample_rate: int, device: torch.device,
                 batch_seconds: float = 300.0, source: str = "", max_trim: float = 0.01, amp: str = "none",
                 channels_last: bool = False, compile: bool = False):
        if not 0.0 <= max_trim < 1.0:
            raise ValueError(f"max_trim must be in [0, 1), got {max_trim}")
        check_amp(amp, torch.device(device))
        self.amp, self.channels_last, self.compile = amp, bool(channels_last), bool(compile)
        self.model = model.eval()
        self.sample_rate = int(sample_rate)
        self.device = torch.device(device)
        self.batch_seconds = batch_seconds
        self.max_trim = float(max_trim)
        self.source = source
        self.embed_dim = int(getattr(model, "embed_dim", 0))

    def __repr__(self) -> str:
        return f"SpeakerEmbedder({self.source}, dim={self.embed_dim}, sample_rate={self.sample_rate}, device={self.device})"

    def embed(self, items: Item | Sequence[Item], normalize: bool = True, progress: bool = False,
              sample_rate: int | None = None) -> np.ndarray:
        """Embeddings of audio files, 1-D waveforms, or a 2-D batch of waveforms, batched as evaluate.py batches.

        Args:
            items: a path, a 1-D array / tensor (S,), a 2-D array / tensor (B, S), or a list mixing paths and
                1-D waveforms. Waveforms are mono float samples, at least MIN_AUDIO_SECONDS long.
            normalize: L2-normalise the rows (what cosine scoring uses); False: the raw representations.
            progress: progress bar for files.
            sample_rate: rate of the waveforms in Hz (files carry their own); None: the model's rate
                (`self.sample_rate`). Waveforms at another rate are resampled to the model's rate with the
                reader's polyphase filter (sslsv.audio.io), as files at another rate are.

        Returns:
            (N, D) float32 numpy array, row i for item i (a 2-D batch counts as B items).

        Raises:
            AudioError: an unusable file (named; every bad file is listed before anything is embedded), or a
                waveform that is not mono, too short, or holds NaN/Inf (named by its position).
            ValueError: an item that is neither a path, an array nor a tensor.
        """
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        if rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        items = [self._checked(item, i, rate) for i, item in enumerate(self._as_list(items, rate))]
        if not items:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        check_audio_files([item for item in items if isinstance(item, (str, Path))])
        # One extraction for every item, planned as evaluate.py plans it (batch_seconds, max_trim).
        with extraction_layout(self.model, self.channels_last):
            out = extract_embeddings(self.model, items, self.sample_rate, self.device,
                                     batch_seconds=self.batch_seconds, max_trim=self.max_trim, progress=progress,
                                     num_workers=0, amp=self.amp, compile=self.compile)
        if normalize:
            out = F.normalize(out, dim=1)
        return out.numpy().astype(np.float32, copy=False)

    def _min_samples(self, rate: int | None = None) -> int:
        return int(np.ceil(MIN_AUDIO_SECONDS * (rate or self.sample_rate)))

    def _as_list(self, items: Item | Sequence[Item], rate: int | None = None) -> list:
        """The items one by one: a path or a 1-D waveform alone, the rows of a 2-D (B, S) batch."""
        if isinstance(items, (str, Path)):
            return [items]
        if not isinstance(items, (np.ndarray, torch.Tensor)):
            return list(items)
        shape = tuple(items.shape)
        if items.ndim == 1:
            return [items]
        rate = rate or self.sample_rate
        if items.ndim == 2 and shape[1] >= self._min_samples(rate):
            return list(items)
        if items.ndim == 2:
            raise AudioError(f"a 2-D array is a batch (B, S) of mono waveforms, and rows of {shape[1]} samples are "
                             f"too short (at least {self._min_samples(rate)} at {rate} Hz); for one "
                             f"multi-channel recording of shape {shape}, average the channels first: "
                             f"x.mean(axis=1)")
        raise AudioError(f"waveforms must be (S,) or (B, S) mono, got shape {shape}")

    def _checked(self, item: Item, index: int, rate: int | None = None) -> str | Path | np.ndarray:
        """A path as it is, or a waveform as a finite 1-D float32 array of at least MIN_AUDIO_SECONDS, at `rate` Hz,
        resampled to the model's rate."""
        rate = rate or self.sample_rate
        if isinstance(item, (str, Path)):
            return item
        if not isinstance(item, (np.ndarray, torch.Tensor)):
            raise ValueError(f"item {index}: expected a path, numpy array or tensor, got {type(item).__name__}")
        wave = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if wave.ndim != 1:
            raise AudioError(f"item {index}: a waveform must be 1-D mono (S,), got shape {tuple(wave.shape)}; "
                             f"average the channels first (x.mean over the channel axis)")
        if len(wave) < self._min_samples(rate):
            raise AudioError(f"item {index}: a waveform of {len(wave)} samples is too short (at least "
                             f"{self._min_samples(rate)}, {MIN_AUDIO_SECONDS:g} s at {rate} Hz)")
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        if not np.isfinite(wave).all():
            bad = int(np.count_nonzero(~np.isfinite(wave)))
            raise AudioError(f"item {index}: {bad} of {len(wave)} samples of the waveform are NaN or Inf")
        return np.ascontiguousarray(resample(wave, rate, self.sample_rate), dtype=np.float32)

    def score(self, a: Item, b: Item, sample_rate: int | None = None) -> float:
        """Cosine similarity between two items (paths or 1-D waveforms, at `sample_rate` as in `embed`), embedded
        together (module docstring: evaluate.py may have batched either with other files); AudioError as in
        `embed`."""
        e = self.embed([a, b], normalize=True, sample_rate=sample_rate)
        return float(e[0] @ e[1])


def load(run_dir: str | Path, device: str | torch.device = "cpu", use_average: bool = True,
         batch_seconds: float | None = None, max_trim: float | None = None, best: bool = False,
         amp: str | None = None, channels_last: bool | None = None, compile: bool | None = None) -> SpeakerEmbedder:
    """Load a run directory's model (averaged weights when present and `use_average`; model_best.pt with `best`).

    Args:
        batch_seconds, max_trim: batching (SpeakerEmbedder); None: the run's `evaluation.batch_seconds` and
            `evaluation.max_trim`, what evaluate.py uses.
        amp, channels_last, compile: how the model runs (SpeakerEmbedder); None: the run's `evaluation.amp`,
            `evaluation.channels_last` (null there: NHWC on CUDA only) and `evaluation.compile`.

    Raises:
        RunError: not a run directory, or no weights.
        ValueError: an unknown amp, or fp16 off CUDA.
    """
    torch_device = resolve_device(str(device)) if isinstance(device, str) else torch.device(device)
    model, config, source = load_model(run_dir, use_average, torch_device, best=best)
    config = with_extraction(config, amp, channels_last, None, compile)
    runtime = ExtractionRuntime.resolve(config, model, torch_device)
    return SpeakerEmbedder(model, config.features.sample_rate, torch_device,
                           batch_seconds or config.evaluation.batch_seconds, source,
                           config.evaluation.max_trim if max_trim is None else max_trim, runtime.amp,
                           runtime.channels_last, runtime.compile)
