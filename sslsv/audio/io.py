"""Audio file reading for DataLoader workers: whole files, or random crops read without decoding the rest.

Only soundfile is used (no torchaudio.load): it is fast, thread-safe, supports partial reads of WAV/FLAC/OGG and
has no backend-selection surprises in worker processes. Everything returns float32 mono numpy arrays at the
requested sample rate; files at another rate are resampled with a polyphase filter (scipy.signal.resample_poly).
Stereo and multi-channel files are averaged to mono; 8-bit to 32-bit integer, float, FLAC and OGG all load.

Compressed formats (COMPRESSED_SUFFIXES: .mp3, .m4a, .aac, .mp4) are decoded whole, then sliced, because their
decoders cannot seek sample-accurately: MP3 through libsndfile when it supports MP3 (libsndfile >= 1.1, bundled
with soundfile >= 0.12), m4a/aac through PyAV (`pip install av`) or else an `ffmpeg` executable on PATH (the
decoder `sslsv prepare` converts VoxCeleb2 with). Without a decoder, reading such a file raises an AudioError that
names the file and what to install. The last few decoded files are kept in memory (DECODED_CACHE_FILES), so a
header check followed by a read decodes once; training on a compressed corpus decodes every crop's whole file, so
convert large corpora to wav first (`sslsv prepare voxceleb` does).

Every read path (training crops, evaluation, augmentation sources, `sslsv embed` / `score`, the Python API) goes
through `audio_info` / `read_audio` / `read_crop`, which refuse with an `AudioError` naming the file: a missing
file, a directory, an unreadable file (permissions, not audio, truncated header), an empty file, a file shorter
than MIN_AUDIO_SECONDS, WAV data shorter than its header declares, a decode that delivers fewer frames than the
header promised, and NaN/Inf samples in what was decoded. Silence is valid audio and loads.
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # the audio files sslsv looks for in folders (lower-case suffixes)
# Read whole through a decoder (module docstring), never searched for in folders.
COMPRESSED_SUFFIXES = (".mp3", ".m4a", ".aac", ".mp4")
DECODED_CACHE_FILES = 8  # decoded compressed files kept in memory (per process)

# Shortest file any read path accepts: 10 feature hops. Less is no usable speech (a 1-sample or 50 ms file is a
# broken cut, not an utterance), and a crop made by repeating it would be a buzz the model learns from.
MIN_AUDIO_SECONDS = 0.1

# resample_poly's default Kaiser filter has 10 * max(up, down) taps on each side in the upsampled domain.
_FILTER_HALF_WIDTH = 10

# RIFF/WAVE format tags whose block_align is the size of one frame (PCM, IEEE float, A-law, mu-law, extensible).
_FRAME_ALIGNED_WAV_FORMATS = (1, 3, 6, 7, 0xFFFE)
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)  # data sizes written by streaming encoders that could not seek back


def _without_worker_traceback(message: str) -> str:
    """The original one-line message of an AudioError re-raised by a DataLoader worker.

    torch re-raises a worker's exception as `AudioError("Caught AudioError in DataLoader worker process 0.\n
    Original Traceback ...\nsslsv.audio.io.AudioError: <message>")`; the CLI must show the message, not the
    traceback.
    """
    if message.startswith("Caught AudioError") and "AudioError: " in message:
        return message.rstrip().rsplit("AudioError: ", 1)[1]
    return message


class AudioError(RuntimeError):
    """An audio file or waveform that cannot be read or used; the message names the file and says why.

    Attributes:
        path: the file (None for in-memory waveforms or messages built elsewhere).
        kind: the class of problem, for summaries: "missing", "directory", "permission denied", "empty",
            "unreadable", "truncated", "too short", "non-finite", "no decoder" (a compressed format and nothing
            installed to decode it), or "unusable" (anything else).
        reason: the message without the file name.
    """

    def __init__(self, message: str, *, path: str | None = None, kind: str = "unusable", reason: str | None = None):
        super().__init__(_without_worker_traceback(message))
        self.path = path
        self.kind = kind
        self.reason = reason if reason is not None else str(self)


def _error(path: str, kind: str, reason: str) -> AudioError:
    return AudioError(f"{path}: {reason}", path=path, kind=kind, reason=reason)


def _open_error(path: str, error: BaseException) -> AudioError:
    """Why soundfile could not open or decode `path`: the file system's reason when there is one."""
    if not os.path.lexists(path):
        return _error(path, "missing", "no such file")
    if os.path.isdir(path):
        return _error(path, "directory", "is a directory, not an audio file")
    if not os.path.exists(path):
        return _error(path, "missing", "broken symbolic link")
    if not os.access(path, os.R_OK):
        return _error(path, "permission denied", "permission denied (the file is not readable by this user)")
    if os.path.getsize(path) == 0:
        return _error(path, "empty", "empty file (0 bytes)")
    text = str(error).strip()
    detail = text.splitlines()[-1] if text else type(error).__name__
    opening = f"Error opening {path!r}: "
    if detail.startswith(opening):  # libsndfile repeats the path, which the message names already
        detail = detail[len(opening):].strip() or type(error).__name__
    return _error(path, "unreadable", f"not a readable audio file ({detail})")


def _wav_declared_frames(path: str) -> int | None:
    """Frames that a RIFF/WAVE file's data chunk declares, or None (another format, or a size not to be trusted).

    libsndfile silently shortens a WAV whose data chunk holds fewer bytes than declared (a truncated copy), so
    the declaration is read here to tell such a file from a genuinely short one.
    """
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"data":
                if block_align is None or size in _UNKNOWN_WAV_SIZES:
                    return None
                return size // block_align
            if name == b"fmt ":
                fmt = handle.read(16)
                tag = int.from_bytes(fmt[0:2], "little")
                block_align = int.from_bytes(fmt[12:14], "little") or None
                if tag not in _FRAME_ALIGNED_WAV_FORMATS:
                    return None
                handle.seek(size + (size & 1) - len(fmt), os.SEEK_CUR)
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)


# ------------------------------------------------------------------------------------------------ compressed


def is_compressed(path: str | Path) -> bool:
    """Whether `path` is read through a whole-file decoder (COMPRESSED_SUFFIXES), not by seeking with soundfile."""
    return str(path).lower().endswith(COMPRESSED_SUFFIXES)


def _libsndfile_reads_mp3() -> bool:
    return "MP3" in sf.available_formats()


def _pyav_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _decoder(path: str) -> str:
    """'soundfile', 'pyav' or 'ffmpeg': what decodes this compressed file here; AudioError when nothing can."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".mp3" and _libsndfile_reads_mp3():
        return "soundfile"
    if _pyav_available():
        return "pyav"
    if shutil.which("ffmpeg"):
        return "ffmpeg"
    mp3 = " or soundfile >= 0.12 (libsndfile >= 1.1 reads MP3)" if suffix == ".mp3" else ""
    raise _error(path, "no decoder", f"reading {suffix} files needs a decoder: install PyAV (`pip install av`)"
                                     f"{mp3}, or put an ffmpeg executable on PATH (e.g. `apt-get install ffmpeg`); "
                                     f"or convert the file to wav or flac first")


def _decode_soundfile(path: str) -> tuple[np.ndarray, int]:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data, int(rate)


def _decode_pyav(path: str) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the rate of the first audio stream, decoded with PyAV (FFmpeg's libraries)."""
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")  # planar float at the stream's own layout and rate
        chunks, rate = [], int(stream.rate or 0)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())  # (channels, samples)
                rate = int(out.sample_rate)
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
        # The last AAC frame is padded beyond the stream's end; keep its declared duration, as ffmpeg does.
        declared = (int(round(float(stream.duration * stream.time_base) * rate))
                    if stream.duration and stream.time_base and rate else None)
    if not chunks:
        return np.zeros((0, 1), np.float32), rate
    data = np.concatenate(chunks, axis=1).T
    if declared is not None and 0 < declared < len(data):
        data = data[:declared]
    return np.ascontiguousarray(data, dtype=np.float32), rate


def _decode_ffmpeg(path: str) -> tuple[np.ndarray, int]:
    """Decoded with an ffmpeg executable into a temporary float wav (all channels, the file's own rate)."""
    with tempfile.TemporaryDirectory(prefix="sslsv-decode-") as folder:
        out = os.path.join(folder, "decoded.wav")
        result = subprocess.run([shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i",
                                 path, "-vn", "-c:a", "pcm_f32le", out], capture_output=True, text=True)
        if result.returncode != 0:
            raise ValueError(f"ffmpeg: {(result.stderr.strip().splitlines() or ['failed'])[-1]}")
        return _decode_soundfile(out)


_DECODERS = {"soundfile": _decode_soundfile, "pyav": _decode_pyav, "ffmpeg": _decode_ffmpeg}


@functools.lru_cache(maxsize=DECODED_CACHE_FILES)
def _decode_cached(path: str, decoder: str, mtime_ns: int, size: int) -> tuple[int, np.ndarray, int]:
    """(rate, mono float32 samples, channels) of a compressed file; keyed by its mtime and size, read-only."""
    try:
        data, rate = _DECODERS[decoder](path)
    except AudioError:
        raise
    except Exception as error:  # each decoder has its own exception classes
        raise _open_error(path, error) from None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0].copy()
    mono.setflags(write=False)
    return rate, mono, int(data.shape[1])


def _decoded(path: str) -> tuple[int, np.ndarray, int]:
    """(rate, mono samples, channels) of a compressed file (module docstring); AudioError naming the file."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise _open_error(path, error) from None
    if os.path.isdir(path) or not os.access(path, os.R_OK) or stat.st_size == 0:
        raise _open_error(path, OSError())
    return _decode_cached(path, _decoder(path), stat.st_mtime_ns, stat.st_size)


def _check_length(path: str, file_rate: int, num_frames: int, min_seconds: float) -> None:
    if num_frames <= 0:
        raise _error(path, "empty", "empty audio file (0 frames)")
    if num_frames < min_seconds * file_rate - 1e-6:  # tolerance: 0.1 s at 16 kHz is 1600 frames, not 1600.0000001
        raise _error(path, "too short", f"too short ({num_frames} frames = {num_frames / file_rate:.3f} s; "
                                        f"at least {min_seconds:g} s is needed)")


def audio_info(path: str | Path, min_seconds: float = MIN_AUDIO_SECONDS) -> tuple[int, int, int]:
    """Header of an audio file, without decoding it.

    Args:
        path: audio file.
        min_seconds: files shorter than this are refused (0: only empty ones).

    Returns:
        (sample_rate, num_frames, channels).

    Raises:
        AudioError: missing file, directory, unreadable (permissions, not audio, truncated header), empty, too
            short, or a WAV whose data is shorter than its header says.
    """
    path = str(path)
    if is_compressed(path):
        file_rate, audio, channels = _decoded(path)
        _check_length(path, file_rate, len(audio), min_seconds)
        return file_rate, len(audio), channels
    try:
        info = sf.info(path)
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError... depending on the case
        raise _open_error(path, error) from None
    file_rate, num_frames = int(info.samplerate), int(info.frames)
    try:
        declared = _wav_declared_frames(path)
    except OSError as error:  # removed or made unreadable since soundfile looked at it
        raise _open_error(path, error) from None
    if declared is not None and declared > num_frames:
        raise _error(path, "truncated", f"data shorter than its header (the header says {declared} frames, the "
                                        f"file holds {num_frames}: a truncated copy?)")
    _check_length(path, file_rate, num_frames, min_seconds)
    return file_rate, num_frames, int(info.channels)


def _ratio(file_rate: int, sample_rate: int) -> tuple[int, int]:
    """Upsampling / downsampling factors from file_rate to sample_rate, reduced by their gcd."""
    g = math.gcd(int(sample_rate), int(file_rate))
    return int(sample_rate) // g, int(file_rate) // g


def resample(x: np.ndarray, file_rate: int, sample_rate: int) -> np.ndarray:
    """(S,) audio at `file_rate` -> `sample_rate` with a polyphase filter (the one resampler of every read path)."""
    if file_rate == sample_rate:
        return x
    up, down = _ratio(file_rate, sample_rate)
    return resample_poly(x, up, down).astype(np.float32, copy=False)


def _read(path: str, start: int = 0, frames: int = -1, num_frames: int | None = None) -> np.ndarray:
    """Frames [start, start + frames) (all: frames = -1) as float32 mono (channels averaged), all finite.

    Args:
        num_frames: the header's frame count; a read that delivers fewer frames than the header promised for
            the requested range means the data is shorter than the header (a truncated file).
    """
    if is_compressed(path):  # decoded whole (cached), then sliced: exact frames whatever the codec
        samples = _decoded(path)[1]
        mono = samples[start:] if frames < 0 else samples[start:start + frames]
        return _finite(path, np.array(mono, dtype=np.float32))
    try:
        data = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)[0]
    except Exception as error:
        raise _open_error(path, error) from None
    wanted = (num_frames - start if frames < 0 else frames) if num_frames is not None else None
    if wanted is not None and len(data) < wanted:
        raise _error(path, "truncated", f"data shorter than its header (the header says {num_frames} frames; "
                                        f"frames {start + len(data)}..{start + wanted} could not be decoded)")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return _finite(path, mono)


def _finite(path: str, mono: np.ndarray) -> np.ndarray:
    if not np.isfinite(mono).all():  # one pass over the decoded samples; NaN would poison every embedding
        bad = int(np.count_nonzero(~np.isfinite(mono)))
        raise _error(path, "non-finite", f"{bad} of {len(mono)} decoded samples are NaN or Inf")
    return mono


def read_audio(path: str | Path, sample_rate: int, min_seconds: float = MIN_AUDIO_SECONDS) -> np.ndarray:
    """The whole file, mono (channels averaged), at `sample_rate`.

    Args:
        path: audio file.
        sample_rate: wanted rate in Hz; the file is resampled when its own rate differs.
        min_seconds: files shorter than this are refused.

    Returns:
        float32 array (S,), every sample finite.

    Raises:
        AudioError: see `audio_info`; also NaN/Inf samples, or data shorter than the header says.
    """
    path = str(path)
    file_rate, num_frames, _ = audio_info(path, min_seconds)
    audio = _read(path, num_frames=num_frames)
    return np.ascontiguousarray(resample(audio, file_rate, sample_rate), dtype=np.float32)


def crop_waveform(audio: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a decoded waveform, drawn as `read_crop` draws it from a file at the same rate: a uniform
    start where the crop fits; a shorter waveform repeated (wrap-around) from a random offset. (num_samples,)
    float32; shard streaming crops its in-memory utterances with it, so shard and file crops are equal."""
    if len(audio) < num_samples:
        return _repeat_from_random_offset(audio, num_samples, rng)
    start = int(rng.integers(len(audio) - num_samples + 1))
    return np.ascontiguousarray(audio[start : start + num_samples], dtype=np.float32)


def _repeat_from_random_offset(audio: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """`num_samples` of `audio` repeated end to end (wrap-around) from a random offset: no silent padding."""
    offset = int(rng.integers(len(audio)))
    return np.ascontiguousarray(audio[(offset + np.arange(num_samples)) % len(audio)], dtype=np.float32)


def read_crop(
    path: str | Path,
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    info: tuple[int, int, int] | None = None,
    min_seconds: float = MIN_AUDIO_SECONDS,
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
        min_seconds: files shorter than this are refused.

    Returns:
        float32 array (num_samples,), every sample finite (only the frames read are checked).

    Raises:
        AudioError: see `audio_info`; also NaN/Inf samples in the frames read, or data shorter than the header.
    """
    path = str(path)
    if num_samples <= 0:
        raise ValueError(f"read_crop: num_samples must be positive, got {num_samples}")
    if info is None:
        info = audio_info(path, min_seconds)
    file_rate, num_frames, _ = info
    _check_length(path, file_rate, num_frames, min_seconds)
    up, down = _ratio(file_rate, sample_rate)
    needed = -(-num_samples * down // up)  # file frames covering the crop: ceil(num_samples * down / up)

    if num_frames < needed:  # short file: the whole file, repeated from a random offset
        return _repeat_from_random_offset(resample(_read(path, num_frames=num_frames), file_rate, sample_rate),
                                          num_samples, rng)

    start = int(rng.integers(num_frames - needed + 1))
    if up == down:
        return np.ascontiguousarray(_read(path, start, needed, num_frames), dtype=np.float32)

    # Margin before the crop: a whole number of `down` periods, so that the crop starts exactly on an output
    # sample of the resampled excerpt (offset k * up) and equals the same slice of the fully resampled file.
    margin = _FILTER_HALF_WIDTH * max(up, down) // up + 2
    periods = min(-(-margin // down), start // down)
    begin = start - periods * down
    end = min(num_frames, start + needed + margin)
    audio = resample(_read(path, begin, end - begin, num_frames), file_rate, sample_rate)
    offset = periods * up
    return np.ascontiguousarray(audio[offset : offset + num_samples], dtype=np.float32)


def check_audio_files(paths: Sequence[str | Path], min_seconds: float = MIN_AUDIO_SECONDS, workers: int = 8,
                      listed: int = 10) -> None:
    """Check the headers of many files before any is decoded, and name every unusable one at once.

    Args:
        paths: audio files.
        min_seconds: files shorter than this are refused.
        workers: threads reading headers (I/O-bound).
        listed: most files named in the error.

    Raises:
        AudioError: the one bad file's own error, or "K of N audio files are unusable:" and one line per file.
    """
    def problem(path) -> AudioError | None:
        try:
            audio_info(path, min_seconds)
        except AudioError as error:
            return error
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        errors = [error for error in pool.map(problem, paths) if error is not None]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        lines = [f"  {error}" for error in errors[:listed]]
        if len(errors) > listed:
            lines.append(f"  ... and {len(errors) - listed} more")
        raise AudioError(f"{len(errors)} of {len(paths)} audio files are unusable:\n" + "\n".join(lines))
