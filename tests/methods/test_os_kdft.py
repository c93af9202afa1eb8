"""OS-KDFT (sslsv/methods/os_kdft.py): the KD loss and heads, frame resampling, the frozen teacher, teacher_run
errors, one encoder pass per view, and a tiny end-to-end run (train a tiny SV-Mixer teacher, then distil it into a
tiny SSRFNet). Models are the tiny examples the encoders register."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sslsv.config import ConfigError, load_config, save_config
from sslsv.encoders.base import build_speaker_model, count_parameters
from sslsv.methods.base import TrainingInfo
from sslsv.methods.os_kdft import (
    OSKDFT,
    DistillationHeads,
    OSKDFTConfig,
    build_teacher_encoder,
    kd_loss,
    load_teacher,
    resample_frames,
)
from sslsv.runs import load_model
from sslsv.training.trainer import Trainer, parameter_groups
from tests.encoders.encoder_examples import example_overrides
from tests.methods.method_helpers import one_thread, random_batch, smoke  # noqa: F401
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "configs/simclr/fast_resnet34.yml"
INFO = TrainingInfo(num_speakers=4, num_samples=32, steps_per_epoch=2, epochs=1)


def tiny_config(root, run_dir, family: str, *extra: str):
    overrides = [o for o in tiny_overrides(root, run_dir) if not o.startswith("encoder.")]
    return load_config(BASE, overrides + [*example_overrides(family), *extra])


def fake_run(folder: Path, family: str, seed: int = 1) -> Path:
    """A run directory (config.yml + model.pt) holding a randomly initialised tiny model: a teacher without training."""
    config = tiny_config(folder, folder, family)
    torch.manual_seed(seed)
    model = build_speaker_model(config.encoder, config.features)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(config, folder / "config.yml")
    torch.save(model.state_dict(), folder / "model.pt")
    return folder


def student(family: str = "sv_mixer", seed: int = 0):
    config = tiny_config("/unused", "/unused", family)
    torch.manual_seed(seed)
    return build_speaker_model(config.encoder, config.features)


def method(teacher_run, family="sv_mixer", **options) -> OSKDFT:
    return OSKDFT(student(family), OSKDFTConfig(teacher_run=str(teacher_run), **options), INFO)


# ------------------------------------------------------------------------------------------------ loss and frames


def plain_kd(p, y, lam, reduction):
    """L_KD with explicit loops: sum over heads of mean |p - y| - lam * (mean or sum)_t log sigmoid(cos), batch mean."""
    batch, heads, frames, _ = p.shape
    total = 0.0
    for b in range(batch):
        for h in range(heads):
            l1 = float(np.mean(np.abs(p[b, h] - y[b, h])))
            terms = []
            for t in range(frames):
                cos = float(p[b, h, t] @ y[b, h, t] / (np.linalg.norm(p[b, h, t]) * np.linalg.norm(y[b, h, t])))
                terms.append(math.log(1.0 / (1.0 + math.exp(-cos))))
            total += l1 - lam * (sum(terms) if reduction == "sum" else sum(terms) / frames)
    return total / batch


@pytest.mark.parametrize("lam, reduction", [(1.0, "mean"), (0.5, "mean"), (1.0, "sum"), (0.0, "sum")])
def test_kd_loss_equals_a_plain_computation(lam, reduction):
    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    assert kd_loss(p, y, lam, reduction).item() == pytest.approx(plain_kd(p.numpy(), y.numpy(), lam, reduction),
                                                                 rel=1e-5)


def test_kd_loss_sends_no_gradient_to_the_teacher_and_heads_have_the_reference_size():
    torch.manual_seed(0)
    heads = DistillationHeads(student_dim=6, teacher_dim=5, num_heads=3)
    predictions = heads(torch.randn(2, 4, 6))
    assert predictions.shape == (2, 3, 4, 5)
    targets = torch.randn(2, 3, 4, 5, requires_grad=True)
    kd_loss(predictions, targets, 1.0, "sum").backward()
    assert targets.grad is None and all(p.grad is not None for p in heads.parameters())
    with pytest.raises(ValueError, match="reduction"):
        kd_loss(predictions, targets, 1.0, "max")
    assert abs(count_parameters(DistillationHeads()) / 1e6 - 6.30) < 0.01  # H = D_t = 1024, 3 heads


def test_resample_frames_is_linear_interpolation_in_time():
    x = torch.randn(2, 3, 7, 4)
    assert resample_frames(x, 7) is x
    for frames in (4, 11):
        out = resample_frames(x, frames)
        assert out.shape == (2, 3, frames, 4)
        src = np.clip((np.arange(frames) + 0.5) * 7 / frames - 0.5, 0, 6)  # align_corners=False
        expected = np.apply_along_axis(lambda v, s=src: np.interp(s, np.arange(7), v), 2, x.numpy())
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ the method


def test_teacher_is_frozen_gets_no_gradient_and_stays_unchanged(tmp_path):
    run = fake_run(tmp_path / "teacher", "sv_mixer")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    teacher, source = load_teacher(str(run))
    assert torch.equal(torch.rand(3), expected) and source.endswith("model.pt")  # the global RNG is left alone
    assert not teacher.training

    m = method(run, teacher_layers=[1, 2])
    assert m.uses_labels
    teacher_params = {id(p) for p in m.teacher.parameters()}
    assert teacher_params and not any(p.requires_grad for p in m.teacher.parameters())
    optimised = {id(p) for group in parameter_groups(m, 0.0, False) for p in group["params"]}
    assert not optimised & teacher_params  # the trainer's optimiser never sees the teacher
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}

    m.train()
    assert m.training and m.encoder.training and not any(mod.training for mod in m.teacher.modules())
    output = m(random_batch(4, (0.5,)))
    assert set(output.metrics) == {"kd_loss", "speaker_loss", "accuracy"}
    assert output.loss.item() == pytest.approx(output.metrics["speaker_loss"].item() + output.metrics["kd_loss"].item(),
                                               rel=1e-5)
    output.loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(p.grad is not None for p in m.heads.parameters())
    assert not m.teacher_targets(random_batch(2, (0.5,)).views[0], 10).requires_grad

    history = smoke(m, lengths=(0.5, 0.5), batch=4)  # two optimiser steps, both views
    assert all(math.isfinite(h["kd_loss"]) for h in history)
    after = m.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # checkpoints: the method's state dict loads strictly into a fresh method; the saved model is the student alone
    fresh = method(tmp_path / "teacher", teacher_layers=[1, 2])
    fresh.load_state_dict(m.state_dict(), strict=True)
    assert m.embedding_model() is m.encoder
    assert not any(k.startswith(("teacher", "heads")) for k in m.embedding_model().state_dict())


def test_teacher_frames_are_resampled_to_the_student_rate(tmp_path):
    # ReDimNet teacher: 10-ms log-mel frames, 48-d stage outputs; SV-Mixer student: 20-ms frames, 32-d states.
    run = fake_run(tmp_path / "redimnet", "redimnet")
    m = method(run / "model.pt", teacher_layers=[-1, 1], speaker_loss="none", cosine_reduction="sum")
    assert not m.uses_labels and m.classifier is None
    wave = random_batch(2, (0.5,)).views[0]
    with torch.no_grad():
        raw = m.teacher.forward_layers(wave)[:, [-1, 1]]
        frames = m.encoder.forward_layers(wave).shape[2]
    assert raw.shape[2] != frames  # 51 teacher frames, 24 student frames
    targets = m.teacher_targets(wave, frames)
    assert targets.shape == (2, 2, frames, 48)
    torch.testing.assert_close(targets, resample_frames(raw, frames))
    m.train()
    output = m(random_batch(2, (0.5,)))
    assert set(output.metrics) == {"kd_loss", "speaker_loss"} and output.metrics["speaker_loss"].item() == 0.0
    assert math.isfinite(output.loss.item())


def test_bad_teacher_run_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.teacher_run: .*does not exist"):
        method(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"method\.teacher_run: .*not a run directory"):
        method(tmp_path / "empty")
    resnet = fake_run(tmp_path / "resnet", "fast_resnet34")
    with pytest.raises(ConfigError, match=r"method\.teacher_run: .*does not expose forward_layers"):
        method(resnet)
    torch.save({}, resnet / "checkpoint_e0001_s00000002.pt")
    with pytest.raises(ConfigError, match=r"method\.teacher_run: .*resumable trainer checkpoint"):
        method(resnet / "checkpoint_e0001_s00000002.pt")
    mixer = fake_run(tmp_path / "mixer", "sv_mixer")
    with pytest.raises(ConfigError, match=r"method\.teacher_layers: 3 out of range.*3 states"):
        method(mixer, teacher_layers=[1, 3])
    with pytest.raises(ConfigError, match=r"encoder\.name: os_kdft needs a student"):
        method(mixer, family="fast_resnet34", teacher_layers=[1])
    with pytest.raises(ConfigError, match=r"method\.student_layer: -4 out of range.*3 states"):
        method(mixer, teacher_layers=[1], student_layer=-4)


def test_pretrained_speech_teacher_from_an_encoder_section():
    """`teacher_encoder`: a pretrained speech model (tiny WavLM, random weights) as the frozen teacher of an
    SV-Mixer student, built from an encoder section; one teacher only; a teacher without layers is refused."""
    from sslsv.config import from_dict
    from sslsv.registry import ENCODERS

    section = {"name": "pretrained_speech", **ENCODERS.get("pretrained_speech").example["encoder"]}
    cfg = from_dict(OSKDFTConfig, {"teacher_encoder": section, "teacher_layers": [1, -1]}, "method.")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_teacher_encoder(section, 16000)
    assert torch.equal(torch.rand(3), expected)  # building the teacher leaves the global RNG alone
    m = OSKDFT(student(), cfg, INFO)
    assert type(m.teacher.encoder).__name__ == "PretrainedSpeech" and "teacher_encoder" in m.teacher_source
    assert not any(p.requires_grad for p in m.teacher.parameters())
    m.train()
    assert not any(mod.training for mod in m.teacher.modules())
    output = m(random_batch(4, (0.5,)))
    output.loss.backward()
    assert math.isfinite(output.metrics["kd_loss"].item())
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.heads.heads[0][0].out_features == m.teacher.encoder.layer_dim  # 32: the tiny WavLM's width
    fresh = OSKDFT(student(), cfg, INFO)
    fresh.load_state_dict(m.state_dict(), strict=True)

    with pytest.raises(ConfigError, match=r"method\.teacher_encoder: set together with method\.teacher_run"):
        OSKDFTConfig(teacher_run="models/x", teacher_encoder=section)
    with pytest.raises(ConfigError, match=r"method\.teacher_run: empty"):
        OSKDFTConfig()
    resnet = from_dict(OSKDFTConfig, {"teacher_encoder": {"name": "fast_resnet34", "base_width": 4}}, "method.")
    with pytest.raises(ConfigError, match=r"method\.teacher_encoder: .*does not expose forward_layers"):
        OSKDFT(student(), resnet, INFO)


@pytest.mark.parametrize("speaker_loss", ["aam", "none"])
def test_one_student_pass_per_view(tmp_path, speaker_loss):
    """The embedding and the states come from one pass (forward_with_layers), without patching the encoder."""
    m = method(fake_run(tmp_path / "teacher", "sv_mixer"), teacher_layers=[1, 2], speaker_loss=speaker_loss)
    calls = []
    handle = m.encoder.encoder.backbone.features.register_forward_hook(lambda *args: calls.append(1))
    try:
        m.train()
        m(random_batch(2, (0.5, 0.5)))
    finally:
        handle.remove()
    assert len(calls) == 2
    assert "forward_with_layers" not in vars(m.encoder.encoder) and "forward_layers" not in vars(m.encoder.encoder)


# ------------------------------------------------------------------------------------------------ end to end


def test_tiny_teacher_then_distilled_student_end_to_end(tiny_data, tmp_path):
    common = ["trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.average_last=1",
              "trainer.validate_every=0", "augmentation.strategy=none", "dataset.views=[{count: 1, seconds: 0.5}]"]
    teacher_dir = tmp_path / "supervised" / "sv_mixer_tiny"
    Trainer(tiny_config(tiny_data, teacher_dir, "sv_mixer", "method.name=supervised", *common)).fit()
    assert (teacher_dir / "model.pt").exists()

    student_dir = tmp_path / "os_kdft" / "ssrfnet_tiny"
    config = tiny_config(tiny_data, student_dir, "ssrfnet", "method.name=os_kdft", f"method.teacher_run={teacher_dir}",
                         "method.teacher_layers=[1, 2]", *common)
    Trainer(config).fit()
    records = [json.loads(line) for line in (student_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    model, loaded, _ = load_model(student_dir)  # strict: model.pt is the student alone
    assert loaded.encoder.name == "ssrfnet"
    with torch.no_grad():
        assert torch.isfinite(model(0.1 * torch.randn(1, 8000))).all()
    assert Trainer(config).resume()  # the method's checkpointed state (teacher included) loads strictly
