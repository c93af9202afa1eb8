"""ONNX export of a run's embedding model, and checkpoint averaging.

The exported graph maps waveform (B, S) float32 at the run's sample rate to the representation (B, D), with
dynamic batch and time axes. torch.onnx's TorchScript exporter cannot export the STFT inside torchaudio's
MelSpectrogram (it fails on the framing reshape), so the export swaps the log-mel front-end for `ConvLogMel`:
the same computation written with ops every ONNX runtime has - reflect padding, a strided Conv1d whose kernels
are the Hamming-windowed DFT basis (real and imaginary parts), |X|^2, the same mel filterbank matrix, log and
instance normalisation. It uses the run's own filterbank and window, so the weights are unchanged and the export
is checked against the PyTorch model (max |difference| <= 1e-4 on two lengths and batch sizes).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from sslsv.audio.features import LogMel
from sslsv.encoders.base import SpeakerModel
from sslsv.runs import RunLayout, atomic_save, average_state_dicts

__all__ = ["ConvLogMel", "ExportError", "average_checkpoints", "export_onnx", "verify_onnx"]


class ExportError(RuntimeError):
    """Export or averaging failed; the message says which file or check."""


class ConvLogMel(nn.Module):
    """LogMel (sslsv.audio.features) computed with a Conv1d DFT: waveform (B, S) -> (B, n_mels, T).

    Equivalent to torch.stft(center=True, pad_mode="reflect", onesided=True) with the module's window padded
    to n_fft as torch.stft does, power 2, then the same mel matrix, log(x + 1e-6) and instance normalisation.
    """

    def __init__(self, logmel: LogMel):
        super().__init__()
        spec = logmel.melspec.spectrogram
        n_fft, hop = int(spec.n_fft), int(spec.hop_length)
        if spec.power != 2.0 or spec.normalized or not spec.center or spec.pad_mode != "reflect" or spec.pad:
            raise ExportError("ConvLogMel supports power-2, centred, reflect-padded, unnormalised spectrograms only")
        window = spec.window.detach().double()
        left = (n_fft - len(window)) // 2
        window = F.pad(window, (left, n_fft - len(window) - left))  # (n_fft,), centred as torch.stft does
        n_freqs = n_fft // 2 + 1
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * k * t / n_fft  # (n_freqs, n_fft)
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # (2 n_freqs, n_fft)
        self.register_buffer("basis", basis.float()[:, None, :])  # (2 n_freqs, 1, n_fft)
        self.register_buffer("mel", logmel.melspec.mel_scale.fb.detach().float())  # (n_freqs, n_mels)
        self.n_fft, self.hop, self.n_freqs = n_fft, hop, n_freqs
        self.preemphasis = logmel.preemphasis
        self.instance_norm = logmel.instance_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.preemphasis > 0:
            x = torch.cat([x[:, :1], x[:, 1:] - self.preemphasis * x[:, :-1]], dim=1)
        pad = self.n_fft // 2
        x = F.pad(x[:, None, :], (pad, pad), mode="reflect")  # (B, 1, S + n_fft)
        spec = F.conv1d(x, self.basis, stride=self.hop)  # (B, 2 n_freqs, T)
        power = spec[:, : self.n_freqs] ** 2 + spec[:, self.n_freqs :] ** 2  # (B, n_freqs, T)
        features = torch.log(torch.matmul(power.transpose(1, 2), self.mel).transpose(1, 2) + 1e-6)  # (B, n_mels, T)
        if self.instance_norm:
            mean = features.mean(dim=-1, keepdim=True)
            var = ((features - mean) ** 2).mean(dim=-1, keepdim=True)
            features = (features - mean) * torch.rsqrt(var + 1e-5)
        return features


class _ExportModel(nn.Module):
    def __init__(self, model: SpeakerModel):
        super().__init__()
        self.frontend = ConvLogMel(model.frontend) if isinstance(model.frontend, LogMel) else model.frontend
        self.encoder = model.encoder

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(waveform))


def export_onnx(model: SpeakerModel, path: str | Path, sample_rate: int, opset: int = 17,
                check: bool = True) -> Path:
    """Write `model` as ONNX (input "waveform" (batch, samples), output "embedding" (batch, D)).

    Args:
        model: the run's SpeakerModel (from sslsv.evaluation.evaluate.load_model).
        path: output .onnx file.
        sample_rate: the model's rate (recorded in the graph's metadata, and used for the check lengths).
        opset: ONNX opset.
        check: run verify_onnx afterwards (needs onnxruntime).

    Raises:
        ExportError: the exporter failed, or the check found a difference above 1e-4.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _ExportModel(model.cpu().eval()).eval()
    example = torch.randn(2, sample_rate)
    try:
        torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["waveform"], output_names=["embedding"],
                          dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}})
    except Exception as error:  # noqa: BLE001 - name what failed
        raise ExportError(f"ONNX export of {type(model.encoder).__name__} failed: {error}") from error
    import onnx

    proto = onnx.load(str(path))
    meta = proto.metadata_props.add()
    meta.key, meta.value = "sample_rate", str(sample_rate)
    onnx.save(proto, str(path))
    if check:
        verify_onnx(model, path, sample_rate)
    return path


def verify_onnx(model: SpeakerModel, path: str | Path, sample_rate: int, atol: float = 1e-4,
                shapes: Sequence[tuple[int, int]] | None = None) -> float:
    """Compare onnxruntime's output with the PyTorch model on random waveforms of several shapes.

    Returns:
        The largest absolute difference seen.

    Raises:
        ExportError: a difference above `atol` (shape and value named).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    model = model.cpu().eval()
    for batch, samples in shapes or [(1, int(1.3 * sample_rate)), (3, int(2.7 * sample_rate) + 17)]:
        x = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = session.run(["embedding"], {"waveform": x})[0]
        diff = float(np.abs(ref - got).max())
        worst = max(worst, diff)
        if diff > atol:
            raise ExportError(f"{path}: ONNX output differs from PyTorch by {diff:.2e} > {atol} for input {x.shape}")
    return worst


def average_checkpoints(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Average encoder weight files (e.g. checkpoints/weights_e*.pt) into `out` (written atomically).

    Raises:
        ExportError: no paths, a missing file, or files whose keys differ.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ExportError("no weight files to average")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ExportError(f"weight file(s) not found: {', '.join(missing)}")
    try:
        state = average_state_dicts(paths)
    except KeyError as error:
        raise ExportError(f"the weight files do not have the same keys (missing {error} in one of {paths})") from None
    atomic_save(state, out)
    return Path(out)


def last_epoch_weights(run_dir: str | Path, last: int) -> list[Path]:
    """The `last` most recent checkpoints/weights_e*.pt of a run.

    Raises:
        ExportError: the run keeps fewer (trainer.average_last bounds how many are kept).
    """
    found = RunLayout(run_dir).list_epoch_weights()
    if len(found) < last:
        raise ExportError(f"{run_dir}/checkpoints has {len(found)} weights_e*.pt file(s), fewer than --last {last} "
                          f"(the trainer keeps trainer.average_last of them)")
    return found[-last:]
