"""The encoder interface shared by every architecture, and the waveform-to-representation model built on it.

Every encoder takes features (B, F, T) and returns representations (B, D), with D in `embed_dim`. Encoders that
consume raw audio (e.g. SV-Mixer) set `input_kind = "waveform"` and take (B, S). `SpeakerModel` puts the
front-end in front, so that methods, evaluation and export all see one module: waveform (B, S) -> (B, D).

Two optional outputs, each declared by a capability flag that methods check before they ask:

- frames (`has_frames`): `forward_frames(x) -> (B, frame_dim, T)`, the frame sequence the encoder pools into its
  representation (CPC predicts these). `frame_pooling()` returns the pooling module that reads it, when there is
  exactly one (CPC reuses a recurrent one as its aggregator).
- layers (`has_layers`): `forward_layers(x) -> (B, num_layers, T, layer_dim)`, the hidden states of the encoder
  stacked (layer-wise back-ends and knowledge distillation read these). `forward_with_layers(x)` returns the
  representation and the states; encoders whose `forward` goes through their states override it to share one pass.

Without the capability, the method raises `OutputNotSupported` (a NotImplementedError) naming the encoder.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Literal

import torch
from torch import nn

from sslsv.audio.features import LogMel
from sslsv.config import FeaturesConfig, Spec
from sslsv.registry import ENCODERS

_SAVED_WEIGHTS_FOLLOW = contextvars.ContextVar("saved_weights_follow", default=False)


@contextlib.contextmanager
def saved_weights_follow() -> Iterator[None]:
    """Inside this block, encoders built from pretrained models skip loading those weights (a download, a local
    file): the caller loads a saved state dict right after (runs.load_model), so a trained run is evaluated, embedded
    or exported without the network or the original checkpoint file."""
    token = _SAVED_WEIGHTS_FOLLOW.set(True)
    try:
        yield
    finally:
        _SAVED_WEIGHTS_FOLLOW.reset(token)


def pretrained_loading_skipped() -> bool:
    """Whether the current build is inside `saved_weights_follow()`."""
    return _SAVED_WEIGHTS_FOLLOW.get()


class OutputNotSupported(NotImplementedError):
    """An encoder asked for an output (frames, layers) it does not declare."""


class Encoder(nn.Module):
    """Base class: subclasses set `embed_dim` and implement `forward`; the optional outputs are described in the
    module docstring."""

    embed_dim: int
    input_kind: Literal["features", "waveform"] = "features"
    has_frames: bool = False  # forward_frames and frame_dim
    has_layers: bool = False  # forward_layers, num_layers and layer_dim
    frame_dim: int  # C of forward_frames (B, C, T)
    num_layers: int  # L of forward_layers (B, L, T, D)
    layer_dim: int  # D of forward_layers (B, L, T, D)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Frame-level outputs (B, frame_dim, T'), for frame-level objectives such as CPC."""
        raise OutputNotSupported(f"{type(self).__name__} does not expose frame-level outputs (forward_frames)")

    def frame_pooling(self) -> nn.Module | None:
        """The pooling that turns `forward_frames` into the representation, or None (no single such module)."""
        return None

    def forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states stacked: (B, num_layers, T', layer_dim)."""
        raise OutputNotSupported(f"{type(self).__name__} does not expose layer-wise states (forward_layers)")

    def forward_with_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(representation (B, embed_dim), states (B, num_layers, T', layer_dim)); two passes unless overridden."""
        states = self.forward_layers(x)
        return self(x), states


class SpeakerModel(nn.Module):
    """Front-end + encoder: waveform (B, S) -> representation (B, D). What evaluation and export use."""

    def __init__(self, encoder: Encoder, features: FeaturesConfig):
        super().__init__()
        self.frontend = LogMel(features) if encoder.input_kind == "features" else nn.Identity()
        self.encoder = encoder
        self.embed_dim = encoder.embed_dim
        self.sample_rate = features.sample_rate

    @property
    def has_frames(self) -> bool:
        return self.encoder.has_frames

    @property
    def has_layers(self) -> bool:
        return self.encoder.has_layers

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(waveform))

    def forward_frames(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_frames(self.frontend(waveform))

    def forward_layers(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_layers(self.frontend(waveform))

    def forward_with_layers(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.forward_with_layers(self.frontend(waveform))


def build_encoder(spec: Spec, features: FeaturesConfig) -> Encoder:
    entry = ENCODERS.get(spec.name, key="encoder.name")
    return entry.obj(spec.options, in_features=features.n_mels)


def build_speaker_model(spec: Spec, features: FeaturesConfig) -> SpeakerModel:
    return SpeakerModel(build_encoder(spec, features), features)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
