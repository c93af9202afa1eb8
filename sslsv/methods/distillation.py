"""OS-KDFT: one-stage knowledge distillation for fine-tuning (Heo et al., Interspeech 2023; `Jungwoo4021/OS-KDFT`),
as used to train SV-Mixer and SSRFNet. See ../../../shared/reference/architectures.md, sections 5 to 7.

The student trains in ONE stage on

    L = L_speaker + kd_weight * L_KD

L_speaker: AAM-softmax on the manifest labels (s 30, m 0.2, as `supervised`), or nothing (`speaker_loss: none`).
L_KD (DistilHuBERT-style, SSRFNet `loss/distillhubert_loss.py`): one head per selected teacher state,
Linear(H_s -> D_t) -> GELU -> Linear(D_t -> D_t) (`sslsv.encoders.ssrfnet.DistillationHeads`), reads the student's
state `student_layer` (default the last) and predicts teacher state `teacher_layers[h]`:

    L_KD = mean_b sum_h [ mean_{t,d} |p_{bhtd} - y_{bhtd}|  -  lambda * R_t log sigmoid(cos(p_{bht}, y_{bht})) ]

with R_t = mean over frames (`cosine_reduction: mean`, the default, as DistilHuBERT; independent of the crop length)
or the sum over frames (`cosine_reduction: sum`, SSRFNet's code; then L_KD equals
`sslsv.encoders.ssrfnet.distillation_loss`). Views are averaged.

The teacher: any trained run of this toolkit whose encoder exposes `forward_layers` (sv_mixer, ssrfnet,
sv_mixer_lap, sv_mixer_unipool, redimnet, ecapa_tdnn), given as a LOCAL run directory (`method.teacher_run`; weights
chosen as evaluate.py does: model_avg.pt, else model.pt, else the last checkpoints/weights_e*.pt) or one of its
weight files.
It is frozen: requires_grad False, kept in eval mode when the method is put in train mode, run under torch.no_grad,
and left out of the optimiser. Its frames are resampled in time to the student's frame count (linear interpolation)
when the two differ (e.g. a 10-ms ReDimNet teacher for a 20-ms SV-Mixer student).

The student: any encoder with `forward_with_states` (SSRFNet: frames and SV-Mixer states in one pass) or
`forward_layers` (SV-Mixer and its layer-wise variants, ReDimNet, ECAPA-TDNN). The states are read from the same
forward pass that makes the embedding when the encoder's `forward` goes through those methods (SV-Mixer, SSRFNet,
sv_mixer_lap/unipool, ECAPA-TDNN); otherwise (ReDimNet) a second pass computes them.

Saved models: `embedding_model()` is the student alone, so model.pt / model_avg.pt hold no teacher or head weights.
The method's state dict (resumable checkpoints) does hold the frozen teacher, so a resumed run keeps the teacher it
started with.

Deviations from the references:
- No WavLM-Large teacher (none is available offline): the teacher is a run trained in this toolkit (section 7,
  option 3). No offline cache of teacher states (`path_replacement` in the reference).
- The speaker loss is plain AAM-softmax; the reference's inter-top-5 impostor penalty is not implemented.
- Default `cosine_reduction: mean` (the brief and DistilHuBERT); SSRFNet's code sums over frames.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError
from sslsv.encoders.base import SpeakerModel
from sslsv.encoders.ssrfnet import DistillationHeads
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo
from sslsv.methods.supervised import AAMSoftmaxLoss
from sslsv.registry import METHODS

RESUMABLE_CHECKPOINT = re.compile(r"checkpoint_e\d+_s\d+\.pt$")


@dataclass
class OSKDFTConfig:
    teacher_run: str  # local run directory of a trained layer-wise model (or one of its weight files)
    teacher_layers: list[int] = field(default_factory=lambda: [4, 8, 12])  # teacher states to predict (0 = input)
    student_layer: int = -1  # student state the heads read (-1: the last)
    kd_weight: float = 1.0
    cosine_weight: float = 1.0  # lambda
    cosine_reduction: Literal["mean", "sum"] = "mean"  # over frames; "sum" is SSRFNet's code
    speaker_loss: Literal["aam", "none"] = "aam"
    scale: float = 30.0  # AAM-softmax s
    margin: float = 0.2  # AAM-softmax m

    def __post_init__(self) -> None:
        if not str(self.teacher_run).strip():
            raise ConfigError("method.teacher_run: empty; give the run directory of a trained layer-wise model")
        if not self.teacher_layers:
            raise ConfigError("method.teacher_layers: needs at least one teacher state")
        if len(set(self.teacher_layers)) != len(self.teacher_layers):
            raise ConfigError(f"method.teacher_layers: duplicates in {self.teacher_layers}")
        if self.kd_weight < 0 or self.cosine_weight < 0:
            raise ConfigError("method.kd_weight: kd_weight and cosine_weight must be >= 0")
        if self.speaker_loss == "none" and self.kd_weight == 0:
            raise ConfigError("method.kd_weight: 0 with speaker_loss 'none' leaves nothing to train")
        if self.scale <= 0:
            raise ConfigError("method.scale: must be positive")
        if not 0 <= self.margin < math.pi / 2:
            raise ConfigError("method.margin: must be in [0, pi/2)")


# ------------------------------------------------------------------------------------------------ loss and frames


def kd_loss(predictions: torch.Tensor, targets: torch.Tensor, cosine_weight: float = 1.0,
            reduction: str = "mean") -> torch.Tensor:
    """L_KD (module docstring): predictions p and teacher targets y, (B, heads, T, D) each -> scalar.

    Per head: mean L1 over frames and channels minus lambda * (mean or sum over frames) of log sigmoid(cos); summed
    over heads, averaged over the batch. Targets are detached.
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
    predictions, targets = predictions.float(), targets.detach().float()
    l1 = (predictions - targets).abs().mean(dim=(2, 3))  # (B, heads)
    log_sig = F.logsigmoid(F.cosine_similarity(predictions, targets, dim=-1))  # (B, heads, T)
    cos_term = log_sig.sum(dim=2) if reduction == "sum" else log_sig.mean(dim=2)
    return (l1 - cosine_weight * cos_term).sum(dim=1).mean()


def resample_frames(states: torch.Tensor, frames: int) -> torch.Tensor:
    """Linear interpolation in time (align_corners=False): (B, L, T, D) -> (B, L, frames, D); `states` itself
    when T == frames."""
    b, layers, t, d = states.shape
    if t == frames:
        return states
    x = states.permute(0, 1, 3, 2).reshape(b * layers, d, t)
    x = F.interpolate(x.float(), size=frames, mode="linear", align_corners=False).to(states.dtype)
    return x.reshape(b, layers, d, frames).permute(0, 1, 3, 2)


def as_states(output, who: str) -> torch.Tensor:
    """A `forward_layers` result as (B, L, T, D): a tensor as is, or a list of equal (B, C, T) tensors (ECAPA-TDNN)
    stacked and transposed."""
    if isinstance(output, torch.Tensor):
        if output.dim() != 4:
            raise ValueError(f"{who}: forward_layers returned {tuple(output.shape)}, expected (B, L, T, D)")
        return output
    shapes = {tuple(o.shape) for o in output}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"{who}: forward_layers returned tensors of shapes {sorted(shapes)}; OS-KDFT needs states of "
                         "one shape, (B, L, T, D) or a list of (B, C, T)")
    return torch.stack(list(output), dim=1).transpose(2, 3)


def has_states(encoder: nn.Module) -> bool:
    return hasattr(encoder, "forward_layers") or hasattr(encoder, "forward_with_states")


def states_only(model: SpeakerModel, wave: torch.Tensor) -> torch.Tensor:
    """Layer-wise states (B, L, T, D) of a SpeakerModel's encoder, without the embedding."""
    encoder, x = model.encoder, model.frontend(wave)
    if hasattr(encoder, "forward_layers"):
        return as_states(encoder.forward_layers(x), type(encoder).__name__)
    return as_states(encoder.forward_with_states(x)[1], type(encoder).__name__)


def embedding_and_states(model: SpeakerModel, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding (B, E), states (B, L, T, D)) in one pass where the encoder's forward goes through
    `forward_with_states` or `forward_layers` (their first call's output is captured), else two passes."""
    encoder, x = model.encoder, model.frontend(wave)
    name = "forward_with_states" if hasattr(encoder, "forward_with_states") else "forward_layers"
    original: Callable = getattr(encoder, name)
    captured: list = []

    def capture(*args, **kwargs):
        out = original(*args, **kwargs)
        if not captured:
            captured.append(out)
        return out

    object.__setattr__(encoder, name, capture)  # instance attribute: shadows the bound method for this call only
    try:
        embedding = encoder(x)
    finally:
        object.__delattr__(encoder, name)
    if not captured:  # forward() does not go through the state method (e.g. ReDimNet): second pass
        return embedding, states_only(model, wave)
    out = captured[0]
    return embedding, as_states(out[1] if name == "forward_with_states" else out, type(encoder).__name__)


# ------------------------------------------------------------------------------------------------ teacher


def load_teacher(path: str) -> tuple[SpeakerModel, str]:
    """The teacher's SpeakerModel (eval mode, CPU) and the weights loaded, from a run directory or a weight file
    (model.pt, model_avg.pt, checkpoints/weights_eN.pt) of a run. Errors name `method.teacher_run`. The global RNG
    is left as it was (building the model reseeds it)."""
    from sslsv.evaluation.evaluate import RunError, load_model
    from sslsv.training.checkpoint import load_checkpoint

    key = "method.teacher_run"
    how = ("a local run directory of a trained layer-wise model (e.g. models/supervised/sv_mixer_demo, made by "
           "python train.py ...) or one of its weight files")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{key}: {path} does not exist; give {how}")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            if p.is_dir():
                model, _, source = load_model(p)
            else:
                if RESUMABLE_CHECKPOINT.search(p.name):
                    raise ConfigError(f"{key}: {path} is a resumable trainer checkpoint; give {how}")
                run_dir = next((d for d in (p.parent, p.parent.parent) if (d / "config.yml").is_file()), None)
                if run_dir is None:
                    raise ConfigError(f"{key}: no config.yml next to {path} or one folder up; give {how}")
                model, _, _ = load_model(run_dir, random_weights=True)
                state = load_checkpoint(p)
                if not isinstance(state, dict):
                    raise ConfigError(f"{key}: {path} is not a weight file (state dict)")
                missing, unexpected = model.load_state_dict(state, strict=False)
                if missing or unexpected:
                    raise ConfigError(f"{key}: {path} does not match the encoder of {run_dir}: missing {missing[:5]}, "
                                      f"unexpected {unexpected[:5]}")
                source = str(p)
        except (RunError, RuntimeError) as error:
            raise ConfigError(f"{key}: {error}") from None
    return model.eval(), source


# ------------------------------------------------------------------------------------------------ method


@METHODS.register("os_kdft", config=OSKDFTConfig)
class OSKDFT(Method):
    """OS-KDFT (Heo et al., 2023): speaker loss + DistilHuBERT-head KD from a frozen teacher run's layer states."""

    def __init__(self, encoder: SpeakerModel, cfg: OSKDFTConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        self.uses_labels = cfg.speaker_loss == "aam"
        if not has_states(encoder.encoder):
            raise ConfigError(f"encoder.name: os_kdft needs a student that exposes layer-wise states "
                              f"(forward_layers or forward_with_states, e.g. sv_mixer, ssrfnet); "
                              f"{type(encoder.encoder).__name__} does not")
        if self.uses_labels and info.num_speakers < 2:
            raise ConfigError(f"method.speaker_loss: 'aam' needs at least 2 speakers, the manifest has "
                              f"{info.num_speakers} (or set method.speaker_loss=none)")

        teacher, self.teacher_source = load_teacher(cfg.teacher_run)
        if not hasattr(teacher.encoder, "forward_layers"):
            raise ConfigError(f"method.teacher_run: the encoder of {cfg.teacher_run} "
                              f"({type(teacher.encoder).__name__}) does not expose forward_layers; the teacher must "
                              f"be a layer-wise model (e.g. sv_mixer, ssrfnet, sv_mixer_lap, redimnet)")
        if teacher.sample_rate != encoder.sample_rate:
            raise ConfigError(f"method.teacher_run: the teacher reads {teacher.sample_rate} Hz audio, the student "
                              f"{encoder.sample_rate} Hz (features.sample_rate)")
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()

        # State counts and widths from a 3-s probe (3 s: what SV-Mixer's time_mixing "linear" accepts; eval mode and
        # no gradient, so no statistics move)
        teacher_states = self._teacher_states(self._probe(encoder.sample_rate))
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            student_states = states_only(encoder, self._probe(encoder.sample_rate))
        encoder.train(was_training)
        n_teacher, n_student = teacher_states.shape[1], student_states.shape[1]
        bad = [i for i in cfg.teacher_layers if not -n_teacher <= i < n_teacher]
        if bad:
            raise ConfigError(f"method.teacher_layers: {bad} out of range; the teacher has {n_teacher} states "
                              f"(0 .. {n_teacher - 1})")
        if not -n_student <= cfg.student_layer < n_student:
            raise ConfigError(f"method.student_layer: {cfg.student_layer} out of range; the student has {n_student} "
                              f"states (0 .. {n_student - 1})")
        self.teacher_layers = list(cfg.teacher_layers)
        self.student_layer = cfg.student_layer
        self.heads = DistillationHeads(student_states.shape[-1], teacher_states.shape[-1], len(self.teacher_layers))
        self.classifier = (AAMSoftmaxLoss(encoder.embed_dim, info.num_speakers, cfg.scale, cfg.margin)
                           if self.uses_labels else None)

    @staticmethod
    def _probe(sample_rate: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return 0.01 * torch.randn(1, 3 * sample_rate, generator=g)

    def train(self, mode: bool = True) -> OSKDFT:
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, batch-norm statistics fixed
        return self

    def _teacher_states(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            device = next(self.teacher.parameters()).device
            return as_states(self.teacher.encoder.forward_layers(self.teacher.frontend(wave.to(device))),
                             f"teacher {type(self.teacher.encoder).__name__}")

    def teacher_targets(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """Selected teacher states, resampled to `frames`: (B, S) -> (B, heads, frames, D_t), no gradient."""
        with torch.no_grad():
            states = self._teacher_states(wave)[:, self.teacher_layers]
            return resample_frames(states, frames)

    def forward(self, batch: Batch) -> StepOutput:
        embeddings, labels, kd_terms = [], [], []
        for view in batch.views:
            if self.classifier is not None:
                embedding, states = embedding_and_states(self.encoder, view)
                embeddings.append(embedding)
                labels.append(batch.labels)
            else:
                states = states_only(self.encoder, view)
            student = states[:, self.student_layer]  # (B, T, H)
            predictions = self.heads(student)  # (B, heads, T, D_t)
            targets = self.teacher_targets(view, student.shape[1])
            kd_terms.append(kd_loss(predictions, targets, self.cfg.cosine_weight, self.cfg.cosine_reduction))
        kd = torch.stack(kd_terms).mean()
        metrics = {"kd_loss": kd.detach()}
        if self.classifier is not None:
            speaker, accuracy = self.classifier(torch.cat(embeddings), torch.cat(labels))
            metrics["accuracy"] = accuracy
        else:
            speaker = kd.new_zeros(())
        metrics["speaker_loss"] = speaker.detach()
        return StepOutput(speaker + self.cfg.kd_weight * kd, metrics)
