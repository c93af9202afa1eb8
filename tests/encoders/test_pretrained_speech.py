"""The `pretrained_speech` encoder (sslsv/encoders/pretrained_speech.py): full-size back-end parameter counts, a tiny
random-weight WavLM with the LAP, UniPool and MHFA back-ends trained, resumed and exported to ONNX, freezing, local
checkpoint files and the torchaudio bundle path (a monkeypatched bundle: nothing downloads)."""
import copy
import json
import math
from pathlib import Path

import pytest

from sslsv.encoders.base import saved_weights_follow
import torch

from sslsv.config import ConfigError, FeaturesConfig, Spec, from_dict, load_config
from sslsv.encoders import pretrained_speech as ps
from sslsv.encoders.base import build_speaker_model, count_parameters
from sslsv.registry import ENCODERS
from sslsv.runs import load_model
from sslsv.training.trainer import Trainer
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ENCODERS.get("pretrained_speech").example["encoder"]
TINY_BACKENDS = {"lap": {"heads": 4, "lap_dim": 16, "pool_bottleneck": 8}, "unipool": {"width": 4}}


def tiny_cfg(**options) -> ps.PretrainedSpeechConfig:
    data = copy.deepcopy(EXAMPLE)
    data.update(TINY_BACKENDS)
    data.update(options)
    return from_dict(ps.PretrainedSpeechConfig, data, "encoder.")


def tiny_encoder(seed: int = 0, **options) -> ps.PretrainedSpeech:
    torch.manual_seed(seed)
    return ps.PretrainedSpeech(tiny_cfg(**options))


# ------------------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize("backend, layers, expected", [
    ("lap", 13, 1_714_480),  # LAP paper, WavLM-Base+: 1.71 M
    ("unipool", 12, 2_869_476),  # UniPool paper, wav2vec2-base layers 1..12: 2.87 M
    ("mhfa", 13, 2_302_554),  # MHFA, 64 heads, d_c 128, 256-d (reference definition)
])
def test_full_size_backends_on_wavlm_base_plus_states_match_their_papers(backend, layers, expected):
    cfg = ps.PretrainedSpeechConfig(backend=backend, embed_dim=256 if backend == "mhfa" else 192)
    assert count_parameters(ps.build_backend(cfg, layers, 768)) == expected


def test_wavlm_base_plus_architecture_and_states_without_weights():
    """The bundle's architecture (built, not downloaded): 94.4 M parameters, 13 states of 768 at 20 ms."""
    encoder = ps.PretrainedSpeech(ps.PretrainedSpeechConfig(weights="none"))
    assert (encoder.num_layers, encoder.layer_dim) == (13, 768)
    assert abs(count_parameters(encoder.speech) / 1e6 - 94.4) < 0.1
    assert count_parameters(encoder, trainable_only=True) == count_parameters(encoder.backend)  # freeze: all


# ------------------------------------------------------------------------------------------------ train, resume, export


@pytest.mark.parametrize("backend, freeze", [("lap", {"freeze": "none"}),
                                             ("unipool", {"freeze": "bottom", "trainable_layers": 1}),
                                             ("mhfa", {"freeze": "all"})])
def test_tiny_wavlm_trains_resumes_and_exports(tiny_data, tmp_path, backend, freeze):
    run_dir = tmp_path / "run"
    encoder = {**copy.deepcopy(EXAMPLE), **TINY_BACKENDS, **freeze, "backend": backend, "name": "pretrained_speech"}
    overrides = [o for o in tiny_overrides(tiny_data, run_dir, **{"dataset.batch_size": 4})
                 if not o.startswith("encoder.")]
    overrides += [f"encoder={json.dumps(encoder)}", "method.name=supervised",
                  "dataset.views=[{count: 1, seconds: 0.5}]",
                  "trainer.max_steps_per_epoch=1", "trainer.average_last=1", "trainer.validate_every=0",
                  "augmentation.strategy=none"]
    Trainer(load_config(ROOT / "configs/simclr/fast_resnet34.yml", overrides + ["trainer.epochs=1"])).fit()
    Trainer(load_config(ROOT / "configs/simclr/fast_resnet34.yml", overrides + ["trainer.epochs=2"])).fit()  # resumes
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses

    from sslsv.export import export_onnx, verify_onnx

    model, config, _ = load_model(run_dir)
    assert config.encoder.options.backend == backend
    path = export_onnx(model, tmp_path / "model.onnx", 16000, check=False)
    assert verify_onnx(model, path, 16000) <= 1e-4


# ------------------------------------------------------------------------------------------------ freezing


def _grads(encoder, wave) -> dict[str, bool]:
    encoder.train()
    encoder.zero_grad()
    encoder(wave).pow(2).sum().backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in encoder.named_parameters()}


def test_freezing_options_decide_which_parameters_get_gradients():
    wave = 0.1 * torch.randn(2, 8000)
    grads = _grads(tiny_encoder(freeze="all"), wave)
    assert not any(v for k, v in grads.items() if k.startswith("speech.")) and all(
        v for k, v in grads.items() if k.startswith("backend."))

    encoder = tiny_encoder(freeze="bottom", trainable_layers=1)
    grads = _grads(encoder, wave)
    trained = {k.split(".")[4] for k, v in grads.items() if k.startswith("speech.encoder.transformer.layers.") and v}
    assert trained == {"1"}  # the top one of 2 layers
    assert not any(v for k, v in grads.items() if k.startswith("speech.") and ".layers.1." not in k)
    assert all(p.requires_grad == grads[k] for k, p in encoder.named_parameters() if k.startswith("speech."))
    assert not encoder.speech.encoder.transformer.layers[0].training  # frozen parts stay in eval mode
    assert encoder.speech.encoder.transformer.layers[1].training

    grads = _grads(tiny_encoder(freeze="cnn"), wave)
    assert not any(v for k, v in grads.items() if k.startswith("speech.feature_extractor."))
    assert grads["speech.encoder.feature_projection.projection.weight"]

    full = tiny_encoder(freeze="none")
    scaled = tiny_encoder(freeze="none", grad_scale=0.1)
    for model in (full, scaled):
        model.eval()  # no dropout: the two passes are equal
        model.zero_grad()
        model(wave).pow(2).sum().backward()
    speech = "speech.encoder.feature_projection.projection.weight"
    g_full, g_scaled = (dict(m.named_parameters())[speech].grad for m in (full, scaled))
    torch.testing.assert_close(g_scaled, 0.1 * g_full)
    backend = "backend.output.weight"
    torch.testing.assert_close(dict(scaled.named_parameters())[backend].grad,
                               dict(full.named_parameters())[backend].grad)


# ------------------------------------------------------------------------------------------------ weights


def test_local_checkpoint_file_is_loaded_and_a_mismatch_names_the_key(tmp_path):
    source = tiny_encoder(seed=3)
    path = tmp_path / "speech.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.speech.state_dict().items()}}, path)
    loaded = tiny_encoder(seed=4, weights="checkpoint", checkpoint=str(path))
    for (name, a), b in zip(source.speech.state_dict().items(), loaded.speech.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ConfigError, match=r"encoder\.checkpoint: .*does not match"):
        tiny_encoder(weights="checkpoint", checkpoint=str(path), architecture={**EXAMPLE["architecture"],
                                                                             "hidden_size": 48})
    with pytest.raises(ConfigError, match=r"encoder\.checkpoint: .*is not a file"):
        tiny_encoder(weights="checkpoint", checkpoint=str(tmp_path / "nope.pt"))


class FakeBundle:
    """What the encoder reads of a torchaudio bundle, at tiny size; get_model() as the real one (eval model)."""

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.calls = 0
        self._model_type, self._normalize_waveform = "WavLM", True
        self._params = ps.SpeechArchitecture(**EXAMPLE["architecture"]).params(
            dict(ps.bundle("wavlm_base_plus")._params), "WavLM")
        torch.manual_seed(7)
        self.model = ps.build_speech_model(tiny_cfg())[0].eval()

    def get_model(self):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.model


def test_bundle_weights_come_from_the_bundle(monkeypatch):
    fake = FakeBundle()
    monkeypatch.setattr(ps, "bundle", lambda name: fake)
    cfg = ps.PretrainedSpeechConfig(model="wavlm_large", weights="bundle", mhfa=ps.MHFAOptions(4, 8), embed_dim=12)
    encoder = ps.PretrainedSpeech(cfg)
    assert fake.calls == 1 and encoder.normalize_waveform
    for (name, a), b in zip(fake.model.state_dict().items(), encoder.speech.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    offline = FakeBundle(OSError("no network"))
    monkeypatch.setattr(ps, "bundle", lambda name: offline)
    with pytest.raises(ConfigError, match=r"encoder\.weights: could not get the WAVLM_LARGE weights"):
        ps.PretrainedSpeech(cfg)
    # Reloading a trained run (runs.load_model) needs neither the network nor the bundle's weights: its own follow.
    with saved_weights_follow():
        ps.PretrainedSpeech(cfg)
    assert offline.calls == 1


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="encoder.checkpoint"):
        ps.PretrainedSpeechConfig(weights="checkpoint")
    with pytest.raises(ConfigError, match="encoder.checkpoint"):
        ps.PretrainedSpeechConfig(checkpoint="x.pt")
    with pytest.raises(ConfigError, match="encoder.architecture"):
        ps.PretrainedSpeechConfig(architecture=ps.SpeechArchitecture(layers=2))
    with pytest.raises(ConfigError, match="encoder.trainable_layers"):
        ps.PretrainedSpeechConfig(freeze="bottom")
    with pytest.raises(ConfigError, match="encoder.trainable_layers"):
        ps.PretrainedSpeechConfig(trainable_layers=2)
    with pytest.raises(ConfigError, match="encoder.trainable_layers"):
        tiny_encoder(freeze="bottom", trainable_layers=3)
    with pytest.raises(ConfigError, match="encoder.model"):
        from_dict(ps.PretrainedSpeechConfig, {"model": "wavlm_huge"}, "encoder.")


def test_weighted_backends_build_and_run():
    wave = 0.1 * torch.randn(2, 8000)
    for backend in ("weighted_astp", "weighted_ecapa"):
        model = build_speaker_model(Spec("pretrained_speech", tiny_cfg(
            backend=backend, ecapa={"channels": 16, "last_channels": 48, "se_channels": 8, "attention_channels": 8})),
            FeaturesConfig()).eval()
        with torch.no_grad():
            assert model(wave).shape == (2, 12)
