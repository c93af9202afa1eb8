"""Baselines that need no training, to put a trained encoder's EER in context.

The spectral-statistics baseline scores a trial by the cosine similarity of the two files' mean log-mel spectra.
It sees the long-term spectrum only (voice timbre, but also the channel), so on the demo corpus it shows how far
the speakers can be told apart without learning anything, and how much the session channels mislead such cues.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torchaudio

from sslsv.audio.io import read_audio
from sslsv.data.trials import read_trials
from sslsv.evaluation.metrics import compute_eer

WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
MIN_MEL_HZ = 20.0


def _mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular HTK-mel filters, unnormalised, from MIN_MEL_HZ to Nyquist."""
    filters = torchaudio.functional.melscale_fbanks(
        n_freqs=n_fft // 2 + 1, f_min=MIN_MEL_HZ, f_max=sample_rate / 2, n_mels=n_mels, sample_rate=sample_rate,
        norm=None, mel_scale="htk",
    )
    return filters.numpy().astype(np.float64).T


def mean_log_mel(path: str | Path, n_mels: int = 40, sample_rate: int = 16000) -> np.ndarray:
    """Mean over frames of the log-mel spectrum of one file (n_mels,).

    Frames are 25 ms symmetric Hann windows every 10 ms, without centring or padding; the file is read mono at
    `sample_rate` (read_audio refuses files shorter than sslsv.audio.io.MIN_AUDIO_SECONDS, several windows long).

    Raises:
        AudioError: an unusable file (missing, unreadable, too short, NaN samples ...), named.
    """
    x = read_audio(path, sample_rate)
    n_fft, hop = int(WINDOW_SECONDS * sample_rate), int(HOP_SECONDS * sample_rate)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log(power @ _mel_filterbank(n_fft, n_mels, sample_rate).T + 1e-8).mean(axis=0)


def spectral_baseline_eer(out_dir: str | Path = "data/demo", trials: str = "trials.txt") -> float:
    """EER (%) on <out_dir>/<trials> of cosine scoring between per-file mean log-mel spectra (no learning).

    Utterance paths of the trial list are relative to <out_dir>/wav (the demo corpus layout).
    """
    out_dir = Path(out_dir)
    trial_list = read_trials(out_dir / trials)
    embeddings = {}
    for utterance in trial_list.utterances():
        v = mean_log_mel(out_dir / "wav" / utterance)
        embeddings[utterance] = v / (np.linalg.norm(v) + 1e-12)
    scores = np.array([float(embeddings[a] @ embeddings[b]) for a, b in zip(trial_list.enroll, trial_list.test)])
    eer, _ = compute_eer(scores, trial_list.labels)
    return 100 * eer
