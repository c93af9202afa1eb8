"""A deterministic, seedable synthetic speaker corpus in VoxCeleb layout, made with the espeak-ng engine.

Speakers are espeak-ng voices (base language/accent + voice variant + pitch, pitch range and speaking rate)
followed by a voice-quality transform done here in signal processing: a vocal-tract length warp (the 22050 Hz
synthesis is resampled as if it had been recorded at 22050 * alpha Hz, which scales every formant by alpha),
a spectral tilt, roughness (jitter as a small random time-warp, shimmer as a random amplitude modulation) and
breathiness (high-passed noise following the voiced-speech envelope). Each session (recording) has its own
channel: reverberation (synthetic exponentially decaying noise RIR), coloured background noise at a random SNR,
EQ (random low-cut, high-cut and peaking filters) and gain; every utterance of a session shares it.

Everything is drawn from numpy generators seeded by (seed, kind, indices), so the same seed gives byte-identical
files regardless of the number of workers. espeak-ng is not thread safe: parallel builds use processes, each with
its own engine.

    python -m sslsv.data.demo --out data/demo
"""
from __future__ import annotations

import argparse
import ctypes
import csv
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------------

WORDS = """
the a an and or but if then so because when while after before about above across again against all almost also
always among another any around away back be become began being below between both bring brought build built call
came can car carry case change child children city close cold come could country course cut day did different do
does done door down draw during each early earth east eat end enough even evening every example eye face fact fall
family far farm fast father feel few field find fire first fish five follow food foot for form found four free friend
from full game gave get girl give go good got great green ground group grow had half hand happen hard has have he
head hear heard help her here high hill him his hold home horse hot house how hundred idea important in inside into
is it its just keep kind king knew know land large last late learn leave left letter life light like line list
little live long look made make man many map mark may me mean men might mile mind money more morning most mother
mountain move much music must my name near need never new next night no north not nothing now number of off often
old on once one only open other our out over own page paper part past people picture place plant play point port
question quick quiet rain ran read ready real red remember rest right river road rock room round run said same saw
say school sea second see seem sentence set several she ship short should show side simple since sing sit six size
sleep small snow so some something sometimes song soon sound south space speak special stand star start state stay
step still stone stop story street strong study such summer sun sure table take talk teacher tell ten than that their
them there these they thing think this those though thought three through time to today together told too took top
toward town tree true try turn two under until up upon us use very voice walk want warm was watch water way we
week well went were west what where which while white who whole why wind window winter with without woman wood word
work world would write year yellow yes yet you young your
""".split()

# Base voices (language/accent) for the corpus speakers; all read English words, the non-English ones with an accent.
SPEAKER_LANGUAGES = [
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
    "nl", "de", "af", "sv", "da", "nb",
]
# Voice variants (espeak-ng-data/voices/!v) that sound like people, for the corpus speakers.
SPEAKER_VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "adam", "Alex", "Andy", "Annie",
    "aunty", "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "gustave", "iven", "iven2", "john",
    "linda", "max", "michel", "norbert", "paul", "quincy", "rob", "shelby", "steph", "travis", "victor", "zac",
]
# Voices used only by the MUSAN-like "speech" set: languages and variants that no corpus speaker uses.
EXTRA_LANGUAGES = ["fr", "es", "it", "pt", "ru", "pl", "fi", "hu", "cs", "ro", "tr", "id"]
EXTRA_VARIANTS = ["klatt", "klatt2", "klatt3", "klatt4", "grandma", "grandpa", "croak", "m8", "Lee", "Mario"]

ROLES = {"train": (0, 1), "val": (1, 8001), "test": (2, 10001)}  # role -> (code for the seeds, first id number)


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DemoCorpusConfig:
    train_speakers: int = 40
    val_speakers: int = 8
    test_speakers: int = 20
    sessions_per_speaker: int = 3
    utterances_per_session: int = 3
    seed: int = 0
    workers: int = 2
    min_seconds: float = 1.5  # utterance length bounds (speech is cut at max_seconds)
    max_seconds: float = 6.0
    mean_words: float = 3.0  # words per sentence ~ 2 + Poisson(mean_words - 2)
    mean_extra_seconds: float = 0.8  # target length ~ min_seconds + Exponential(mean_extra_seconds), cut at max
    snr_db: tuple[float, float] = (10.0, 35.0)  # background noise SNR range per session
    rt60: tuple[float, float] = (0.15, 0.8)  # reverberation time range per session
    reverb_probability: float = 0.8
    channel_strength: float = 0.3  # scales the EQ peak gains, the channel tilt and the gain spread
    max_trials: int = 4000  # per trial list (half targets, half non-targets)
    musan_noise: int = 6
    musan_music: int = 4
    musan_speech: int = 4
    musan_seconds: float = 6.0
    rirs: int = 8

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, values: dict) -> "DemoCorpusConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


def _content_key(config: DemoCorpusConfig) -> dict:
    """The part of the config that decides the files (workers does not)."""
    key = config.to_json()
    key.pop("workers")
    return key


# ---------------------------------------------------------------------------------------------------------------------
# espeak-ng through ctypes (one engine per process)
# ---------------------------------------------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    pass


class _Espeak:
    """The espeak-ng shared library of the `espeakng-loader` package, in synchronous (retrieval) mode."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as error:  # pragma: no cover
            raise EspeakError("the demo corpus needs the PyPI package espeakng-loader (pip install espeakng-loader)") from error
        self.lib = lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        # espeak-ng >= 1.52: seeds the generator behind breathy voicing (otherwise seeded from the clock).
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise EspeakError(f"espeak_Initialize returned {rate} (expected the sample rate {ESPEAK_RATE})")
        self._chunks: list[np.ndarray] = []

        def collect(wav, count, events):
            if count > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: the library holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int = 1) -> np.ndarray:
        """float32 samples at 22050 Hz in [-1, 1]."""
        if self._set_seed is not None:
            self._set_seed(int(seed))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self.lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
        data = text.encode("utf-8")
        self._chunks = []
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise EspeakError(f"espeak_Synth failed with status {status}")
        if not self._chunks:
            return np.zeros(0, np.float32)
        return (np.concatenate(self._chunks).astype(np.float32) / 32768.0)


_ENGINE: _Espeak | None = None


def _engine() -> _Espeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


# ---------------------------------------------------------------------------------------------------------------------
# Random draws
# ---------------------------------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]])


def _speaker_params(seed: int, role: str, index: int) -> dict:
    code, first = ROLES[role]
    rng = _rng(seed, 1, code, index)
    return {
        "id": f"id{first + index:05d}",
        "role": role,
        "language": str(rng.choice(SPEAKER_LANGUAGES)),
        "variant": str(rng.choice(SPEAKER_VARIANTS)),
        "pitch": int(rng.integers(15, 86)),  # espeak-ng 0-99
        "pitch_range": int(rng.integers(20, 91)),  # espeak-ng 0-99
        "rate": int(rng.integers(130, 211)),  # words per minute
        "formant_scale": round(float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))), 4),
        "tilt_db": round(float(rng.uniform(-9.0, 9.0)), 2),  # first-order shelf, dB at high frequencies
        "jitter_ms": round(float(rng.uniform(0.0, 0.25)), 3),
        "shimmer": round(float(rng.uniform(0.0, 0.35)), 3),
        "breathiness": round(float(rng.uniform(0.0, 0.25)), 3),
        "breath_cutoff_hz": round(float(rng.uniform(1200, 3500)), 1),
        # Individual resonances/anti-resonances of the vocal tract (frequency Hz, gain dB, Q).
        "resonances": [
            [round(float(np.exp(rng.uniform(np.log(250), np.log(4500)))), 1), round(float(rng.uniform(-8, 8)), 2),
             round(float(rng.uniform(0.8, 2.5)), 2)]
            for _ in range(3)
        ],
    }


def _channel_params(seed: int, code: int, index: int, session: int, config: DemoCorpusConfig) -> dict:
    rng = _rng(seed, 2, code, index, session)
    strength = config.channel_strength
    peaks = [
        (float(np.exp(rng.uniform(np.log(150), np.log(6500)))), strength * float(rng.uniform(-10, 10)), float(rng.uniform(0.5, 3.0)))
        for _ in range(int(rng.integers(2, 5)))
    ]
    return {
        "low_cut": float(np.exp(rng.uniform(np.log(40), np.log(40 + strength * 300)))),
        "low_order": int(rng.integers(1, 3)),
        "high_cut": 7800.0 - strength * float(rng.uniform(0, 3800)),
        "high_order": int(rng.integers(2, 5)),
        "floor_db": float(rng.uniform(-72, -58)),  # microphone/converter self-noise after the EQ, dB re full scale
        "peaks": peaks,
        "tilt_db": strength * float(rng.uniform(-6, 6)),
        "snr_db": float(rng.uniform(*config.snr_db)),
        "noise_beta": float(rng.uniform(-0.5, 2.0)),  # noise power spectrum ~ 1 / f^beta
        "noise_band": (float(rng.uniform(50, 600)), float(rng.uniform(2500, 7900))),
        "hum": float(rng.choice([0.0, 50.0, 60.0], p=[0.6, 0.2, 0.2])),
        "rt60": float(rng.uniform(*config.rt60)) if rng.random() < config.reverb_probability else 0.0,
        "drr_db": float(rng.uniform(-3, 12)),
        "gain_db": -4.0 - strength * float(rng.uniform(0, 14)),
        "rir_seed": int(rng.integers(0, 2**31)),
    }


def _sentence(rng: np.random.Generator, mean_words: float) -> str:
    count = 2 + int(rng.poisson(max(mean_words - 2, 0.5)))
    return " ".join(str(w) for w in rng.choice(WORDS, size=count))


# ---------------------------------------------------------------------------------------------------------------------
# Signal processing
# ---------------------------------------------------------------------------------------------------------------------


def _resample_warp(x: np.ndarray, formant_scale: float) -> np.ndarray:
    """22050 Hz -> 16000 Hz, reading the input as if sampled at 22050 * formant_scale (formants x formant_scale)."""
    ratio = Fraction(SAMPLE_RATE / (ESPEAK_RATE * formant_scale)).limit_denominator(160)
    return signal.resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float64)


def _trim(x: np.ndarray, threshold_db: float = -40.0, pad: int = 1600) -> np.ndarray:
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


def _smooth_noise(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """Zero-mean, unit-std noise low-passed at about rate_hz."""
    step = max(1, int(SAMPLE_RATE / max(rate_hz, 1.0)))
    knots = rng.standard_normal(n // step + 3)
    y = np.interp(np.arange(n) / step, np.arange(len(knots)), knots)
    return y / (y.std() + 1e-9)


def _shelf(x: np.ndarray, tilt_db: float) -> np.ndarray:
    """First-order tilt: gain 0 dB at low frequencies, about tilt_db near Nyquist (pre-emphasis style)."""
    g = 10 ** (tilt_db / 20)
    # y = x + k * (x - x[n-1]) ; at Nyquist gain = 1 + 2k
    k = (g - 1) / 2 if g >= 1 else 0.0
    if g >= 1:
        return signal.lfilter([1 + k, -k], [1.0], x)
    a = (1 - g) / (1 + g)  # one-pole low-pass mix: DC gain 1, Nyquist gain g
    return signal.lfilter([1 - a], [1.0, -a], x) * 1.0


def _voice_quality(x: np.ndarray, speaker: dict, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    if n == 0:
        return x
    # Jitter: a small random time-warp (a few tenths of a millisecond, modulated at 20-80 Hz).
    if speaker["jitter_ms"] > 0:
        delay = speaker["jitter_ms"] * 1e-3 * SAMPLE_RATE * _smooth_noise(rng, n, 60.0)
        x = np.interp(np.arange(n) + delay, np.arange(n), x)
    # Shimmer / roughness: a random amplitude modulation.
    if speaker["shimmer"] > 0:
        x = x * np.clip(1 + speaker["shimmer"] * _smooth_noise(rng, n, 40.0), 0.1, None)
    x = _shelf(x, speaker["tilt_db"])
    if speaker.get("resonances"):
        x = signal.sosfilt(np.concatenate([_peaking(*r) for r in speaker["resonances"]]), x)
    # Breathiness: high-passed noise following the speech envelope (so only where there is voice).
    if speaker["breathiness"] > 0:
        envelope = np.sqrt(signal.lfilter([0.01], [1, -0.99], x**2).clip(0))
        sos = signal.butter(2, speaker["breath_cutoff_hz"], "highpass", fs=SAMPLE_RATE, output="sos")
        noise = signal.sosfilt(sos, rng.standard_normal(n))
        x = x + speaker["breathiness"] * 2.0 * envelope * noise
    return x


def _coloured_noise(rng: np.random.Generator, n: int, beta: float, band: tuple[float, float] | None) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    shape = 1 / np.maximum(f, 20.0) ** (beta / 2)
    if band is not None:
        shape = shape * ((f >= band[0]) & (f <= band[1]))
    y = np.fft.irfft(spectrum * shape, n)
    return y / (y.std() + 1e-9)


def _rir(rng: np.random.Generator, rt60: float, drr_db: float) -> np.ndarray:
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


def _channel_filters(channel: dict) -> np.ndarray:
    sos = [
        signal.butter(channel["low_order"], channel["low_cut"], "highpass", fs=SAMPLE_RATE, output="sos"),
        signal.butter(channel["high_order"], min(channel["high_cut"], 7900), "lowpass", fs=SAMPLE_RATE, output="sos"),
    ]
    sos += [_peaking(*peak) for peak in channel["peaks"]]
    return np.concatenate(sos, axis=0)


def _peaking(freq: float, gain_db: float, q: float) -> np.ndarray:
    """RBJ peaking biquad as one second-order section."""
    a_gain = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq / SAMPLE_RATE
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a_gain, -2 * np.cos(w0), 1 - alpha * a_gain])
    a = np.array([1 + alpha / a_gain, -2 * np.cos(w0), 1 - alpha / a_gain])
    return np.concatenate([b / a[0], a / a[0]])[None, :]


def _apply_channel(x: np.ndarray, channel: dict, rir: np.ndarray | None, sos: np.ndarray, rng: np.random.Generator):
    n = len(x)
    if rir is not None:
        x = signal.fftconvolve(x, rir)[:n]
    speech_power = np.mean(x**2) + 1e-12
    noise = _coloured_noise(rng, n, channel["noise_beta"], channel["noise_band"])
    if channel["hum"]:
        t = np.arange(n) / SAMPLE_RATE
        hum = sum(np.sin(2 * np.pi * channel["hum"] * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3, 5))
        noise = noise + 0.7 * hum / (hum.std() + 1e-9)
        noise /= noise.std() + 1e-9
    snr = channel["snr_db"] + rng.uniform(-2, 2)
    x = x + noise * np.sqrt(speech_power * 10 ** (-snr / 10))
    x = signal.sosfilt(sos, x)
    x = _shelf(x, channel["tilt_db"])
    x = x / (np.abs(x).max() + 1e-9) * 10 ** ((channel["gain_db"] + rng.uniform(-2, 2)) / 20)
    x = x + 10 ** (channel["floor_db"] / 20) * _coloured_noise(rng, n, 0.3, None)
    return np.clip(x, -0.99, 0.99)


def _pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------------------------------
# Work units (run in worker processes)
# ---------------------------------------------------------------------------------------------------------------------


def _speak(speaker: dict, rng: np.random.Generator, config: DemoCorpusConfig, voice: str | None = None) -> np.ndarray:
    """Clean speech of one utterance at 16 kHz, between min_seconds and max_seconds."""
    engine = _engine()
    voice = voice or f"{speaker['language']}+{speaker['variant']}"
    pieces, total = [], 0
    target = min(config.max_seconds, config.min_seconds + rng.exponential(config.mean_extra_seconds))
    for _ in range(8):
        text = _sentence(rng, config.mean_words)
        raw = engine.synth(text, voice, speaker["rate"], speaker["pitch"], speaker["pitch_range"], int(rng.integers(1, 2**31)))
        piece = _trim(_resample_warp(raw, speaker["formant_scale"]))
        if len(piece) == 0:
            continue
        if pieces:
            pieces.append(np.zeros(int(rng.uniform(0.1, 0.35) * SAMPLE_RATE)))
        pieces.append(piece)
        total = sum(len(p) for p in pieces)
        if total >= target * SAMPLE_RATE:
            break
    if not pieces:
        raise EspeakError(f"espeak-ng produced no audio for voice {voice}")
    x = np.concatenate(pieces)
    limit = int(config.max_seconds * SAMPLE_RATE)
    if len(x) > limit:
        x = x[:limit]
        fade = int(0.05 * SAMPLE_RATE)
        x[-fade:] *= np.linspace(1, 0, fade)
    if len(x) < config.min_seconds * SAMPLE_RATE:
        x = np.concatenate([x, np.zeros(int(config.min_seconds * SAMPLE_RATE) - len(x))])
    return x / (np.abs(x).max() + 1e-9) * 0.5


def _build_session(task: tuple) -> list[tuple[str, str, str, float]]:
    out_dir, config_json, speaker, code, index, session = task
    config = DemoCorpusConfig.from_json(config_json)
    channel = _channel_params(config.seed, code, index, session, config)
    rir = _rir(_rng(channel["rir_seed"]), channel["rt60"], channel["drr_db"]) if channel["rt60"] > 0 else None
    sos = _channel_filters(channel)
    session_name = f"ses{session + 1:02d}"
    folder = Path(out_dir) / "wav" / speaker["id"] / session_name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for utt in range(config.utterances_per_session):
        rng = _rng(config.seed, 3, code, index, session, utt)
        clean = _voice_quality(_speak(speaker, rng, config), speaker, rng)
        y = _pcm16(_apply_channel(clean, channel, rir, sos, rng))
        name = f"{utt + 1:05d}.wav"
        sf.write(folder / name, y, SAMPLE_RATE, subtype="PCM_16")
        rows.append((f"{speaker['id']}/{session_name}/{name}", speaker["id"], session_name, len(y) / SAMPLE_RATE))
    return rows


def _build_augmentation(task: tuple) -> str:
    out_dir, config_json, kind, k = task
    config = DemoCorpusConfig.from_json(config_json)
    rng = _rng(config.seed, 5, {"noise": 0, "music": 1, "speech": 2, "rir": 3}[kind], k)
    n = int(config.musan_seconds * SAMPLE_RATE)
    if kind == "noise":
        style = k % 4
        if style == 0:  # coloured noise
            x = _coloured_noise(rng, n, float(rng.uniform(-0.5, 2.5)), None)
        elif style == 1:  # band-limited noise
            low = float(rng.uniform(100, 1500))
            x = _coloured_noise(rng, n, float(rng.uniform(0, 1.5)), (low, low + float(rng.uniform(500, 4000))))
        elif style == 2:  # fluctuating (wind/traffic-like) noise
            x = _coloured_noise(rng, n, 1.5, None) * np.exp(0.6 * _smooth_noise(rng, n, 2.0))
        else:  # hum and buzz over hiss
            t = np.arange(n) / SAMPLE_RATE
            f0 = float(rng.choice([50.0, 60.0, 100.0, 120.0]))
            x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h**0.7 for h in range(1, 12))
            x = x / x.std() + 0.5 * _coloured_noise(rng, n, 0.0, None)
        path = Path(out_dir) / "musan" / "noise" / f"noise-{k + 1:04d}.wav"
    elif kind == "music":
        t = np.arange(n) / SAMPLE_RATE
        x = np.zeros(n)
        root = 48 + int(rng.integers(0, 12))
        beat = float(rng.uniform(0.25, 0.6))
        brightness = float(rng.uniform(0.4, 0.85))
        scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
        start = 0.0
        while start < config.musan_seconds:
            chord = root + np.array([0, 4, 7]) + int(rng.choice([0, 5, 7, -3]))
            notes = [(chord, 4 * beat, 0.25)]
            notes += [(np.array([root + 12 + int(rng.choice(scale))]), beat, 0.4) for _ in range(4)]
            offsets = [0.0] + [i * beat for i in range(4)]
            for (pitches, length, amp), offset in zip(notes, offsets):
                a, b = int((start + offset) * SAMPLE_RATE), min(n, int((start + offset + length) * SAMPLE_RATE))
                if a >= n:
                    continue
                tt = t[: b - a]
                env = np.minimum(1, tt / 0.01) * np.exp(-tt * float(rng.uniform(1.5, 5)))
                for p in pitches:
                    f = 440 * 2 ** ((p - 69) / 12)
                    tone = sum(brightness**h * np.sin(2 * np.pi * f * (h + 1) * tt) for h in range(6) if f * (h + 1) < 7500)
                    x[a:b] += amp * env * tone
            start += 4 * beat
        x = x + 0.02 * _coloured_noise(rng, n, 1.0, None)
        path = Path(out_dir) / "musan" / "music" / f"music-{k + 1:04d}.wav"
    elif kind == "speech":
        speaker = {
            "language": EXTRA_LANGUAGES[k % len(EXTRA_LANGUAGES)],
            "variant": str(rng.choice(EXTRA_VARIANTS)),
            "pitch": int(rng.integers(20, 80)),
            "pitch_range": int(rng.integers(20, 80)),
            "rate": int(rng.integers(140, 200)),
            "formant_scale": float(rng.uniform(0.9, 1.1)),
        }
        speech_config = DemoCorpusConfig(min_seconds=config.musan_seconds, max_seconds=config.musan_seconds, mean_words=10)
        x = _speak(speaker, rng, speech_config)
        path = Path(out_dir) / "musan" / "speech" / f"speech-{k + 1:04d}.wav"
    else:
        rt60 = float(rng.uniform(0.2, 0.9))
        x = _rir(rng, rt60, float(rng.uniform(0, 10)))
        path = Path(out_dir) / "rirs" / f"rir-{k + 1:04d}.wav"
        sf.write(path, _pcm16(0.9 * x), SAMPLE_RATE, subtype="PCM_16")
        return str(path)
    x = x / (np.abs(x).max() + 1e-9) * float(rng.uniform(0.3, 0.9))
    sf.write(path, _pcm16(x), SAMPLE_RATE, subtype="PCM_16")
    return str(path)


def _initialise_worker():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if _ENGINE is not None:  # pragma: no cover - the parent must not synthesise (its engine state would be inherited)
        raise EspeakError("the building process must not use espeak-ng itself")
    _engine()


# ---------------------------------------------------------------------------------------------------------------------
# Manifests and trials
# ---------------------------------------------------------------------------------------------------------------------


def _trials(rows: list[tuple[str, str, str, float]], seed: int, code: int, max_trials: int) -> list[str]:
    rng = _rng(seed, 4, code)
    by_speaker: dict[str, list[tuple[str, str]]] = {}
    for file, spk, ses, _ in rows:
        by_speaker.setdefault(spk, []).append((file, ses))
    targets = []
    for items in by_speaker.values():
        cross = [(a, b) for i, (a, sa) in enumerate(items) for b, sb in items[i + 1 :] if sa != sb]
        targets += cross or [(a, b) for i, (a, _) in enumerate(items) for b, _ in items[i + 1 :]]
    half = max_trials // 2
    if len(targets) > half:
        targets = [targets[i] for i in sorted(rng.choice(len(targets), half, replace=False))]
    files = [(r[0], r[1]) for r in rows]
    nontargets: set[tuple[str, str]] = set()
    possible = len(files) * (len(files) - 1) // 2 - sum(len(v) * (len(v) - 1) // 2 for v in by_speaker.values())
    wanted = min(len(targets), possible)
    while len(nontargets) < wanted:
        i, j = rng.integers(0, len(files), 2)
        if files[i][1] != files[j][1]:
            nontargets.add((files[min(i, j)][0], files[max(i, j)][0]))
    trials = [(1, a, b) for a, b in targets] + [(0, a, b) for a, b in nontargets]
    trials.sort(key=lambda t: (t[1], t[2]))
    return [f"{label} {a} {b}" for label, a, b in trials]


def _write_manifest(path: Path, rows: list[tuple[str, str, str, float]], prefix: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["File", "Speaker", "Session", "Duration"])
        for file, spk, ses, duration in rows:
            writer.writerow([f"{prefix}/wav/{file}", spk, ses, f"{duration:.3f}"])


# ---------------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------------


def _expected_files(out_dir: Path, meta: dict) -> list[Path]:
    files = [out_dir / name for name in ("train.csv", "val.csv", "test.csv", "trials.txt", "val_trials.txt")]
    for name in ("train.csv", "val.csv", "test.csv"):
        path = out_dir / name
        if path.exists():
            with open(path) as handle:
                files += [out_dir.parent / row["File"] for row in csv.DictReader(handle)]
    files += [out_dir / p for p in meta.get("augmentation", [])]
    return files


def _is_complete(out_dir: Path, config: DemoCorpusConfig) -> bool:
    meta_path = out_dir / "corpus.json"
    if not meta_path.exists() or (out_dir / ".building").exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    if meta.get("format_version") != FORMAT_VERSION or meta.get("config") != _content_key(config):
        return False
    return all(path.exists() for path in _expected_files(out_dir, meta))


def _clear(out_dir: Path) -> None:
    """Remove a previous demo build (only what a build writes)."""
    for name in ("wav", "musan", "rirs"):
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
    for name in ("train.csv", "val.csv", "test.csv", "trials.txt", "val_trials.txt", "corpus.json"):
        (out_dir / name).unlink(missing_ok=True)


def _map(function, tasks: list, workers: int, progress: bool, label: str) -> list:
    """Run every task in a fresh process (maxtasksperchild=1), `workers` at a time.

    espeak-ng keeps state from one synthesis to the next (the output of a call depends on the calls before it, even
    after espeak_Terminate/espeak_Initialize), so a task only gives the same bytes if it starts from a fresh engine
    and makes its calls in a fixed order. Hence one process per task, also with workers=1.
    """
    results = []
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with mp.get_context(method).Pool(max(1, workers), initializer=_initialise_worker, maxtasksperchild=1) as pool:
        for i, result in enumerate(pool.imap(function, tasks)):
            results.append(result)
            if progress and (i + 1 == len(tasks) or (i + 1) % max(1, len(tasks) // 10) == 0):
                print(f"\r{label}: {i + 1}/{len(tasks)}", end="\n" if i + 1 == len(tasks) else "", file=sys.stderr, flush=True)
    return results


def build_demo_corpus(out_dir: str | Path = "data/demo", config: DemoCorpusConfig | None = None, progress: bool = True) -> Path:
    """Build (or rebuild if corpus.json differs) and return out_dir.

    If corpus.json exists with the same config and all files exist, return immediately (idempotent). A folder that
    holds files but no corpus.json (so not a demo build) is refused rather than overwritten.
    """
    config = config or DemoCorpusConfig()
    out_dir = Path(out_dir)
    if _is_complete(out_dir, config):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        if not ((out_dir / "corpus.json").exists() or (out_dir / ".building").exists()):
            raise FileExistsError(f"{out_dir} is not empty and holds no demo corpus (corpus.json); not overwriting it")
        _clear(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ".building").write_text("a demo corpus build is in progress or was interrupted\n")
    for sub in ("musan/noise", "musan/music", "musan/speech", "rirs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)

    start = time.time()
    config_json = config.to_json()
    counts = {"train": config.train_speakers, "val": config.val_speakers, "test": config.test_speakers}
    speakers = {role: [_speaker_params(config.seed, role, i) for i in range(counts[role])] for role in ROLES}
    tasks = [
        (str(out_dir), config_json, spk, ROLES[role][0], i, s)
        for role in ROLES
        for i, spk in enumerate(speakers[role])
        for s in range(config.sessions_per_speaker)
    ]
    aug_tasks = [(str(out_dir), config_json, "speech", k) for k in range(config.musan_speech)]
    aug_tasks += [(str(out_dir), config_json, "noise", k) for k in range(config.musan_noise)]
    aug_tasks += [(str(out_dir), config_json, "music", k) for k in range(config.musan_music)]
    aug_tasks += [(str(out_dir), config_json, "rir", k) for k in range(config.rirs)]
    # Longest jobs first-ish: sessions, then the augmentation set; one pool for both.
    results = _map(_dispatch, [("session", t) for t in tasks] + [("aug", t) for t in aug_tasks], config.workers, progress, "demo corpus")
    session_rows = results[: len(tasks)]
    augmentation = sorted(str(Path(p).relative_to(out_dir)) for p in results[len(tasks) :])

    prefix = out_dir.name
    rows_by_role: dict[str, list] = {role: [] for role in ROLES}
    for task, rows in zip(tasks, session_rows):
        role = next(r for r, (code, _) in ROLES.items() if code == task[3])
        rows_by_role[role] += rows
    for role in ROLES:
        _write_manifest(out_dir / f"{role}.csv", rows_by_role[role], prefix)
    for role, name in (("test", "trials.txt"), ("val", "val_trials.txt")):
        lines = _trials(rows_by_role[role], config.seed, ROLES[role][0], config.max_trials)
        (out_dir / name).write_text("\n".join(lines) + ("\n" if lines else ""))

    seconds = {role: round(sum(r[3] for r in rows), 3) for role, rows in rows_by_role.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "generator": "sslsv.data.demo (espeak-ng via espeakng-loader)",
        "sample_rate": SAMPLE_RATE,
        "config": _content_key(config),
        "counts": {
            "speakers": counts,
            "utterances": {role: len(rows) for role, rows in rows_by_role.items()},
            "seconds": seconds,
            "trials": {name: len((out_dir / name).read_text().splitlines()) for name in ("trials.txt", "val_trials.txt")},
        },
        "build_seconds": round(time.time() - start, 2),
        "speakers": [spk for role in ROLES for spk in speakers[role]],
        "augmentation": augmentation,
    }
    (out_dir / "corpus.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out_dir / ".building").unlink()
    return out_dir


def _dispatch(job: tuple):
    kind, task = job
    return _build_session(task) if kind == "session" else _build_augmentation(task)


# ---------------------------------------------------------------------------------------------------------------------
# Spectral-statistics baseline
# ---------------------------------------------------------------------------------------------------------------------


def _mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 20.0, f_max: float | None = None) -> np.ndarray:
    f_max = f_max or sample_rate / 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = inv(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return np.maximum(0, np.minimum(rising, falling))


def mean_log_mel(path: str | Path, n_mels: int = 40) -> np.ndarray:
    """Mean over frames of the log-mel spectrum (25 ms Hann windows, 10 ms hop) of one file."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    n_fft, hop = int(0.025 * sr), int(0.010 * sr)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log(power @ _mel_filterbank(n_fft, n_mels, sr).T + 1e-8).mean(axis=0)


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate in % (threshold sweep over the sorted scores)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    order = np.argsort(-scores, kind="stable")
    labels = labels[order]
    targets, nontargets = labels.sum(), len(labels) - labels.sum()
    if targets == 0 or nontargets == 0:
        raise ValueError("the EER needs both target and non-target trials")
    frr = np.concatenate([[1.0], 1 - np.cumsum(labels) / targets])  # accept the top k
    far = np.concatenate([[0.0], np.cumsum(1 - labels) / nontargets])
    i = int(np.argmin(np.abs(frr - far)))
    return float(100 * (frr[i] + far[i]) / 2)


def spectral_baseline_eer(out_dir: str | Path = "data/demo", trials: str = "trials.txt") -> float:
    """EER (%) on <out_dir>/<trials> of cosine scoring between per-file mean log-mel spectra (no learning)."""
    out_dir = Path(out_dir)
    lines = [line.split() for line in (out_dir / trials).read_text().splitlines() if line.strip()]
    cache: dict[str, np.ndarray] = {}

    def embed(rel: str) -> np.ndarray:
        if rel not in cache:
            v = mean_log_mel(out_dir / "wav" / rel)
            cache[rel] = v / (np.linalg.norm(v) + 1e-12)
        return cache[rel]

    scores = np.array([float(embed(a) @ embed(b)) for _, a, b in lines])
    labels = np.array([int(label) for label, _, _ in lines])
    return compute_eer(scores, labels)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    defaults = DemoCorpusConfig()
    parser = argparse.ArgumentParser(prog="python -m sslsv.data.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/demo", help="output folder (its parent is the data root)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-speakers", type=int, default=defaults.train_speakers)
    parser.add_argument("--val-speakers", type=int, default=defaults.val_speakers)
    parser.add_argument("--test-speakers", type=int, default=defaults.test_speakers)
    parser.add_argument("--sessions", type=int, default=defaults.sessions_per_speaker, help="sessions per speaker")
    parser.add_argument("--utterances", type=int, default=defaults.utterances_per_session, help="utterances per session")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--baseline", action="store_true", help="also print the spectral-statistics baseline EER")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = DemoCorpusConfig(
        train_speakers=args.train_speakers,
        val_speakers=args.val_speakers,
        test_speakers=args.test_speakers,
        sessions_per_speaker=args.sessions,
        utterances_per_session=args.utterances,
        seed=args.seed,
        workers=args.workers,
    )
    start = time.time()
    out = build_demo_corpus(args.out, config, progress=not args.quiet)
    meta = json.loads((out / "corpus.json").read_text())
    counts = meta["counts"]
    minutes = sum(counts["seconds"].values()) / 60
    print(
        f"demo corpus {out}: {sum(counts['speakers'].values())} speakers "
        f"({counts['speakers']['train']} train / {counts['speakers']['val']} val / {counts['speakers']['test']} test), "
        f"{sum(counts['utterances'].values())} utterances, {minutes:.1f} min, {counts['trials']['trials.txt']} test trials, "
        f"{time.time() - start:.1f} s"
    )
    if args.baseline:
        print(f"spectral baseline EER (mean log-mel, cosine): {spectral_baseline_eer(out):.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
