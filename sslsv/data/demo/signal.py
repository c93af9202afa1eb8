"""Signal processing of the demo corpus at 16 kHz: vocal-tract warp, trimming, voice quality, noise, RIRs, channels.

Everything takes its randomness from the generator passed in, so the output is a function of the seed.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import signal

from sslsv.data.demo.espeak import ESPEAK_RATE

SAMPLE_RATE = 16000


def resample_warp(x: np.ndarray, formant_scale: float) -> np.ndarray:
    """ESPEAK_RATE -> SAMPLE_RATE, reading the input as if sampled at ESPEAK_RATE * formant_scale.

    Playing the synthesis back at another rate scales every formant by formant_scale: a vocal-tract length change.
    """
    ratio = Fraction(SAMPLE_RATE / (ESPEAK_RATE * formant_scale)).limit_denominator(160)
    return signal.resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float64)


def trim(x: np.ndarray, threshold_db: float = -40.0, pad: int = 1600) -> np.ndarray:
    """Cut the silence before and after the 10 ms frames within threshold_db of the loudest, keeping `pad` samples."""
    if len(x) == 0:
        return x
    frame = 160
    n = len(x) // frame
    if n == 0:
        return x
    energy = 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(energy > energy.max() + threshold_db)
    if len(active) == 0:
        return x
    start = max(0, active[0] * frame - pad)
    end = min(len(x), (active[-1] + 1) * frame + pad)
    return x[start:end]


def smooth_noise(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """Zero-mean, unit-std noise low-passed at about rate_hz."""
    step = max(1, int(SAMPLE_RATE / max(rate_hz, 1.0)))
    knots = rng.standard_normal(n // step + 3)
    y = np.interp(np.arange(n) / step, np.arange(len(knots)), knots)
    return y / (y.std() + 1e-9)


def shelf(x: np.ndarray, tilt_db: float) -> np.ndarray:
    """First-order tilt: gain 0 dB at low frequencies, about tilt_db near Nyquist (pre-emphasis style)."""
    g = 10 ** (tilt_db / 20)
    if g >= 1:
        # y = x + k * (x - x[n-1]); at Nyquist the gain is 1 + 2k.
        k = (g - 1) / 2
        return signal.lfilter([1 + k, -k], [1.0], x)
    a = (1 - g) / (1 + g)  # one-pole low-pass mix: DC gain 1, Nyquist gain g
    return signal.lfilter([1 - a], [1.0, -a], x)


def peaking(freq: float, gain_db: float, q: float) -> np.ndarray:
    """RBJ peaking biquad as one second-order section."""
    a_gain = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq / SAMPLE_RATE
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a_gain, -2 * np.cos(w0), 1 - alpha * a_gain])
    a = np.array([1 + alpha / a_gain, -2 * np.cos(w0), 1 - alpha / a_gain])
    return np.concatenate([b / a[0], a / a[0]])[None, :]


def voice_quality(x: np.ndarray, speaker: dict, rng: np.random.Generator) -> np.ndarray:
    """The speaker's jitter, shimmer, spectral tilt, resonances and breathiness applied to clean speech."""
    n = len(x)
    if n == 0:
        return x
    # Jitter: a small random time-warp (a few tenths of a millisecond, modulated at 20-80 Hz).
    if speaker["jitter_ms"] > 0:
        delay = speaker["jitter_ms"] * 1e-3 * SAMPLE_RATE * smooth_noise(rng, n, 60.0)
        x = np.interp(np.arange(n) + delay, np.arange(n), x)
    # Shimmer / roughness: a random amplitude modulation.
    if speaker["shimmer"] > 0:
        x = x * np.clip(1 + speaker["shimmer"] * smooth_noise(rng, n, 40.0), 0.1, None)
    x = shelf(x, speaker["tilt_db"])
    if speaker.get("resonances"):
        x = signal.sosfilt(np.concatenate([peaking(*r) for r in speaker["resonances"]]), x)
    # Breathiness: high-passed noise following the speech envelope (so only where there is voice).
    if speaker["breathiness"] > 0:
        envelope = np.sqrt(signal.lfilter([0.01], [1, -0.99], x**2).clip(0))
        sos = signal.butter(2, speaker["breath_cutoff_hz"], "highpass", fs=SAMPLE_RATE, output="sos")
        noise = signal.sosfilt(sos, rng.standard_normal(n))
        x = x + speaker["breathiness"] * 2.0 * envelope * noise
    return x


def coloured_noise(rng: np.random.Generator, n: int, beta: float, band: tuple[float, float] | None) -> np.ndarray:
    """Unit-std noise with a power spectrum ~ 1 / f^beta, zero outside `band` (Hz) when one is given."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    shape = 1 / np.maximum(f, 20.0) ** (beta / 2)
    if band is not None:
        shape = shape * ((f >= band[0]) & (f <= band[1]))
    y = np.fft.irfft(spectrum * shape, n)
    return y / (y.std() + 1e-9)


def rir(rng: np.random.Generator, rt60: float, drr_db: float) -> np.ndarray:
    """Exponentially decaying noise tail after a direct path and a few early reflections, peak-normalised."""
    length = int(SAMPLE_RATE * min(1.2, rt60 * 1.1 + 0.02))
    t = np.arange(length) / SAMPLE_RATE
    onset = int(rng.integers(8, 48))
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    tail[:onset] = 0
    tail = signal.lfilter([1.0], [1.0, -float(rng.uniform(0.0, 0.7))], tail)  # air absorption: damp the highs
    h = np.zeros(length)
    h[0] = 1.0
    for _ in range(int(rng.integers(3, 8))):
        h[int(rng.integers(onset, max(onset + 1, int(0.03 * SAMPLE_RATE))))] += float(rng.uniform(-0.6, 0.6))
    tail_energy = np.sum(tail**2) + 1e-12
    h = h + tail * np.sqrt(np.sum(h**2) / tail_energy * 10 ** (-drr_db / 10))
    return h / np.abs(h).max()


def channel_filters(channel: dict) -> np.ndarray:
    """The session's EQ (low-cut, high-cut, peaking filters) as second-order sections."""
    sos = [
        signal.butter(channel["low_order"], channel["low_cut"], "highpass", fs=SAMPLE_RATE, output="sos"),
        signal.butter(channel["high_order"], min(channel["high_cut"], 7900), "lowpass", fs=SAMPLE_RATE, output="sos"),
    ]
    sos += [peaking(*peak) for peak in channel["peaks"]]
    return np.concatenate(sos, axis=0)


def _background_noise(rng: np.random.Generator, n: int, channel: dict) -> np.ndarray:
    """Unit-std coloured noise of the session, with mains hum when the session has it."""
    noise = coloured_noise(rng, n, channel["noise_beta"], channel["noise_band"])
    if channel["hum"]:
        t = np.arange(n) / SAMPLE_RATE
        hum = sum(np.sin(2 * np.pi * channel["hum"] * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3, 5))
        noise = noise + 0.7 * hum / (hum.std() + 1e-9)
        noise /= noise.std() + 1e-9
    return noise


def apply_channel(
    x: np.ndarray, channel: dict, room: np.ndarray | None, sos: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Reverberation (`room`, an RIR or None), background noise, EQ `sos`, tilt, gain and noise floor, in that order."""
    n = len(x)
    if room is not None:
        x = signal.fftconvolve(x, room)[:n]
    speech_power = np.mean(x**2) + 1e-12
    noise = _background_noise(rng, n, channel)
    snr = channel["snr_db"] + rng.uniform(-2, 2)  # the session's SNR, varied a little per utterance
    x = x + noise * np.sqrt(speech_power * 10 ** (-snr / 10))
    x = signal.sosfilt(sos, x)
    x = shelf(x, channel["tilt_db"])
    x = x / (np.abs(x).max() + 1e-9) * 10 ** ((channel["gain_db"] + rng.uniform(-2, 2)) / 20)
    x = x + 10 ** (channel["floor_db"] / 20) * coloured_noise(rng, n, 0.3, None)
    return np.clip(x, -0.99, 0.99)


def pcm16(x: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16, as written to the wav files."""
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
