"""The encoder interface shared by every architecture, and the waveform-to-representation model built on it.

Every encoder takes features (B, F, T) and returns representations (B, D), with D in `embed_dim`. Encoders that
consume raw audio (e.g. SV-Mixer) set `input_kind = "waveform"` and take (B, S). `SpeakerModel` puts the
front-end in front, so that methods, evaluation and export all see one module: waveform (B, S) -> (B, D).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sslsv.audio.features import LogMel
from sslsv.config import FeaturesConfig, Spec
from sslsv.registry import ENCODERS


class Encoder(nn.Module):
    """Base class: subclasses set `embed_dim` and implement `forward`."""

    embed_dim: int
    input_kind: Literal["features", "waveform"] = "features"

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Frame-level outputs (B, C, T'), for frame-level objectives such as CPC."""
        raise NotImplementedError(f"{type(self).__name__} does not expose frame-level outputs")


class SpeakerModel(nn.Module):
    """Front-end + encoder: waveform (B, S) -> representation (B, D). What evaluation and export use."""

    def __init__(self, encoder: Encoder, features: FeaturesConfig):
        super().__init__()
        self.frontend = LogMel(features) if encoder.input_kind == "features" else nn.Identity()
        self.encoder = encoder
        self.embed_dim = encoder.embed_dim
        self.sample_rate = features.sample_rate

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(waveform))

    def forward_frames(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_frames(self.frontend(waveform))


def build_encoder(spec: Spec, features: FeaturesConfig) -> Encoder:
    entry = ENCODERS.get(spec.name, key="encoder.name")
    return entry.obj(spec.options, in_features=features.n_mels)


def build_speaker_model(spec: Spec, features: FeaturesConfig) -> SpeakerModel:
    return SpeakerModel(build_encoder(spec, features), features)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
