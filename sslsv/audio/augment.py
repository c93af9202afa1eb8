"""Data augmentation (Lepage & Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review", 2026,
arXiv:2602.10829, section 4.2): reverberation with a room impulse response, then additive MUSAN noise, music or
speech at a random signal-to-noise ratio. The draws follow the authors' code (theolepage/sslsv,
datasets/DataAugmentation.py): one category uniformly, one file of it, SNR uniform in 0-15 dB (noise), 5-15 dB
(music), 13-20 dB (speech). Their 3-7-file babble is commented out; `augmentation.babble_speakers: [3, 7]` turns
it on here. Two deviations, for batching: the RIR starts at its peak (the direct path; theirs is convolved from
sample 0, which delays the speech by the RIR's onset) and is cut to `rir_max_seconds`.

The work is split in two so that the maths runs on whole batches on the training device:

* worker side, `AugmentationSources.draw`: all random choices and all file reads for one view. It returns a
  "plan" of fixed-shape arrays: the RIR (peak-aligned, unit energy), and the noise already mixed at the drawn
  SNRs relative to a unit-power signal. Draws depend only on the generator, so batches are reproducible.
* device side, `apply_augmentation`: batched FFT convolution and noise scaling by the power of each
  (reverberated) utterance. Because every noise component n_k has unit power and is multiplied by
  10^(-snr_k/20) in the plan, scaling the plan's noise by sqrt(speech power) gives each component exactly its SNR.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sslsv.audio.io import AUDIO_SUFFIXES, AudioError, audio_info, read_audio, read_crop
from sslsv.config import AugmentationConfig

NOISE_CATEGORIES = ("noise", "music", "speech")
CHOICES = ("none", "reverb", "noise", "reverb+noise")  # what "all" picks from, uniformly

_POWER_EPS = 1e-10  # silent noise crops stay (nearly) silent instead of being blown up to unit power


class AugmentationError(RuntimeError):
    """Augmentation sources missing or unusable; the message names the folder and the config key."""


def find_audio_files(folder: Path) -> list[str]:
    """Every WAV/FLAC/OGG file below `folder`, sorted, so that draws do not depend on directory order."""
    found = []
    for directory, _, names in os.walk(folder, followlinks=True):
        found.extend(os.path.join(directory, n) for n in names if n.lower().endswith(AUDIO_SUFFIXES))
    return sorted(found)


class AugmentationSources:
    """The RIR and MUSAN file lists, and the worker-side draw of one view's augmentation plan.

    Args:
        config: the `augmentation` section.
        data_root: folder that `musan_dir` and `rir_dir` are relative to.
        sample_rate: rate of the training audio in Hz; sources at other rates are resampled.

    Raises:
        AugmentationError: a folder needed by the strategy is not configured, missing or has no audio files.
    """

    def __init__(self, config: AugmentationConfig, data_root: str | Path, sample_rate: int):
        self.config = config
        self.sample_rate = int(sample_rate)
        self.rir_samples = max(1, int(round(config.rir_max_seconds * sample_rate)))
        root = Path(data_root)
        strategy = config.strategy
        needs_rir = strategy in ("reverb", "reverb+noise", "all")
        needs_noise = strategy in ("noise", "reverb+noise", "all")
        self.rirs: list[str] = []
        self.noises: dict[str, list[str]] = {c: [] for c in NOISE_CATEGORIES}
        if needs_rir:
            self.rirs = self._scan(root, config.rir_dir, "augmentation.rir_dir", "")
        if needs_noise:
            for category in NOISE_CATEGORIES:
                self.noises[category] = self._scan(root, config.musan_dir, "augmentation.musan_dir", category)
        self._info: dict[str, tuple[int, int, int]] = {}  # per-process header cache

    def _scan(self, root: Path, folder: str | None, key: str, sub: str) -> list[str]:
        if folder is None:
            raise AugmentationError(f"{key} is null but augmentation.strategy='{self.config.strategy}' needs it")
        path = root / folder / sub if sub else root / folder
        if not path.is_dir():
            raise AugmentationError(f"{key}: folder {path} does not exist (augmentation.strategy="
                                    f"'{self.config.strategy}' needs it; set {key} or augmentation.strategy=none)")
        files = find_audio_files(path)
        if not files:
            raise AugmentationError(f"{key}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {path}")
        return files

    def __repr__(self) -> str:
        counts = ", ".join(f"{c}={len(v)}" for c, v in self.noises.items())
        return f"AugmentationSources(strategy={self.config.strategy!r}, rirs={len(self.rirs)}, {counts})"

    # ------------------------------------------------------------------------------------------ worker side

    def _header(self, path: str) -> tuple[int, int, int]:
        info = self._info.get(path)
        if info is None:
            info = self._info[path] = audio_info(path)
        return info

    def choose(self, rng: np.random.Generator) -> str:
        """What to apply to one view: one of "none", "reverb", "noise", "reverb+noise"."""
        if self.config.strategy == "none" or rng.random() >= self.config.probability:
            return "none"
        if self.config.strategy == "all":
            return CHOICES[int(rng.integers(len(CHOICES)))]
        return self.config.strategy

    def draw_rir(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """A random RIR, (R,) float32 with R = rir_max_seconds * sample_rate, and its file.

        The RIR starts at its peak (the direct path), so reverberation does not delay the speech relative to the
        crop, and has unit energy, so it does not change the level much; tails beyond R are cut, short ones
        zero-padded.
        """
        path = self.rirs[int(rng.integers(len(self.rirs)))]
        rir = read_audio(path, self.sample_rate, min_seconds=0.0)  # impulse responses may be a few ms long
        rir = rir[int(np.argmax(np.abs(rir))) :][: self.rir_samples].astype(np.float64)
        energy = float(np.sum(rir**2))
        if not np.isfinite(energy) or energy <= 0:
            raise AudioError(f"{path}: silent or invalid impulse response (augmentation.rir_dir)")
        out = np.zeros(self.rir_samples, dtype=np.float32)
        out[: len(rir)] = rir / np.sqrt(energy)
        return out, path

    def _unit_crop(self, path: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        crop = read_crop(path, num_samples, self.sample_rate, rng, info=self._header(path)).astype(np.float64)
        return crop / np.sqrt(np.mean(crop**2) + _POWER_EPS)

    def draw_noise(self, rng: np.random.Generator, num_samples: int) -> tuple[np.ndarray, list[dict]]:
        """Additive noise for one view, mixed for a unit-power signal, and its components.

        One of noise (snr_noise), music (snr_music) or speech (babble_speakers speech crops, one by default as
        the authors, each with its own SNR from snr_speech), chosen uniformly. Each component n_k is a random crop
        normalised to unit power and scaled by 10^(-snr_k / 20).

        Returns:
            noise: float32 (num_samples,) = sum_k n_k * 10^(-snr_k / 20).
            components: one dict per component: category, path, snr (dB), crop (the unit-power n_k).
        """
        cfg = self.config
        category = NOISE_CATEGORIES[int(rng.integers(len(NOISE_CATEGORIES)))]
        files = self.noises[category]
        if category == "speech":
            count = int(rng.integers(cfg.babble_speakers[0], cfg.babble_speakers[1] + 1))
            low, high = cfg.snr_speech
            # Different speakers when there are enough files (MUSAN speech: one speaker per file).
            picks = rng.choice(len(files), size=count, replace=count > len(files))
        else:
            low, high = cfg.snr_noise if category == "noise" else cfg.snr_music
            picks = [int(rng.integers(len(files)))]
        noise = np.zeros(num_samples, dtype=np.float64)
        components = []
        for index in picks:
            path = files[int(index)]
            snr = float(rng.uniform(low, high))
            crop = self._unit_crop(path, num_samples, rng)
            noise += crop * 10 ** (-snr / 20)
            components.append({"category": category, "path": path, "snr": snr, "crop": crop})
        return noise.astype(np.float32), components

    def draw(self, rng: np.random.Generator, num_samples: int, details: dict | None = None) -> dict[str, np.ndarray]:
        """The augmentation plan of one view (runs in a DataLoader worker).

        Args:
            rng: the sample's generator; the plan is a deterministic function of its state.
            num_samples: length S of the view in samples.
            details: when given, filled with the choices made (choice, rir path, noise components), for tests
                and debugging.

        Returns:
            rir: float32 (R,); use_rir: float32 scalar (1 or 0); noise: float32 (S,); use_noise: float32 scalar.
        """
        choice = self.choose(rng)
        rir = np.zeros(self.rir_samples, dtype=np.float32)
        noise = np.zeros(num_samples, dtype=np.float32)
        rir_path, components = None, []
        if choice in ("reverb", "reverb+noise"):
            rir, rir_path = self.draw_rir(rng)
        if choice in ("noise", "reverb+noise"):
            noise, components = self.draw_noise(rng, num_samples)
        if details is not None:
            details.update(choice=choice, rir_path=rir_path, components=components)
        return {
            "rir": rir,
            "use_rir": np.float32(choice in ("reverb", "reverb+noise")),
            "noise": noise,
            "use_noise": np.float32(choice in ("noise", "reverb+noise")),
        }


def stack_plans(plans: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Collate the plans of one view position across a batch: dict of (B, ...) CPU tensors."""
    if not plans:
        raise ValueError("stack_plans: empty list of plans")
    return {k: torch.from_numpy(np.stack([np.asarray(p[k], dtype=np.float32) for p in plans])) for k in plans[0]}


# ---------------------------------------------------------------------------------------------- device side


def fft_convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Row-wise full linear convolution truncated to the length of x, via real FFTs.

    Args:
        x: (B, S) signals.
        h: (B, R) filters.

    Returns:
        (B, S): (x * h)[:, :S], the causal part aligned with x.
    """
    size = x.shape[-1] + h.shape[-1] - 1
    n_fft = 1 << (size - 1).bit_length()  # power of two: fastest FFT sizes on every backend
    spectrum = torch.fft.rfft(x, n=n_fft) * torch.fft.rfft(h, n=n_fft)
    return torch.fft.irfft(spectrum, n=n_fft)[..., : x.shape[-1]]


def apply_augmentation(
    x: torch.Tensor, rir: torch.Tensor, use_rir: torch.Tensor, noise: torch.Tensor, use_noise: torch.Tensor
) -> torch.Tensor:
    """Apply a batch of plans on the device: reverberation, then noise at each row's SNR.

    Runs in float32 (float64 inputs stay float64) with autocast disabled, so half-precision training does not
    degrade the FFT or the power estimates. Rows without use_rir / use_noise come out unchanged. No host
    synchronisation: masks are applied with torch.where.

    Args:
        x: (B, S) waveforms.
        rir: (B, R) impulse responses from `AugmentationSources.draw`.
        use_rir: (B,) 1 where the row is reverberated, 0 elsewhere (bool or float).
        noise: (B, S) noise mixed for a unit-power signal.
        use_noise: (B,) 1 where noise is added.

    Returns:
        (B, S) augmented waveforms.
    """
    if x.dim() != 2:
        raise ValueError(f"apply_augmentation: x must be (B, S), got shape {tuple(x.shape)}")
    batch, length = x.shape
    for name, t, shape in (("rir", rir, (batch, None)), ("noise", noise, (batch, length)),
                           ("use_rir", use_rir, (batch,)), ("use_noise", use_noise, (batch,))):
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            expected = tuple("R" if s is None else s for s in shape)
            raise ValueError(f"apply_augmentation: {name} must have shape {expected}, got {tuple(t.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(dtype)
        reverb = use_rir.reshape(batch, 1) != 0
        y = torch.where(reverb, fft_convolve(x, rir.to(device=x.device, dtype=dtype)), x)
        power = y.square().mean(dim=1, keepdim=True)
        additive = use_noise.reshape(batch, 1) != 0
        y = torch.where(additive, y + noise.to(device=x.device, dtype=dtype) * power.sqrt(), y)
    return y
