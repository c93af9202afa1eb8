import pytest
import torch

from sslsv.config import ConfigError, FeaturesConfig, Spec, load_config
from sslsv.encoders.base import build_encoder, build_speaker_model, count_parameters
from sslsv.encoders.redimnet import (
    PRESETS,
    ReDimNet,
    ReDimNetConfig,
    ReDimNetPresetConfig,
    ReDimNetStage,
    WeightedAggregation,
    preset_config,
    to1d,
    to2d,
)

# arith: public (wespeaker) configs + IDRnD head, exact counts from the reference definitions
EXPECTED_MILLIONS = {"b0": 1.00, "b1": 2.13, "b2": 4.89, "b3": 3.23, "b4": 6.44, "b5": 7.66, "b6": 15.02}
SECONDS = [1.0, 2.0, 7.3]


@pytest.mark.parametrize("variant", sorted(PRESETS))
def test_preset_parameter_count_matches_arith(variant):
    model = build_encoder(Spec(f"redimnet_{variant}", ReDimNetPresetConfig()),
                          FeaturesConfig(n_mels=PRESETS[variant]["freq_bins"]))
    millions = count_parameters(model) / 1e6
    assert abs(millions - EXPECTED_MILLIONS[variant]) / EXPECTED_MILLIONS[variant] < 0.02


def test_n_mels_mismatch_names_the_key():
    with pytest.raises(ConfigError) as error:
        build_encoder(Spec("redimnet_b2", ReDimNetPresetConfig()), FeaturesConfig(n_mels=40))
    assert str(error.value) == "features.n_mels: redimnet_b2 expects 72 mel bands, got 40"
    with pytest.raises(ConfigError, match="redimnet_b0 expects 60 mel bands, got 72"):
        build_encoder(Spec("redimnet_b0", ReDimNetPresetConfig()), FeaturesConfig(n_mels=72))


def test_reshapes_are_inverse_and_frequency_outer():
    x = torch.randn(2, 3, 4, 5)  # (B, c, f, T)
    flat = to1d(x)
    assert flat.shape == (2, 12, 5)
    assert torch.equal(flat[:, 3:6], x[:, :, 1])  # frequency bin 1 holds channels 0..2
    assert torch.equal(to2d(flat, 3, 4), x)


def test_weighted_aggregation_starts_as_uniform_average():
    xs = [torch.randn(2, 6, 4) for _ in range(3)]
    aggregate = WeightedAggregation(3, 6)
    assert torch.allclose(aggregate(xs), sum(xs) / 3, atol=1e-6)


def _tiny(block_2d: str, block_1d: str = "conv+att", embedding_bn: bool = False) -> ReDimNetConfig:
    stages = [ReDimNetStage(1, 1, 1, 4), ReDimNetStage(2, 1, 2, 4), ReDimNetStage(3, 1, 1, None)]
    return ReDimNetConfig(freq_bins=12, channels=4, block_2d=block_2d, block_1d=block_1d, group_divisor=2,
                          stages=stages, embed_dim=16, pool_bottleneck=8, embedding_bn=embedding_bn)


def _mixed_batch(seconds: float) -> torch.Tensor:
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    return torch.stack([torch.zeros(n), 0.5 * torch.randn(n), 0.9 * torch.sin(2 * torch.pi * 220 * t)])


@pytest.mark.parametrize("block_2d, block_1d", [("convnext_like", "conv+att"), ("basic_resnet", "att"),
                                                ("basic_resnet_fwse", "conv+att")])
def test_tiny_forward_backward_all_lengths(block_2d, block_1d):
    torch.manual_seed(0)
    model = build_speaker_model(Spec("redimnet", _tiny(block_2d, block_1d, embedding_bn=True)),
                                FeaturesConfig(n_mels=12))
    for seconds in SECONDS:
        model.zero_grad()
        out = model(torch.randn(2, int(seconds * 16000)))
        assert out.shape == (2, 16) and torch.isfinite(out).all()
        out.pow(2).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
    out = model(_mixed_batch(2.0))  # silence, noise and a tone together
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_layers_and_frames_keep_time_resolution():
    model = ReDimNet(_tiny("convnext_like"), in_features=12).eval()
    x = torch.randn(2, 12, 37)
    assert model.forward_layers(x).shape == (2, 4, 37, 48)  # stem + 3 stages, C*F = 48
    assert model.forward_frames(x).shape == (2, 48, 37)


def test_b0_preset_full_width_forward():
    model = build_speaker_model(Spec("redimnet_b0", ReDimNetPresetConfig()), FeaturesConfig(n_mels=60)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 16000))
    assert out.shape == (1, 192) and torch.isfinite(out).all()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"encoder.stages\[1\].stride"):
        ReDimNetConfig(freq_bins=10, stages=[ReDimNetStage(1, 1), ReDimNetStage(3, 1)])
    with pytest.raises(ConfigError, match=r"encoder.stages\[0\].att_red"):
        ReDimNetConfig(freq_bins=12, channels=4, stages=[ReDimNetStage(1, 1, 1, 5)])
    assert preset_config("b2").stages == ReDimNetConfig().stages  # the generic default is B2


@pytest.mark.parametrize("path, name, n_mels", [("configs/supervised/redimnet_b2.yml", "redimnet_b2", 72),
                                                ("configs/simclr/redimnet_b0.yml", "redimnet_b0", 60)])
def test_configs_load(path, name, n_mels):
    config = load_config(path)
    assert config.encoder.name == name and config.features.n_mels == n_mels
