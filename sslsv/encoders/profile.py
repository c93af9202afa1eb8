"""Size and compute of an encoder: parameters and multiply-accumulates (MACs) per second of audio.

Convention: MACs of Conv1d/Conv2d/ConvTranspose1d/ConvTranspose2d, Linear and GRU layers only, counted with forward
hooks on one utterance (batch 1); 1 MAC = 2 FLOPs. Normalisation, activations, pooling arithmetic (attention
softmax, LDE distances) and matrix products outside those layers are not counted; they are small next to the
convolutions of the encoders here. This is the convention of the exact reference counts ("arith") quoted in
docs/encoders.md: Fast ResNet-34 at 40 mels counts 0.447 GMACs for 2 s, ECAPA-TDNN C=1024/3072 3.77 GMACs.

The input is the log-mel sequence the front-end would produce: 1 + samples // hop frames (torchaudio's centred
STFT; 101 frames for 1 s at a 10 ms hop). Encoders that read waveforms (`input_kind == "waveform"`) get samples.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from sslsv.encoders.base import Encoder

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """MACs of one call of a conv/linear layer, over the whole batch."""
    if isinstance(module, _TRANSPOSED):
        # every input element is multiplied by a (C_out / groups) x kernel slice
        per_input = module.out_channels // module.groups * int(torch.tensor(module.kernel_size).prod())
        return inputs[0].numel() * per_input
    if isinstance(module, _CONVS):
        per_output = module.in_channels // module.groups * int(torch.tensor(module.kernel_size).prod())
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.GRU):
        # three gates, each an input and a recurrent product, per layer and direction and time step
        sequence = inputs[0]
        steps = sequence.shape[0] * sequence.shape[1]  # batch x time, whichever order
        hidden, directions = module.hidden_size, 2 if module.bidirectional else 1
        per_step = sum(3 * hidden * ((module.input_size if layer == 0 else hidden * directions) + hidden)
                       for layer in range(module.num_layers))
        return steps * per_step * directions
    return 0


@contextlib.contextmanager
def counting_macs(model: nn.Module) -> Iterator[list[int]]:
    """Count the conv/linear MACs of every call made inside the block into `total[0]`, over all sub-modules of
    `model` (encoder, projector, teacher, key encoder ...), whatever the batch composition of each call."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        total[0] += _layer_macs(module, inputs, output)

    layers = [m for m in model.modules() if isinstance(m, (*_CONVS, *_TRANSPOSED, nn.Linear, nn.GRU))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv/linear MACs of `model(x)` (in eval mode) per batch element."""
    was_training = model.training
    model.eval()
    try:
        with counting_macs(model) as total, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return total[0] // x.shape[0]


def profile_encoder(model: Encoder, seconds: float = 1.0, sample_rate: int = 16000, n_mels: int = 40,
                    hop_ms: float = 10.0) -> dict:
    """Parameters, trainable parameters and conv/linear MACs per second of audio of an encoder.

    Args:
        model: an encoder taking log-mel features (B, n_mels, T) (or waveforms (B, S) if its
            `input_kind` is "waveform").
        seconds: length of the probe utterance; MACs are divided by it.
        sample_rate, n_mels, hop_ms: the front-end that feeds the encoder.
    Returns:
        dict(params, trainable, macs_per_second, macs, frames, seconds).
    """
    samples = int(round(seconds * sample_rate))
    frames = 1 + samples // int(round(sample_rate * hop_ms / 1000))
    device = next(model.parameters()).device
    if model.input_kind == "waveform":
        x = torch.randn(1, samples, device=device)
    else:
        x = torch.randn(1, n_mels, frames, device=device)
    macs = count_macs(model, x)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "macs_per_second": macs / seconds,
        "macs": macs,
        "frames": frames,
        "seconds": seconds,
    }
