"""The work units of a build, each run in a fresh worker process: one session's utterances, or one file of the
augmentation set (MUSAN-like noise, music and speech, and simulated RIRs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

import sslsv.data.demo.signal as dsp
from sslsv.data.demo.config import KIND_AUGMENTATION, KIND_UTTERANCE, DemoCorpusConfig, seeded_rng
from sslsv.data.demo.espeak import EspeakError, engine, engine_loaded
from sslsv.data.demo.signal import SAMPLE_RATE
from sslsv.data.demo.voices import EXTRA_LANGUAGES, EXTRA_VARIANTS, channel_params, sentence

AUGMENTATION_KINDS = {"noise": 0, "music": 1, "speech": 2, "rir": 3}  # kind -> code for the seeds


@dataclass(frozen=True)
class UtteranceLength:
    """How long an utterance is: min_seconds + Exponential(mean_extra_seconds), cut at max_seconds."""

    min_seconds: float
    max_seconds: float
    mean_extra_seconds: float
    mean_words: float  # per sentence

    @classmethod
    def of(cls, config: DemoCorpusConfig) -> "UtteranceLength":
        return cls(config.min_seconds, config.max_seconds, config.mean_extra_seconds, config.mean_words)


def _fit_length(x: np.ndarray, length: UtteranceLength) -> np.ndarray:
    """Cut (with a 50 ms fade-out) at max_seconds, pad with silence to min_seconds."""
    limit = int(length.max_seconds * SAMPLE_RATE)
    if len(x) > limit:
        x = x[:limit]
        fade = int(0.05 * SAMPLE_RATE)
        x[-fade:] *= np.linspace(1, 0, fade)
    if len(x) < length.min_seconds * SAMPLE_RATE:
        x = np.concatenate([x, np.zeros(int(length.min_seconds * SAMPLE_RATE) - len(x))])
    return x


def speak(speaker: dict, rng: np.random.Generator, length: UtteranceLength) -> np.ndarray:
    """Clean speech of one utterance at 16 kHz: sentences joined by short pauses until the drawn length is reached."""
    voice = f"{speaker['language']}+{speaker['variant']}"
    pieces, total = [], 0
    target = min(length.max_seconds, length.min_seconds + rng.exponential(length.mean_extra_seconds))
    for _ in range(8):  # a bound on the sentences, in case espeak-ng stays silent
        text = sentence(rng, length.mean_words)
        seed = int(rng.integers(1, 2**31))
        raw = engine().synth(text, voice, speaker["rate"], speaker["pitch"], speaker["pitch_range"], seed)
        piece = dsp.trim(dsp.resample_warp(raw, speaker["formant_scale"]))
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
    x = _fit_length(np.concatenate(pieces), length)
    return x / (np.abs(x).max() + 1e-9) * 0.5


def build_session(task: tuple) -> list[tuple[str, str, str, float]]:
    """Write the utterances of one session; return their (file under wav/, speaker, session, seconds) rows."""
    out_dir, config_json, speaker, code, index, session = task
    config = DemoCorpusConfig.from_json(config_json)
    channel = channel_params(config.seed, code, index, session, config)
    room = dsp.rir(seeded_rng(channel["rir_seed"]), channel["rt60"], channel["drr_db"]) if channel["rt60"] > 0 else None
    sos = dsp.channel_filters(channel)
    session_name = f"ses{session + 1:02d}"
    folder = Path(out_dir) / "wav" / speaker["id"] / session_name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for utt in range(config.utterances_per_session):
        rng = seeded_rng(config.seed, KIND_UTTERANCE, code, index, session, utt)
        clean = dsp.voice_quality(speak(speaker, rng, UtteranceLength.of(config)), speaker, rng)
        y = dsp.pcm16(dsp.apply_channel(clean, channel, room, sos, rng))
        name = f"{utt + 1:05d}.wav"
        sf.write(folder / name, y, SAMPLE_RATE, subtype="PCM_16")
        rows.append((f"{speaker['id']}/{session_name}/{name}", speaker["id"], session_name, len(y) / SAMPLE_RATE))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The augmentation set
# ---------------------------------------------------------------------------------------------------------------------


def _noise_clip(rng: np.random.Generator, n: int, style: int) -> np.ndarray:
    """One of four noise styles, so the set covers steady, band-limited, fluctuating and tonal noise."""
    if style == 0:  # coloured noise
        return dsp.coloured_noise(rng, n, float(rng.uniform(-0.5, 2.5)), None)
    if style == 1:  # band-limited noise
        low = float(rng.uniform(100, 1500))
        return dsp.coloured_noise(rng, n, float(rng.uniform(0, 1.5)), (low, low + float(rng.uniform(500, 4000))))
    if style == 2:  # fluctuating (wind/traffic-like) noise
        return dsp.coloured_noise(rng, n, 1.5, None) * np.exp(0.6 * dsp.smooth_noise(rng, n, 2.0))
    # hum and buzz over hiss
    t = np.arange(n) / SAMPLE_RATE
    f0 = float(rng.choice([50.0, 60.0, 100.0, 120.0]))
    x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h**0.7 for h in range(1, 12))
    return x / x.std() + 0.5 * dsp.coloured_noise(rng, n, 0.0, None)


def _add_note(x: np.ndarray, rng: np.random.Generator, pitches, start: float, length: float, amp: float,
              brightness: float) -> None:
    """Add in place a decaying harmonic tone per MIDI pitch, from `start` for `length` seconds."""
    n = len(x)
    a, b = int(start * SAMPLE_RATE), min(n, int((start + length) * SAMPLE_RATE))
    if a >= n:
        return
    tt = np.arange(b - a) / SAMPLE_RATE
    env = np.minimum(1, tt / 0.01) * np.exp(-tt * float(rng.uniform(1.5, 5)))
    for p in pitches:
        f = 440 * 2 ** ((p - 69) / 12)
        tone = sum(brightness**h * np.sin(2 * np.pi * f * (h + 1) * tt) for h in range(6) if f * (h + 1) < 7500)
        x[a:b] += amp * env * tone


def _music_clip(rng: np.random.Generator, n: int, seconds: float) -> np.ndarray:
    """Bars of a chord held for four beats under a four-note melody, on a random root, tempo and timbre."""
    x = np.zeros(n)
    root = 48 + int(rng.integers(0, 12))
    beat = float(rng.uniform(0.25, 0.6))
    brightness = float(rng.uniform(0.4, 0.85))
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    start = 0.0
    while start < seconds:
        chord = root + np.array([0, 4, 7]) + int(rng.choice([0, 5, 7, -3]))
        notes = [(chord, 4 * beat, 0.25)]
        notes += [(np.array([root + 12 + int(rng.choice(scale))]), beat, 0.4) for _ in range(4)]
        offsets = [0.0] + [i * beat for i in range(4)]
        for (pitches, length, amp), offset in zip(notes, offsets):
            _add_note(x, rng, pitches, start + offset, length, amp, brightness)
        start += 4 * beat
    return x + 0.02 * dsp.coloured_noise(rng, n, 1.0, None)


def _speech_clip(rng: np.random.Generator, k: int, seconds: float) -> np.ndarray:
    """Speech of a voice that no corpus speaker uses (babble-like interference), exactly `seconds` long."""
    speaker = {
        "language": EXTRA_LANGUAGES[k % len(EXTRA_LANGUAGES)],
        "variant": str(rng.choice(EXTRA_VARIANTS)),
        "pitch": int(rng.integers(20, 80)),
        "pitch_range": int(rng.integers(20, 80)),
        "rate": int(rng.integers(140, 200)),
        "formant_scale": float(rng.uniform(0.9, 1.1)),
    }
    # The extra-seconds mean does not matter (the length is fixed), but keeps the generator's draws as they were.
    return speak(speaker, rng, UtteranceLength(seconds, seconds, DemoCorpusConfig.mean_extra_seconds, mean_words=10))


def build_augmentation(task: tuple) -> str:
    """Write file `k` of kind noise, music, speech or rir; return its path."""
    out_dir, config_json, kind, k = task
    config = DemoCorpusConfig.from_json(config_json)
    rng = seeded_rng(config.seed, KIND_AUGMENTATION, AUGMENTATION_KINDS[kind], k)
    if kind == "rir":
        rt60 = float(rng.uniform(0.2, 0.9))
        path = Path(out_dir) / "rirs" / f"rir-{k + 1:04d}.wav"
        sf.write(path, dsp.pcm16(0.9 * dsp.rir(rng, rt60, float(rng.uniform(0, 10)))), SAMPLE_RATE, subtype="PCM_16")
        return str(path)
    n = int(config.musan_seconds * SAMPLE_RATE)
    if kind == "noise":
        x = _noise_clip(rng, n, k % 4)
    elif kind == "music":
        x = _music_clip(rng, n, config.musan_seconds)
    else:
        x = _speech_clip(rng, k, config.musan_seconds)
    x = x / (np.abs(x).max() + 1e-9) * float(rng.uniform(0.3, 0.9))
    path = Path(out_dir) / "musan" / kind / f"{kind}-{k + 1:04d}.wav"
    sf.write(path, dsp.pcm16(x), SAMPLE_RATE, subtype="PCM_16")
    return str(path)


def run_task(job: tuple):
    """Entry point of a worker: ("session", task) or ("augmentation", task)."""
    kind, task = job
    return build_session(task) if kind == "session" else build_augmentation(task)


def initialise_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if engine_loaded():  # pragma: no cover - the parent must not synthesise (its engine state would be inherited)
        raise EspeakError("the building process must not use espeak-ng itself")
    engine()
