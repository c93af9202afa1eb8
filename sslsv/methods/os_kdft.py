"""OS-KDFT: "One-Step Knowledge Distillation and Fine-Tuning in Using Large Pre-Trained Self-Supervised Learning
Models for Speaker Verification" (Heo et al., Interspeech 2023, arXiv:2305.17394; code `Jungwoo4021/OS-KDFT`),
as used to train SV-Mixer and SSRFNet. Registry name, file and config folder: `os_kdft`.

The student trains in ONE stage on

    L = L_speaker + kd_weight * L_KD

L_speaker: AAM-softmax on the manifest labels (s 30, m 0.2, as `supervised`), or nothing (`speaker_loss: none`).
L_KD (DistilHuBERT-style, SSRFNet `loss/distillhubert_loss.py`): one head per selected teacher state,
Linear(H_s -> D_t) -> GELU -> Linear(D_t -> D_t) (`DistillationHeads`), reads the student's state `student_layer`
(default the last) and predicts teacher state `teacher_layers[h]`:

    L_KD = mean_b sum_h [ mean_{t,d} |p_{bhtd} - y_{bhtd}|  -  lambda * R_t log sigmoid(cos(p_{bht}, y_{bht})) ]

with R_t = mean over frames (`cosine_reduction: mean`, the default, as DistilHuBERT; independent of the crop length)
or the sum over frames (`cosine_reduction: sum`, SSRFNet's code). `kd_loss` is the toolkit's only KD loss.
Views are averaged.

Both models are read through the encoder interface (sslsv/encoders/base.py): `has_layers`, `num_layers`,
`layer_dim`, `forward_layers` (B, L, T, D) and `forward_with_layers` (the embedding and the states in one pass where
the encoder's forward goes through its states: SV-Mixer, SSRFNet, sv_mixer_lap/unipool, ReDimNet, ECAPA-TDNN).

The teacher: either any trained run of this toolkit whose encoder has layers (sv_mixer, ssrfnet, sv_mixer_lap,
sv_mixer_unipool, redimnet, ecapa_tdnn, pretrained_speech), given as a LOCAL run directory (`method.teacher_run`;
weights chosen as evaluate.py does: model_avg.pt, else model.pt, else the last checkpoints/weights_e*.pt) or one of
its weight files; or an encoder section (`method.teacher_encoder`, typed as the `encoder:` section), e.g.
`{name: pretrained_speech, model: wavlm_large}`: a pretrained WavLM / HuBERT / wav2vec 2.0 (torchaudio bundle
weights, or `weights: checkpoint`), the reference's teacher. Its back-end is not used (only `forward_layers`).
It is frozen: requires_grad False, kept in eval mode when the method is put in train mode, run under torch.no_grad,
and left out of the optimiser. Its frames are resampled in time to the student's frame count (linear interpolation)
when the two differ (e.g. a 10-ms ReDimNet teacher for a 20-ms SV-Mixer student).

Saved models: `embedding_model()` is the student alone, so model.pt / model_avg.pt hold no teacher or head weights.
The method's state dict (resumable checkpoints) does hold the frozen teacher, so a resumed run keeps the teacher it
started with.

Deviations from the references:
- No offline cache of teacher states (`path_replacement` in the reference).
- The speaker loss is plain AAM-softmax; the reference's inter-top-5 impostor penalty is not implemented.
- Default `cosine_reduction: mean` (DistilHuBERT); SSRFNet's code sums over frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, FeaturesConfig, build_spec
from sslsv.encoders.base import SpeakerModel, build_speaker_model
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo
from sslsv.methods.heads import AAMSoftmax
from sslsv.registry import ENCODERS, METHODS
from sslsv.runs import RunError, is_resumable_checkpoint, is_run_dir, load_checkpoint, load_model

LAYERED = "e.g. sv_mixer, ssrfnet, sv_mixer_lap, redimnet, ecapa_tdnn, pretrained_speech"


@dataclass
class OSKDFTConfig:
    teacher_run: str = ""  # local run directory of a trained layer-wise model (or one of its weight files)
    teacher_encoder: dict[str, Any] | None = None  # or an encoder section, e.g. {name: pretrained_speech, ...}
    teacher_layers: list[int] = field(default_factory=lambda: [4, 8, 12])  # teacher states to predict (0 = input)
    student_layer: int = -1  # student state the heads read (-1: the last)
    kd_weight: float = 1.0
    cosine_weight: float = 1.0  # lambda
    cosine_reduction: Literal["mean", "sum"] = "mean"  # over frames; "sum" is SSRFNet's code
    speaker_loss: Literal["aam", "none"] = "aam"
    scale: float = 30.0  # AAM-softmax s
    margin: float = 0.2  # AAM-softmax m

    def __post_init__(self) -> None:
        if not str(self.teacher_run).strip() and self.teacher_encoder is None:
            raise ConfigError("method.teacher_run: empty; give the run directory of a trained layer-wise model (or "
                              "method.teacher_encoder, an encoder section such as {name: pretrained_speech})")
        if str(self.teacher_run).strip() and self.teacher_encoder is not None:
            raise ConfigError("method.teacher_encoder: set together with method.teacher_run; give one teacher")
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


# ------------------------------------------------------------------------------------------------ heads, loss, frames


class DistillationHeads(nn.Module):
    """DistilHuBERT-style prediction heads (OS-KDFT; SSRFNet's `loss/distillhubert_loss.py`): each head is
    Linear(H -> D_t) -> GELU -> Linear(D_t -> D_t) on one student state and predicts one teacher state (WavLM-Large
    layers 8, 16, 24 in the reference: 6.30 M parameters for H = D_t = 1024, 3 heads). Training only.

    Shapes: student state (B, T, H) -> predictions (B, num_heads, T, D_t).
    """

    def __init__(self, student_dim: int = 1024, teacher_dim: int = 1024, num_heads: int = 3):
        super().__init__()
        self.heads = nn.ModuleList([
            nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.GELU(), nn.Linear(teacher_dim, teacher_dim))
            for _ in range(num_heads)
        ])

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(state) for head in self.heads], dim=1)


def kd_loss(predictions: torch.Tensor, targets: torch.Tensor, cosine_weight: float = 1.0,
            reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """L_KD (module docstring): predictions p and teacher targets y, (B, heads, T, D) each -> scalar.

    Per head: mean L1 over frames and channels minus lambda * (mean or sum over frames) of log sigmoid(cos); summed
    over heads, averaged over the batch. Targets are detached. `reduction="sum"` is SSRFNet's code exactly.
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: 'mean' or 'sum', got {reduction!r}")
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


def check_index(index: int, count: int, key: str, who: str) -> None:
    """A state index (negatives allowed) into `count` states, or a ConfigError naming `key`."""
    if not -count <= index < count:
        raise ConfigError(f"{key}: {index} out of range; the {who} has {count} states (0 .. {count - 1})")


# ------------------------------------------------------------------------------------------------ teacher


TEACHER_KEY = "method.teacher_run"
TEACHER_HOW = ("a local run directory of a trained layer-wise model (e.g. models/supervised/sv_mixer_demo, made by "
               "python train.py ...) or one of its weight files")


def _load_weight_file(p: Path) -> tuple[SpeakerModel, str]:
    """The model of the run that holds weight file `p` (in the run directory or its checkpoints/), with `p` loaded."""
    if is_resumable_checkpoint(p):
        raise ConfigError(f"{TEACHER_KEY}: {p} is a resumable trainer checkpoint; give {TEACHER_HOW}")
    run_dir = next((d for d in (p.parent, p.parent.parent) if is_run_dir(d)), None)
    if run_dir is None:
        raise ConfigError(f"{TEACHER_KEY}: no config.yml next to {p} or one folder up; give {TEACHER_HOW}")
    model, _, _ = load_model(run_dir, random_weights=True)
    state = load_checkpoint(p)
    if not isinstance(state, dict):
        raise ConfigError(f"{TEACHER_KEY}: {p} is not a weight file (state dict)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{TEACHER_KEY}: {p} does not match the encoder of {run_dir}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    return model, str(p)


def load_teacher(path: str) -> tuple[SpeakerModel, str]:
    """The teacher's SpeakerModel (eval mode, CPU) and the weights loaded, from a run directory or a weight file
    (model.pt, model_avg.pt, checkpoints/weights_eN.pt) of a run. Errors name `method.teacher_run`. The global RNG
    is left as it was (building the model reseeds it)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{TEACHER_KEY}: {path} does not exist; give {TEACHER_HOW}")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            if p.is_dir():
                model, _, source = load_model(p)
            else:
                model, source = _load_weight_file(p)
        except (RunError, RuntimeError) as error:
            raise ConfigError(f"{TEACHER_KEY}: {error}") from None
    return model.eval(), source


ENCODER_KEY = "method.teacher_encoder"


def build_teacher_encoder(section: dict, sample_rate: int) -> tuple[SpeakerModel, str]:
    """The teacher built from an encoder section (eval mode, CPU), at the student's sample rate and the default
    log-mel settings; the global RNG is left as it was. Pretrained weights come from the encoder itself (e.g.
    pretrained_speech's torchaudio bundle)."""
    spec = build_spec(section, ENCODER_KEY, ENCODERS)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        model = build_speaker_model(spec, FeaturesConfig(sample_rate=sample_rate))
    return model.eval(), f"{ENCODER_KEY} ({spec.name})"


def frozen_teacher(path: str, student: SpeakerModel, section: dict | None = None) -> tuple[SpeakerModel, str]:
    """The teacher (`load_teacher` of `path`, or built from the encoder `section`), checked against the interface
    (layers, sample rate), with gradients off."""
    key = ENCODER_KEY if section is not None else TEACHER_KEY
    teacher, source = (build_teacher_encoder(section, student.sample_rate) if section is not None
                       else load_teacher(path))
    if not teacher.has_layers:
        raise ConfigError(f"{key}: the encoder of {source if section is not None else path} "
                          f"({type(teacher.encoder).__name__}) does not expose forward_layers; the teacher must be "
                          f"a layer-wise model ({LAYERED})")
    if teacher.sample_rate != student.sample_rate:
        raise ConfigError(f"{key}: the teacher reads {teacher.sample_rate} Hz audio, the student "
                          f"{student.sample_rate} Hz (features.sample_rate)")
    teacher.requires_grad_(False)
    return teacher.eval(), source


# ------------------------------------------------------------------------------------------------ method


@METHODS.register("os_kdft", config=OSKDFTConfig)
class OSKDFT(Method):
    """OS-KDFT (Heo et al., 2023): speaker loss + DistilHuBERT-head KD from a frozen teacher run's layer states."""

    def __init__(self, encoder: SpeakerModel, cfg: OSKDFTConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        self.uses_labels = cfg.speaker_loss == "aam"
        if not encoder.has_layers:
            raise ConfigError(f"encoder.name: os_kdft needs a student that exposes layer-wise states "
                              f"(forward_layers; {LAYERED}); {type(encoder.encoder).__name__} does not")
        if self.uses_labels and info.num_speakers < 2:
            raise ConfigError(f"method.speaker_loss: 'aam' needs at least 2 speakers, the manifest has "
                              f"{info.num_speakers} (or set method.speaker_loss=none)")
        self.teacher, self.teacher_source = frozen_teacher(cfg.teacher_run, encoder, cfg.teacher_encoder)
        for index in cfg.teacher_layers:
            check_index(index, self.teacher.encoder.num_layers, "method.teacher_layers", "teacher")
        check_index(cfg.student_layer, encoder.encoder.num_layers, "method.student_layer", "student")
        self.teacher_layers = list(cfg.teacher_layers)
        self.student_layer = cfg.student_layer
        self.heads = DistillationHeads(encoder.encoder.layer_dim, self.teacher.encoder.layer_dim,
                                       len(self.teacher_layers))
        self.classifier = (AAMSoftmax(encoder.embed_dim, info.num_speakers, cfg.scale, cfg.margin)
                           if self.uses_labels else None)

    def train(self, mode: bool = True) -> OSKDFT:
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, batch-norm statistics fixed
        return self

    def teacher_targets(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """Selected teacher states, resampled to `frames`: (B, S) -> (B, heads, frames, D_t), no gradient."""
        with torch.no_grad():
            device = next(self.teacher.parameters()).device
            states = self.teacher.forward_layers(wave.to(device))[:, self.teacher_layers]
            return resample_frames(states, frames)

    def forward(self, batch: Batch) -> StepOutput:
        embeddings, labels, kd_terms = [], [], []
        for view in batch.views:
            if self.classifier is not None:
                embedding, states = self.encoder.forward_with_layers(view)
                embeddings.append(embedding)
                labels.append(batch.labels)
            else:
                states = self.encoder.forward_layers(view)
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
