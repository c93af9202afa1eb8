"""Who speaks and through which channel: speaker voices, session channels and the sentences they read."""
from __future__ import annotations

import numpy as np

from sslsv.data.demo.config import KIND_CHANNEL, KIND_SPEAKER, DemoCorpusConfig, seeded_rng

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


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def speaker_params(seed: int, role: str, index: int) -> dict:
    """The voice of speaker `index` of `role` (stored in corpus.json)."""
    code, first = ROLES[role]
    rng = seeded_rng(seed, KIND_SPEAKER, code, index)
    return {
        "id": f"id{first + index:05d}",
        "role": role,
        "language": str(rng.choice(SPEAKER_LANGUAGES)),
        "variant": str(rng.choice(SPEAKER_VARIANTS)),
        "pitch": int(rng.integers(15, 86)),  # espeak-ng 0-99
        "pitch_range": int(rng.integers(20, 91)),  # espeak-ng 0-99
        "rate": int(rng.integers(130, 211)),  # words per minute
        "formant_scale": round(_log_uniform(rng, 0.8, 1.25), 4),
        "tilt_db": round(float(rng.uniform(-9.0, 9.0)), 2),  # first-order shelf, dB at high frequencies
        "jitter_ms": round(float(rng.uniform(0.0, 0.25)), 3),
        "shimmer": round(float(rng.uniform(0.0, 0.35)), 3),
        "breathiness": round(float(rng.uniform(0.0, 0.25)), 3),
        "breath_cutoff_hz": round(float(rng.uniform(1200, 3500)), 1),
        # Individual resonances/anti-resonances of the vocal tract (frequency Hz, gain dB, Q).
        "resonances": [
            [round(_log_uniform(rng, 250, 4500), 1), round(float(rng.uniform(-8, 8)), 2),
             round(float(rng.uniform(0.8, 2.5)), 2)]
            for _ in range(3)
        ],
    }


def channel_params(seed: int, code: int, index: int, session: int, config: DemoCorpusConfig) -> dict:
    """The recording channel of one session (room, noise, EQ, gain), shared by its utterances."""
    rng = seeded_rng(seed, KIND_CHANNEL, code, index, session)
    strength = config.channel_strength
    peaks = [
        (_log_uniform(rng, 150, 6500), strength * float(rng.uniform(-10, 10)), float(rng.uniform(0.5, 3.0)))
        for _ in range(int(rng.integers(2, 5)))
    ]
    return {
        "low_cut": _log_uniform(rng, 40, 40 + strength * 300),
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


def sentence(rng: np.random.Generator, mean_words: float) -> str:
    """Random words from WORDS, 2 + Poisson(mean_words - 2) of them."""
    count = 2 + int(rng.poisson(max(mean_words - 2, 0.5)))
    return " ".join(str(w) for w in rng.choice(WORDS, size=count))
