"""Log-mel filterbank front-end (Lepage & Dehak, "Self-Supervised Learning for Speaker Recognition: A study and
review", 2026, arXiv:2602.10829, section 4.1: torchaudio, 25 ms Hamming window, 10 ms hop, 40 or 80 mel bands,
instance normalisation). With the `features` defaults it computes the authors' front-end exactly (theolepage/sslsv,
encoders/_BaseEncoder.py: MelSpectrogram(n_fft=512, win_length=400, hop_length=160, hamming, 0 Hz to Nyquist),
log(x + 1e-6), InstanceNorm1d); ReDimNet's configs add pre-emphasis 0.97 and a 20-7600 Hz band (docs/config.md).

It is part of the model (`SpeakerModel.frontend`), so training, evaluation and export compute exactly the same
features on whatever device the model is on. It always runs in float32: the log of small filterbank energies and
the per-band normalisation lose too much precision in float16/bfloat16.
"""
from __future__ import annotations

import torch
import torchaudio
from torch import nn

from sslsv.config import ConfigError, FeaturesConfig


class LogMel(nn.Module):
    """Waveform (B, S) -> log-mel features (B, n_mels, T), T = S // hop + 1.

    Steps: optional pre-emphasis y[t] = x[t] - a * x[t-1] (y[0] = x[0]), mel power spectrogram (centred frames,
    Hamming window), log(x + 1e-6), and optionally per-utterance mean and variance normalisation of every mel
    band over time (InstanceNorm1d without affine parameters, eps 1e-5), which removes channel effects.

    Args:
        config: the `features` section.
    """

    def __init__(self, config: FeaturesConfig):
        super().__init__()
        sr = config.sample_rate
        self.win_length = int(round(config.win_ms * sr / 1000))
        self.hop_length = int(round(config.hop_ms * sr / 1000))
        if self.win_length > config.n_fft:
            raise ConfigError(f"features.n_fft: {config.n_fft} is shorter than the {config.win_ms} ms window "
                              f"({self.win_length} samples at {sr} Hz)")
        if self.hop_length < 1:
            raise ConfigError(f"features.hop_ms: {config.hop_ms} ms is less than one sample at {sr} Hz")
        if config.f_max is not None and config.f_max > sr / 2:
            raise ConfigError(f"features.f_max: {config.f_max} Hz is above the Nyquist frequency ({sr / 2} Hz)")
        self.preemphasis = float(config.preemphasis)
        self.instance_norm = bool(config.instance_norm)
        self.n_mels = config.n_mels
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sr,
            n_fft=config.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            window_fn=torch.hamming_window,
            n_mels=config.n_mels,
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames T produced for S samples (centred framing)."""
        return num_samples // self.hop_length + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: (B, S) waveforms, any float dtype.

        Returns:
            (B, n_mels, T) float32 features.
        """
        if x.dim() != 2:
            raise ValueError(f"LogMel expects waveforms of shape (B, S), got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.preemphasis > 0:
                x = torch.cat([x[:, :1], x[:, 1:] - self.preemphasis * x[:, :-1]], dim=1)
            features = torch.log(self.melspec(x) + 1e-6)
            if self.instance_norm:
                mean = features.mean(dim=-1, keepdim=True)
                var = features.var(dim=-1, keepdim=True, unbiased=False)
                features = (features - mean) * torch.rsqrt(var + 1e-5)
        return features
