"""A tiny corpus in the demo/VoxCeleb layout, made of harmonic tones, for fast end-to-end tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def _tone(rng: np.random.Generator, f0: float, seconds: float, tilt: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    vibrato = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)
    x = sum((tilt ** k) * np.sin(2 * np.pi * f0 * (k + 1) * vibrato * t + rng.uniform(0, 6.28)) for k in range(8))
    return (0.3 * x / np.abs(x).max() + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_tiny_corpus(root: str | Path, speakers: int = 4, sessions: int = 2, utterances: int = 3, seed: int = 0) -> Path:
    """Writes root/tiny/{wav,musan,rirs}, train.csv and trials.txt; returns the data root."""
    root = Path(root)
    base = root / "tiny"
    rng = np.random.default_rng(seed)
    rows, files = [], []
    for s in range(speakers):
        f0, tilt = 100 + 40 * s, 0.5 + 0.1 * s
        for session in range(sessions):
            for u in range(utterances):
                rel = f"id{s:05d}/ses{session}/{u:05d}.wav"
                path = base / "wav" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, _tone(rng, f0 * rng.uniform(0.97, 1.03), rng.uniform(1.2, 2.0), tilt), SR)
                rows.append(f"tiny/wav/{rel},id{s:05d},ses{session}")
                files.append((s, rel))
    (base / "train.csv").write_text("File,Speaker,Session\n" + "\n".join(rows) + "\n")
    trials = []
    for i, (si, a) in enumerate(files):
        for sj, b in files[i + 1 :: 3]:
            trials.append(f"{int(si == sj)} tiny/wav/{a} tiny/wav/{b}")
    (base / "trials.txt").write_text("\n".join(trials) + "\n")
    for category in ("noise", "music", "speech"):
        folder = base / "musan" / category
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(2):
            sf.write(folder / f"{category}{k}.wav", (0.1 * rng.standard_normal(SR * 3)).astype(np.float32), SR)
    (base / "rirs").mkdir(exist_ok=True)
    for k in range(2):
        decay = np.exp(-np.arange(SR // 4) / (SR * 0.05)) * rng.standard_normal(SR // 4)
        decay[0] = 1.0
        sf.write(base / "rirs" / f"rir{k}.wav", decay.astype(np.float32), SR)
    return root


def tiny_overrides(root: str | Path, run_dir: str | Path, **extra) -> list[str]:
    """Overrides that turn configs/simclr/fast_resnet34.yml into a seconds-long CPU run on the tiny corpus."""
    values = {
        "run_dir": str(run_dir),
        "dataset.data_root": str(root),
        "dataset.manifest": "tiny/train.csv",
        "dataset.batch_size": 8,
        "dataset.num_workers": 0,
        "dataset.views": "[{count: 2, seconds: 0.5}]",
        "augmentation.musan_dir": "tiny/musan",
        "augmentation.rir_dir": "tiny/rirs",
        "features.n_mels": 24,
        "encoder.base_width": 4,
        "encoder.embed_dim": 32,
        "trainer.epochs": 2,
        "trainer.progress_bar": "false",
        "trainer.log_every_steps": 1,
        "trainer.average_last": 2,
        "evaluation.trials": "[tiny/trials.txt]",
        "evaluation.batch_seconds": 10,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
