"""The spectral-statistics baseline on small synthetic files (no espeak-ng needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from sslsv.audio.io import AudioError
from sslsv.evaluation.baselines import _mel_filterbank, mean_log_mel, spectral_baseline_eer

RATE = 16000


def _write(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.5 * x / np.abs(x).max()).astype(np.float32), RATE, subtype="PCM_16")


def test_filterbank_is_triangular_and_ordered():
    filters = _mel_filterbank(400, 40, RATE)
    assert filters.shape == (40, 201) and filters.min() >= 0
    assert np.all(filters.max(axis=1) > 0.5) and np.all(filters.max(axis=1) <= 1 + 1e-6)
    peaks = filters.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > peaks[0]
    assert filters[:, 0].max() == 0  # nothing below the 20 Hz lower edge


def test_mean_log_mel_peaks_at_a_tone(tmp_path):
    t = np.arange(RATE) / RATE
    _write(tmp_path / "tone.wav", np.sin(2 * np.pi * 1000 * t))
    spectrum = mean_log_mel(tmp_path / "tone.wav")
    assert spectrum.shape == (40,)
    band = int(np.argmax(spectrum))
    assert _mel_filterbank(400, 40, RATE)[band, 1000 // 40] > 0  # the loudest band covers 1 kHz (bins are 40 Hz)


def test_mean_log_mel_refuses_a_too_short_file(tmp_path):
    _write(tmp_path / "short.wav", np.random.default_rng(0).standard_normal(100))
    with pytest.raises(AudioError, match="short.wav: too short"):
        mean_log_mel(tmp_path / "short.wav")


def _coloured(rng: np.random.Generator, low: float, high: float, seconds: float = 1.0) -> np.ndarray:
    sos = signal.butter(4, [low, high], "bandpass", fs=RATE, output="sos")
    return signal.sosfilt(sos, rng.standard_normal(int(seconds * RATE)))


def test_spectral_baseline_separates_distinct_spectra(tmp_path):
    # Three "speakers" with non-overlapping bands: the mean spectrum alone tells them apart perfectly.
    rng = np.random.default_rng(0)
    bands = {"a": (200, 600), "b": (1500, 2500), "c": (4000, 6000)}
    for speaker, (low, high) in bands.items():
        for utt in range(2):
            _write(tmp_path / "wav" / speaker / f"{utt}.wav", _coloured(rng, low, high))
    files = [f"{s}/{u}.wav" for s in bands for u in range(2)]
    lines = [f"{int(a[0] == b[0])} {a} {b}" for i, a in enumerate(files) for b in files[i + 1 :]]
    (tmp_path / "trials.txt").write_text("\n".join(lines) + "\n")
    assert spectral_baseline_eer(tmp_path) == pytest.approx(0.0)


def test_spectral_baseline_is_at_chance_when_labels_ignore_the_spectra(tmp_path):
    # Every file has the same spectrum: target and non-target scores overlap, so the EER is far from 0.
    rng = np.random.default_rng(1)
    files = [f"s{k // 2}/{k % 2}.wav" for k in range(8)]
    for file in files:
        _write(tmp_path / "wav" / file, _coloured(rng, 300, 3000))
    lines = [f"{int(a[:2] == b[:2])} {a} {b}" for i, a in enumerate(files) for b in files[i + 1 :]]
    (tmp_path / "val_trials.txt").write_text("\n".join(lines) + "\n")
    assert spectral_baseline_eer(tmp_path, trials="val_trials.txt") > 10.0
