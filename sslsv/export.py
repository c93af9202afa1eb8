"""ONNX export of a run's embedding model, and checkpoint averaging.

The exported graph maps waveform (B, S) float32 at the run's sample rate to the representation (B, D), with
dynamic batch and time axes. torch.onnx's TorchScript exporter cannot export the STFT inside torchaudio's
MelSpectrogram (it fails on the framing reshape), so the export swaps the log-mel front-end for `ConvLogMel`:
the same computation written with ops every ONNX runtime has - reflect padding, a strided Conv1d whose kernels
are the Hamming-windowed DFT basis (real and imaginary parts), |X|^2, the same mel filterbank matrix, log and
instance normalisation. It uses the run's own filterbank and window, so the weights are unchanged and the export
is checked against the PyTorch model (max |difference| <= 1e-4 on two lengths and batch sizes).

Two options (`sslsv export --with-lengths --normalize`):

* lengths: a second input "lengths" (B,) int64, the number of valid samples of each row, so that utterances of
  different lengths can share a zero-padded batch. Inside the graph (`_ExportModel`): each row's padding is
  filled with the row itself (its first n_fft / 2 samples reflected, as torch.stft pads a row alone, then the row
  repeated from its start, so that squeeze-excitation and other averages over time see its speech, not
  silence); the log-mel instance normalisation uses the valid frames only; every zero-padded convolution of the
  encoder sees zeros right after the valid end of its input, as the row alone does (`_ConvGuard`, a forward
  pre-hook; the valid length at each layer is the input's scaled by the layer's time stride); and every temporal
  pooling layer (sslsv.encoders.pooling) is replaced by its masked form (`masked_pooling`: statistics, attention
  weights, dictionary assignments over the valid frames; the GRU read-out at the last valid frame). What remains
  is the effect of the padding's content on averages over the whole time axis: cosine >= 0.99997 with the
  utterance embedded alone on the demo run, >= 0.9999 for the registered encoder examples except SSRFNet
  (0.99988; docs/evaluation.md). With every length equal to S the graph computes the plain model (checked to 1e-4).
* normalize: the output rows are L2-normalised (what cosine scoring uses), as `sslsv.load(run).embed` returns.
"""
from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from sslsv.audio.features import LogMel
from sslsv.encoders.base import SpeakerModel
from sslsv.encoders.pooling import (AttentiveStatisticsPooling, ContextAttentiveStatisticsPooling,
                                    GlobalAveragePooling, LearnableDictionaryEncoding, Pooling, RecurrentPooling,
                                    SelfAttentivePooling, StatisticsPooling)
from sslsv.runs import RunLayout, atomic_save, average_state_dicts

__all__ = ["ConvLogMel", "ExportError", "average_checkpoints", "export_onnx", "masked_pooling", "padding_cosine",
           "verify_onnx"]


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

    def num_frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Frames of a centred STFT of `samples` samples: samples // hop + 1 (int64 tensor in, int64 out)."""
        return torch.div(samples, self.hop, rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Log-mel features (B, n_mels, T); with `frames` (B,) valid frames per row, the instance normalisation
        uses only those frames of each row (padding does not shift the statistics)."""
        x = x.float()
        if self.preemphasis > 0:
            x = torch.cat([x[:, :1], x[:, 1:] - self.preemphasis * x[:, :-1]], dim=1)
        pad = self.n_fft // 2
        x = F.pad(x[:, None, :], (pad, pad), mode="reflect")  # (B, 1, S + n_fft)
        spec = F.conv1d(x, self.basis, stride=self.hop)  # (B, 2 n_freqs, T)
        power = spec[:, : self.n_freqs] ** 2 + spec[:, self.n_freqs :] ** 2  # (B, n_freqs, T)
        features = torch.log(torch.matmul(power.transpose(1, 2), self.mel).transpose(1, 2) + 1e-6)  # (B, n_mels, T)
        if self.instance_norm:
            if frames is None:
                mean = features.mean(dim=-1, keepdim=True)
                var = ((features - mean) ** 2).mean(dim=-1, keepdim=True)
            else:
                mask = _time_mask(features, frames)  # (B, 1, T)
                count = mask.sum(dim=-1, keepdim=True)
                mean = (features * mask).sum(dim=-1, keepdim=True) / count
                var = (((features - mean) ** 2) * mask).sum(dim=-1, keepdim=True) / count
            features = (features - mean) * torch.rsqrt(var + 1e-5)
        return features


def _positions(x: torch.Tensor) -> torch.Tensor:
    """(T,) float 0..T-1 for the last axis of x, built from x itself so that traced graphs keep T dynamic."""
    ones = torch.ones_like(x.reshape(-1, x.shape[-1])[0], dtype=torch.float32)
    return torch.cumsum(ones, dim=0) - 1


def _time_mask(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, T) float mask of x (B, ..., T): 1 for the first valid[b] positions of row b."""
    return (_positions(x)[None, :] < valid.float()[:, None]).float()[:, None, :]


class _ValidFrames:
    """What the masked poolings need to know, set by _ExportModel.forward before the encoder runs: the valid
    length of the encoder's input (frames, or samples for waveform encoders) and that input's full length."""

    valid: torch.Tensor | None = None  # (B,) float
    total: torch.Tensor | None = None  # () float


def _valid_at(state: _ValidFrames, frames: torch.Tensor) -> torch.Tensor:
    """(B,) valid positions of a time axis of `frames` positions inside the encoder: the encoder input's valid length
    times frames / the input's length (the time stride so far), rounded, within [1, frames]."""
    valid = torch.floor(state.valid * frames / state.total + 0.5)
    return torch.minimum(valid.clamp(min=1.0), frames)


def _masked_mean_std(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """As sslsv.encoders.pooling._weighted_mean_std: x (B, C, T), weights (B, C or 1, T) summing to 1 over T."""
    mean = (x * w).sum(dim=2)
    var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=eps).sqrt()


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(torch.where(mask > 0, logits, torch.full_like(logits, -1e30)), dim=dim)


def _sap_logits(pooling: SelfAttentivePooling, x: torch.Tensor) -> torch.Tensor:
    """The attention logits of SelfAttentivePooling.weights, before its softmax over time: (B, T, 1)."""
    return torch.tanh(pooling.attention(x.transpose(1, 2))) @ pooling.context


def masked_pooling(pooling: Pooling, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`pooling(x)` over the first valid[b] frames of each row b only: x (B, C, T), valid (B,) -> (B, out_dim).

    The same computation as each pooling of sslsv.encoders.pooling (equal to it when valid == T), with statistics,
    attention softmaxes and dictionary assignments restricted to the valid frames, and the GRU read at the last
    valid frame.

    Raises:
        ExportError: a pooling class without a masked form here.
    """
    mask = _time_mask(x, valid)  # (B, 1, T)
    count = mask.sum(dim=2)  # (B, 1)
    if isinstance(pooling, AttentiveStatisticsPooling):  # before SAP: it subclasses it
        w = _masked_softmax(_sap_logits(pooling, x), mask.transpose(1, 2), dim=1)  # (B, T, 1)
        frames = x.transpose(1, 2)
        mean = (frames * w).sum(dim=1)
        var = (frames.pow(2) * w).sum(dim=1) - mean.pow(2)
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=1)
    if isinstance(pooling, SelfAttentivePooling):
        w = _masked_softmax(_sap_logits(pooling, x), mask.transpose(1, 2), dim=1)
        return (x.transpose(1, 2) * w).sum(dim=1)
    if isinstance(pooling, StatisticsPooling):
        mean = (x * mask).sum(dim=2) / count
        var = ((x - mean.unsqueeze(2)).pow(2) * mask).sum(dim=2) / count
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=1)
    if isinstance(pooling, GlobalAveragePooling):
        return (x * mask).sum(dim=2) / count
    if isinstance(pooling, RecurrentPooling):
        contexts = pooling.contexts(x.transpose(1, 2))  # (B, T, H): state t has read frames 1..t only
        last = (valid.long() - 1).clamp(min=0)[:, None, None].expand(-1, 1, contexts.shape[2])
        return torch.gather(contexts, 1, last).squeeze(1)
    if isinstance(pooling, ContextAttentiveStatisticsPooling):
        h = x
        if pooling.global_context:
            mean, std = _masked_mean_std(x, mask / count.unsqueeze(2), pooling.eps)
            T = x.shape[2]
            h = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, T), std.unsqueeze(2).expand(-1, -1, T)], dim=1)
        w = pooling.dropout(_masked_softmax(pooling.attention(h), mask, dim=2))
        mean, std = _masked_mean_std(x, w, pooling.eps)
        return torch.cat([mean, std], dim=1)
    if isinstance(pooling, LearnableDictionaryEncoding):
        frames = x.float().transpose(1, 2)  # (B, T, C)
        distances = (frames.pow(2).sum(dim=2, keepdim=True) - 2 * frames @ pooling.codewords.t()
                     + pooling.codewords.pow(2).sum(dim=1)).clamp(min=0)
        w = torch.softmax(-F.softplus(pooling.smoothing) * distances, dim=2) * mask.transpose(1, 2)  # (B, T, K)
        e = (w.transpose(1, 2) @ frames) / w.sum(dim=1).unsqueeze(2).clamp(min=1e-9) - pooling.codewords
        e = e.flatten(1)
        return F.normalize(e, dim=1) if pooling.l2_normalize else e
    raise ExportError(f"--with-lengths: no masked form of the pooling {type(pooling).__name__} "
                      f"(sslsv.export.masked_pooling)")


# The pooling classes masked_pooling handles (tests check that every registered pooling is one of them).
MASKED_POOLINGS = (SelfAttentivePooling, StatisticsPooling, GlobalAveragePooling, RecurrentPooling,
                   ContextAttentiveStatisticsPooling, LearnableDictionaryEncoding)


class _MaskedPooling(nn.Module):
    """Stands in for one pooling layer of the exported encoder: its valid frames are the encoder input's valid
    length scaled by the pooling input's length over the encoder input's (the encoder's time stride), rounded."""

    def __init__(self, pooling: Pooling, state: _ValidFrames):
        super().__init__()
        self.pooling = pooling
        self.state = state
        self.out_dim = pooling.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state.valid is None:  # called without lengths: the plain pooling
            return self.pooling(x)
        return masked_pooling(self.pooling, x, _valid_at(self.state, _positions(x)[-1] + 1))


class _ConvGuard:
    """Forward pre-hook of a zero-padded convolution of the exported encoder: zeroes the `width` positions of its
    input right after each row's valid end (last axis = time), so that the outputs at valid positions read the
    zeros they read when the row is alone (its own zero padding), not the padding's content."""

    def __init__(self, state: _ValidFrames, width: int):
        self.state = state
        self.width = width

    def __call__(self, module: nn.Module, inputs: tuple) -> tuple | None:
        if self.state.valid is None:
            return None
        x = inputs[0]
        positions = _positions(x)  # (T,)
        valid = _valid_at(self.state, positions[-1] + 1)[:, None]  # (B, 1)
        keep = ((positions[None, :] < valid) | (positions[None, :] >= valid + self.width)).float()  # (B, T)
        # Rows of x may fold the batch with other axes, batch-major ((B * H, C, T) in SV-Mixer's token mixing).
        guarded = (x.reshape(valid.shape[0], -1, x.shape[-1]) * keep[:, None, :]).reshape(x.shape)
        return (guarded,) + tuple(inputs[1:])


def _right_padding(conv: nn.modules.conv._ConvNd) -> int:
    """Zero positions a convolution reads past the end of its input's last axis."""
    reach = conv.dilation[-1] * (conv.kernel_size[-1] - 1)
    if isinstance(conv.padding, str):  # "same": the extra sample goes to the right; "valid": none
        return reach - reach // 2 if conv.padding == "same" else 0
    return min(int(conv.padding[-1]), reach)


def _guard_convolutions(encoder: nn.Module, state: _ValidFrames) -> None:
    for module in encoder.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode == "zeros":
            width = _right_padding(module)
            if width > 0:
                module.register_forward_pre_hook(_ConvGuard(state, width))


def _mask_poolings(encoder: nn.Module, state: _ValidFrames) -> int:
    """Replace every temporal pooling layer (sslsv.encoders.pooling.Pooling) of `encoder` by its masked form, in
    place; returns how many were replaced."""
    found = [(parent, name, child) for parent in encoder.modules() for name, child in parent.named_children()
             if isinstance(child, Pooling)]
    for parent, name, child in found:
        if not isinstance(child, MASKED_POOLINGS):
            raise ExportError(f"--with-lengths: no masked form of the pooling {type(child).__name__} "
                              f"(sslsv.export.masked_pooling)")
        setattr(parent, name, _MaskedPooling(child, state))
    return len(found)


class _ExportModel(nn.Module):
    """What is exported: waveform (B, S) [, lengths (B,)] -> embedding (B, D), optionally L2-normalised."""

    def __init__(self, model: SpeakerModel, with_lengths: bool = False, normalize: bool = False):
        super().__init__()
        self.frontend = ConvLogMel(model.frontend) if isinstance(model.frontend, LogMel) else model.frontend
        self.encoder = model.encoder
        self.normalize = normalize
        self.state = _ValidFrames()
        if with_lengths:
            self.encoder = copy.deepcopy(model.encoder)  # the run's model keeps its own poolings
            if not _mask_poolings(self.encoder, self.state):
                raise ExportError(f"--with-lengths: {type(model.encoder).__name__} has no temporal pooling layer "
                                  f"of sslsv.encoders.pooling to mask")
            _guard_convolutions(self.encoder, self.state)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            embedding = self.encoder(self.frontend(waveform))
        else:
            embedding = self._masked(waveform.float(), lengths)
        return F.normalize(embedding, dim=1) if self.normalize else embedding

    def _masked(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        samples = _positions(waveform).long()[None, :]  # (1, S)
        lengths = torch.minimum(lengths.long().clamp(min=1), samples[:, -1] + 1)[:, None]  # (B, 1)
        # Fill each row's padding with the row itself: repeated from its start (index s mod length), so that
        # averages over the whole time axis (squeeze-excitation) see speech of the row, not silence; and, for
        # log-mel models, the first n_fft / 2 samples after the end reflected (x[l-2], x[l-3], ...), what
        # torch.stft's reflect padding gives the row alone, so that its last frames are computed as alone.
        index = torch.remainder(samples, lengths)  # (B, S)
        if isinstance(self.frontend, ConvLogMel):
            after = samples - lengths
            reflect = (after >= 0) & (after < self.frontend.n_fft // 2)
            index = torch.where(reflect, (lengths - 2 - after).clamp(min=0), index)
        waveform = torch.gather(waveform, 1, index)
        lengths = lengths[:, 0]
        if isinstance(self.frontend, ConvLogMel):
            valid = self.frontend.num_frames(lengths)
            features = self.frontend(waveform, valid)
        else:
            valid = lengths
            features = self.frontend(waveform)
        self.state.valid = valid.float()
        self.state.total = _positions(features)[-1] + 1
        try:
            return self.encoder(features)
        finally:
            self.state.valid = self.state.total = None


def export_onnx(model: SpeakerModel, path: str | Path, sample_rate: int, opset: int = 17,
                check: bool = True, with_lengths: bool = False, normalize: bool = False) -> Path:
    """Write `model` as ONNX.

    Inputs: "waveform" (batch, samples) float32 at `sample_rate`; with `with_lengths` also "lengths" (batch,) int64,
    the valid samples of each row (the rest is padding; values are clipped to [1, samples]). Output: "embedding"
    (batch, D) float32, L2-normalised rows with `normalize`. The batch and samples axes are dynamic. Metadata:
    sample_rate, normalized ("0"/"1"), with_lengths ("0"/"1").

    Args:
        model: the run's SpeakerModel (from sslsv.runs.load_model).
        path: output .onnx file.
        sample_rate: the model's rate (recorded in the graph's metadata, and used for the check lengths).
        opset: ONNX opset.
        check: run verify_onnx afterwards (needs onnxruntime).
        with_lengths: add the "lengths" input (masked pooling; module docstring).
        normalize: L2-normalise the output.

    Raises:
        ExportError: the exporter failed, the encoder has no pooling to mask (with_lengths), or the check found a
            difference above 1e-4.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install onnx onnxruntime "
                          "(or pip install -e .[onnx])") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _ExportModel(model.cpu().eval(), with_lengths, normalize).eval()
    example = (torch.randn(2, sample_rate),)
    names, axes = ["waveform"], {"waveform": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}}
    if with_lengths:
        example += (torch.tensor([sample_rate, sample_rate // 2], dtype=torch.int64),)
        names.append("lengths")
        axes["lengths"] = {0: "batch"}
    try:
        with warnings.catch_warnings():  # the tracer's notes on Python-level shapes; the export is checked numerically
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
            torch.onnx.export(wrapped, example, str(path), dynamo=False, opset_version=opset,
                              input_names=names, output_names=["embedding"], dynamic_axes=axes)
    except Exception as error:  # noqa: BLE001 - name what failed
        raise ExportError(f"ONNX export of {type(model.encoder).__name__} failed: {error}") from error
    proto = onnx.load(str(path))
    for key, value in (("sample_rate", str(sample_rate)), ("normalized", str(int(normalize))),
                       ("with_lengths", str(int(with_lengths)))):
        meta = proto.metadata_props.add()
        meta.key, meta.value = key, value
    onnx.save(proto, str(path))
    if check:
        verify_onnx(model, path, sample_rate)
    return path


def _session(path: str | Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("checking the export needs onnxruntime: pip install onnxruntime (or --no-check)") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    return session, meta.get("normalized") == "1", {i.name for i in session.get_inputs()} >= {"lengths"}


def verify_onnx(model: SpeakerModel, path: str | Path, sample_rate: int, atol: float = 1e-4,
                shapes: Sequence[tuple[int, int]] | None = None) -> float:
    """Compare onnxruntime's output with the PyTorch model on random waveforms of several shapes (the reference
    L2-normalised when the export is; with a "lengths" input, every length is the full length).

    Returns:
        The largest absolute difference seen.

    Raises:
        ExportError: a difference above `atol` (shape and value named); onnxruntime not installed.
    """
    session, normalized, with_lengths = _session(path)
    rng = np.random.default_rng(0)
    worst = 0.0
    model = model.cpu().eval()
    for batch, samples in shapes or [(1, int(1.3 * sample_rate)), (3, int(2.7 * sample_rate) + 17)]:
        x = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x))
            ref = (F.normalize(ref, dim=1) if normalized else ref).numpy()
        feed = {"waveform": x}
        if with_lengths:
            feed["lengths"] = np.full(batch, samples, dtype=np.int64)
        got = session.run(["embedding"], feed)[0]
        diff = float(np.abs(ref - got).max())
        worst = max(worst, diff)
        if diff > atol:
            raise ExportError(f"{path}: ONNX output differs from PyTorch by {diff:.2e} > {atol} for input {x.shape}")
    return worst


def padding_cosine(model: SpeakerModel, path: str | Path, waveforms: Sequence[np.ndarray]) -> float:
    """Smallest cosine between the PyTorch model's embedding of each waveform alone and the export's embedding of
    it zero-padded into one batch with the others (export with a "lengths" input).

    Args:
        waveforms: 1-D float32 waveforms at the model's rate, of different lengths.

    Raises:
        ExportError: the export has no "lengths" input; onnxruntime not installed.
    """
    session, _, with_lengths = _session(path)
    if not with_lengths:
        raise ExportError(f"{path}: the export has no lengths input (export with --with-lengths)")
    lengths = np.array([len(w) for w in waveforms], dtype=np.int64)
    batch = np.zeros((len(waveforms), int(lengths.max())), dtype=np.float32)
    for row, wave in zip(batch, waveforms):
        row[: len(wave)] = wave
    padded = session.run(["embedding"], {"waveform": batch, "lengths": lengths})[0]
    model = model.cpu().eval()
    with torch.no_grad():
        alone = torch.cat([model(torch.from_numpy(np.asarray(w, np.float32))[None]) for w in waveforms])
    return float(F.cosine_similarity(alone, torch.from_numpy(padded), dim=1).min())


def random_waveforms(sample_rate: int, seconds: Sequence[float] = (1.1, 2.3, 3.0), seed: int = 0) -> list[np.ndarray]:
    """Noise waveforms of the given durations (for padding_cosine when no audio is at hand)."""
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * sample_rate))).astype(np.float32) for s in seconds]


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
        raise ExportError(f"{run_dir}/checkpoints has {len(found)} weights_e*.pt file(s), fewer than --epochs {last} "
                          f"(the trainer keeps trainer.average_last of them)")
    return found[-last:]
