import json
from pathlib import Path

import pytest
import torch

from sslsv.config import ConfigError, FeaturesConfig, Spec, load_config
from sslsv.encoders.base import build_encoder, build_speaker_model, count_parameters
from sslsv.encoders.ecapa_tdnn import ECAPATDNN, ECAPATDNNC512Config, ECAPATDNNConfig
from sslsv.encoders.profile import profile_encoder
from sslsv.training.trainer import Trainer
from tests.tiny_corpus import make_tiny_corpus, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["simclr/ecapa.yml", "simclr/ecapa_demo.yml", "supervised/ecapa.yml", "supervised/ecapa_demo.yml"]
TINY = ["encoder.channels=32", "encoder.last_channels=96", "encoder.embed_dim=16", "encoder.se_channels=8",
        "encoder.attention_channels=8"]


@pytest.mark.parametrize(
    "name, n_mels, expected",
    [("ecapa_tdnn_c512", 80, 6_194_048), ("ecapa_tdnn_c1024", 80, 14_660_416), ("ecapa_tdnn", 40, 22_529_152)],
)
def test_presets_build_from_config_with_reference_parameter_counts(name, n_mels, expected):
    config = load_config(ROOT / "configs/simclr/ecapa.yml", [f"encoder.name={name}", f"features.n_mels={n_mels}"])
    encoder = build_encoder(config.encoder, config.features)
    assert isinstance(encoder, ECAPATDNN)
    assert abs(count_parameters(encoder) - expected) / expected < 0.02
    assert encoder.embed_dim == (512 if name == "ecapa_tdnn" else 192)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_files_build_the_review_model(path):
    config = load_config(ROOT / "configs" / path)
    assert config.encoder.name == "ecapa_tdnn" and config.features.n_mels == 40
    options = config.encoder.options
    assert (options.channels, options.last_channels, options.embed_dim) == (1024, 3072, 512)


@pytest.mark.parametrize("seconds", [1.0, 2.0, 7.3])
def test_waveform_shapes_for_several_lengths(seconds):
    torch.manual_seed(0)
    model = build_speaker_model(Spec("ecapa_tdnn", ECAPATDNNConfig(channels=128, last_channels=384,
                                                                         embed_dim=192)), FeaturesConfig(n_mels=80))
    wave = torch.randn(3, int(seconds * 16000))
    out = model(wave)
    assert out.shape == (3, 192) and torch.isfinite(out).all()
    frames = model.forward_frames(wave)
    assert frames.shape == (3, 384, int(seconds * 16000) // 160 + 1)


def test_full_width_forward_two_seconds():
    model = ECAPATDNN(ECAPATDNNConfig(channels=512, last_channels=1536, embed_dim=192), in_features=80).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 80, 201))
    assert out.shape == (2, 192) and torch.isfinite(out).all()


def test_profile_counts_reference_macs():
    """C=512 at 80 mels: 1.04 GMACs per 2-s view (reference arith; ReDimNet README 1.05)."""
    stats = profile_encoder(ECAPATDNN(ECAPATDNNC512Config(), in_features=80), seconds=2.0, n_mels=80)
    assert stats["params"] == stats["trainable"] == 6_194_048 and stats["frames"] == 201
    assert abs(stats["macs"] / 1.04e9 - 1) < 0.01
    assert stats["macs_per_second"] == stats["macs"] / 2.0


def test_backward_reaches_every_parameter_and_layers_have_shapes():
    torch.manual_seed(0)
    model = ECAPATDNN(ECAPATDNNConfig(channels=32, last_channels=96, se_channels=8, attention_channels=8,
                                      embed_dim=16), in_features=24)
    x = torch.randn(4, 24, 60)
    out = model(x)
    assert out.shape == (4, 16)
    out.pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.forward_layers(x).shape == (4, 4, 60, 32)  # first TDNN + 3 SE-Res2Blocks, (B, L, T, C)
    assert model.forward_frames(x).shape == (4, 96, 60)


def test_global_context_off_changes_only_the_attention_input():
    on = ECAPATDNN(ECAPATDNNConfig(channels=32, last_channels=96, embed_dim=16), in_features=24)
    off = ECAPATDNN(ECAPATDNNConfig(channels=32, last_channels=96, embed_dim=16, global_context=False), in_features=24)
    assert count_parameters(on) - count_parameters(off) == 2 * 96 * 128  # first attention conv: 3C -> C inputs


@pytest.mark.parametrize(
    "override, key",
    [("encoder.channels=100", "encoder.channels: must be divisible by scale"),
     ("encoder.scale=1", "encoder.scale"),
     ("encoder.embed_dim=0", "encoder.embed_dim"),
     ("encoder.chanels=64", "did you mean 'encoder.channels'")],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(ROOT / "configs/simclr/ecapa.yml", [override])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("method", ["simclr", "supervised"])
def test_tiny_ecapa_trains(corpus, tmp_path, method):
    overrides = [o for o in tiny_overrides(corpus, tmp_path / "run", **{"trainer.epochs": 1})
                 if not o.startswith("encoder.")]
    overrides += TINY + ["trainer.max_steps_per_epoch=3", "trainer.average_last=1"]
    config = load_config(ROOT / f"configs/{method}/ecapa.yml", overrides)
    assert config.encoder.options.channels == 32
    Trainer(config).fit()
    assert (tmp_path / "run/model.pt").exists()
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    values = [json.loads(line)["train/loss"] for line in lines if "train/loss" in json.loads(line)]
    assert values and all(torch.isfinite(torch.tensor(values)))
