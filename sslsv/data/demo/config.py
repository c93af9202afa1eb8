"""The settings of a demo corpus build (stored in corpus.json, compared on the next build)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

# Every random draw comes from a generator seeded by (seed, kind, indices): a file then depends neither on the
# worker count nor on scheduling, and adding speakers leaves the existing ones unchanged.
KIND_SPEAKER, KIND_CHANNEL, KIND_UTTERANCE, KIND_TRIALS, KIND_AUGMENTATION = 1, 2, 3, 4, 5


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


def content_key(config: DemoCorpusConfig) -> dict:
    """The part of the config that decides the files (workers does not)."""
    key = config.to_json()
    key.pop("workers")
    return key


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on (seed, *keys)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]])
