"""Audio file reading for DataLoader workers: whole files, or random crops read without decoding the rest.

Only soundfile is used (no torchaudio.load): it is fast, thread-safe, supports partial reads of WAV/FLAC/OGG and
has no backend-selection surprises in worker processes. Everything returns float32 mono numpy arrays at the
requested sample rate; files at another rate are resampled with a polyphase filter (scipy.signal.resample_poly).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # the audio files sslsv looks for in folders (lower-case suffixes)

# resample_poly's default Kaiser filter has 10 * max(up, down) taps on each side in the upsampled domain.
_FILTER_HALF_WIDTH = 10


class AudioError(RuntimeError):
    """An audio file that cannot be read or used; the message names the file."""


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """Header of an audio file, without decoding it.

    Args:
        path: audio file.

    Returns:
        (sample_rate, num_frames, channels).

    Raises:
        AudioError: the file is missing or is not a readable audio file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such audio file")
    try:
        info = sf.info(path)
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError... depending on the case
        raise AudioError(f"{path}: not a readable audio file ({error})") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def _ratio(file_rate: int, sample_rate: int) -> tuple[int, int]:
    """Upsampling / downsampling factors from file_rate to sample_rate, reduced by their gcd."""
    g = math.gcd(int(sample_rate), int(file_rate))
    return int(sample_rate) // g, int(file_rate) // g


def _resample(x: np.ndarray, file_rate: int, sample_rate: int) -> np.ndarray:
    if file_rate == sample_rate:
        return x
    up, down = _ratio(file_rate, sample_rate)
    return resample_poly(x, up, down).astype(np.float32, copy=False)


def _read(path: str, start: int = 0, frames: int = -1) -> np.ndarray:
    """Frames [start, start + frames) as float32 mono (channels averaged)."""
    try:
        data = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)[0]
    except Exception as error:
        raise AudioError(f"{path}: not a readable audio file ({error})") from None
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole file, mono, at `sample_rate`.

    Args:
        path: audio file.
        sample_rate: wanted rate in Hz; the file is resampled when its own rate differs.

    Returns:
        float32 array (S,).

    Raises:
        AudioError: missing, unreadable or empty file.
    """
    path = str(path)
    file_rate, num_frames, _ = audio_info(path)
    if num_frames <= 0:
        raise AudioError(f"{path}: empty audio file (0 frames)")
    audio = _read(path)
    if len(audio) == 0:
        raise AudioError(f"{path}: empty audio file (0 frames decoded)")
    return np.ascontiguousarray(_resample(audio, file_rate, sample_rate), dtype=np.float32)


def read_crop(
    path: str | Path,
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    info: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """A random crop of `num_samples` samples at `sample_rate`, reading only the frames that the crop needs.

    The start is uniform over all positions where the crop fits. Files shorter than the crop are repeated
    (wrap-around, as in voxceleb_trainer) from a random offset, so a crop never contains silent padding that the
    model could learn to detect. When the file's rate differs, the frames covering the crop plus a margin for the
    resampling filter are read, resampled, and exactly `num_samples` are cut out; the margin keeps the crop free of
    the filter's edge effects wherever the file has audio around it.

    Args:
        path: audio file.
        num_samples: crop length S in samples at `sample_rate`.
        sample_rate: wanted rate in Hz.
        rng: source of the random start; the crop is a deterministic function of its state.
        info: (sample_rate, num_frames, channels) from `audio_info`, to skip reading the header again.

    Returns:
        float32 array (num_samples,).

    Raises:
        AudioError: missing, unreadable or empty file.
    """
    path = str(path)
    if num_samples <= 0:
        raise ValueError(f"read_crop: num_samples must be positive, got {num_samples}")
    file_rate, num_frames, _ = info if info is not None else audio_info(path)
    if num_frames <= 0:
        raise AudioError(f"{path}: empty audio file (0 frames)")
    up, down = _ratio(file_rate, sample_rate)
    needed = -(-num_samples * down // up)  # file frames covering the crop: ceil(num_samples * down / up)

    if num_frames < needed:  # short file: the whole file, repeated from a random offset
        audio = _resample(_read(path), file_rate, sample_rate)
        if len(audio) == 0:
            raise AudioError(f"{path}: empty audio file (0 frames decoded)")
        offset = int(rng.integers(len(audio)))
        return np.ascontiguousarray(audio[(offset + np.arange(num_samples)) % len(audio)], dtype=np.float32)

    start = int(rng.integers(num_frames - needed + 1))
    if up == down:
        audio = _read(path, start, needed)
        if len(audio) < num_samples:  # header claimed more frames than the decoder delivered
            raise AudioError(f"{path}: truncated audio file (header says {num_frames} frames, "
                             f"could not read frames {start}..{start + needed})")
        return np.ascontiguousarray(audio, dtype=np.float32)

    # Margin before the crop: a whole number of `down` periods, so that the crop starts exactly on an output
    # sample of the resampled excerpt (offset k * up) and equals the same slice of the fully resampled file.
    margin = _FILTER_HALF_WIDTH * max(up, down) // up + 2
    periods = min(-(-margin // down), start // down)
    begin = start - periods * down
    end = min(num_frames, start + needed + margin)
    audio = _resample(_read(path, begin, end - begin), file_rate, sample_rate)
    offset = periods * up
    crop = audio[offset : offset + num_samples]
    if len(crop) < num_samples:
        raise AudioError(f"{path}: truncated audio file (header says {num_frames} frames, "
                         f"could not read frames {begin}..{end})")
    return np.ascontiguousarray(crop, dtype=np.float32)
