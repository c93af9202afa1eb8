"""Audio inputs a user may hand to sslsv, good and bad, for tests of every read path (reused end to end).

`make_bad_inputs(folder)` writes them and says which must load. The manifest- and trial-level cases of the
reliability check (missing column, duplicate rows, malformed trials, a trial naming a missing file) are not files
and are built by the tests that need them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
SECONDS = 1.0  # long enough for the default dataset.min_seconds (0.5 s)

# Expected AudioError.kind of every case that must not load.
REFUSED_KIND = {
    "missing": "missing",
    "empty": "empty",
    "zero_frames": "empty",
    "text_as_wav": "unreadable",
    "truncated_header": "unreadable",
    "data_shorter_than_header": "truncated",
    "nan_samples": "non-finite",
    "inf_samples": "non-finite",
    "short_0.05s": "too short",
    "one_sample": "too short",
    "directory": "directory",
    "unreadable": "permission denied",
}


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def _every_50th(value: float) -> np.ndarray:
    """A tone with `value` at every 50th sample: any crop longer than 50 samples contains one."""
    x = _tone(SECONDS, SR)
    x[::50] = value
    return x


def make_bad_inputs(folder: str | Path) -> dict[str, tuple[Path, bool]]:
    """Write the cases into `folder` (created).

    Returns:
        name -> (absolute path, should_load). Files that load: PCM16, stereo, 8 kHz, 44.1 kHz, 24-bit, float,
        FLAC, a path with spaces and non-ASCII letters, and silence (valid audio; `check-manifest --deep` warns).
        Refused ones are listed in REFUSED_KIND with the AudioError.kind they raise. "unreadable" (mode 000) is
        only made when not running as root: root reads any file.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, bool]] = {}

    def write(name: str, filename: str, data: np.ndarray, rate: int = SR, subtype: str | None = None) -> Path:
        path = folder / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, data, rate, subtype=subtype)
        cases[name] = (path, name not in REFUSED_KIND)
        return path

    def raw(name: str, filename: str, content: bytes) -> Path:
        path = folder / filename
        path.write_bytes(content)
        cases[name] = (path, False)
        return path

    good = write("pcm16", "pcm16.wav", _tone(SECONDS, SR), subtype="PCM_16")
    write("stereo", "stereo.wav", _tone(SECONDS, SR, channels=2), subtype="PCM_16")
    write("rate_8k", "rate_8k.wav", _tone(SECONDS, 8000), rate=8000, subtype="PCM_16")
    write("rate_44k", "rate_44k.wav", _tone(SECONDS, 44100), rate=44100, subtype="PCM_16")
    write("pcm24", "pcm24.wav", _tone(SECONDS, SR), subtype="PCM_24")
    write("float32", "float32.wav", _tone(SECONDS, SR), subtype="FLOAT")
    write("flac", "flac.flac", _tone(SECONDS, SR), subtype="PCM_16")
    write("space_unicode", "dir with space/énoncé ünïcødé 話者.wav", _tone(SECONDS, SR), subtype="PCM_16")
    write("silence", "silence.wav", np.zeros(int(SECONDS * SR), dtype=np.float32), subtype="PCM_16")

    cases["missing"] = (folder / "missing.wav", False)
    raw("empty", "empty.wav", b"")
    write("zero_frames", "zero_frames.wav", np.zeros(0, dtype=np.float32), subtype="PCM_16")
    raw("text_as_wav", "text_as_wav.wav", b"File,Speaker\nthis is a CSV saved as .wav\n")
    content = good.read_bytes()
    raw("truncated_header", "truncated_header.wav", content[:30])
    raw("data_shorter_than_header", "data_shorter_than_header.wav", content[: len(content) // 2])
    write("nan_samples", "nan_samples.wav", _every_50th(np.nan), subtype="FLOAT")
    write("inf_samples", "inf_samples.wav", _every_50th(np.inf), subtype="FLOAT")
    write("short_0.05s", "short_0.05s.wav", _tone(0.05, SR), subtype="PCM_16")
    write("one_sample", "one_sample.wav", np.full(1, 0.1, dtype=np.float32), subtype="PCM_16")
    (folder / "directory.wav").mkdir(exist_ok=True)
    cases["directory"] = (folder / "directory.wav", False)
    if os.geteuid() != 0:
        unreadable = write("unreadable", "unreadable.wav", _tone(SECONDS, SR), subtype="PCM_16")
        unreadable.chmod(0)
    return cases
