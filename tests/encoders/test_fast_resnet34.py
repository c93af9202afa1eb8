import pytest
import torch

from sslsv.config import FeaturesConfig, Spec
from sslsv.encoders.base import build_speaker_model, count_parameters
from sslsv.encoders.fast_resnet34 import FastResNet34, FastResNet34Config


@pytest.mark.parametrize("pooling, expected", [("sap", 1_437_078), ("asp", 1_502_614)])
def test_parameter_count_matches_reference(pooling, expected):
    model = FastResNet34(FastResNet34Config(pooling=pooling), in_features=40)
    assert abs(count_parameters(model) - expected) / expected < 0.01


def test_waveform_to_representation_forward_backward():
    model = build_speaker_model(Spec("fast_resnet34", FastResNet34Config(embed_dim=64)), FeaturesConfig(n_mels=40))
    wave = torch.randn(3, 16000)
    out = model(wave)
    assert out.shape == (3, 64) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    frames = model.forward_frames(wave)
    assert frames.shape[:2] == (3, 128) and frames.shape[2] == 101 // 4 + 1


def test_without_head_the_representation_is_the_mean_of_the_frames():
    cfg = FastResNet34Config(pooling="gap", head=False, embed_dim=128)
    model = build_speaker_model(Spec("fast_resnet34", cfg), FeaturesConfig(n_mels=40)).eval()
    wave = torch.randn(2, 16000)
    assert model.embed_dim == 128
    assert torch.allclose(model(wave), model.forward_frames(wave).mean(dim=2), atol=1e-6)
    assert count_parameters(model.encoder.head) == 0


def test_without_head_embed_dim_must_name_the_pooled_size():
    from sslsv.config import ConfigError

    with pytest.raises(ConfigError, match=r"encoder.embed_dim: 512.*set encoder.embed_dim: 128"):
        FastResNet34(FastResNet34Config(pooling="gap", head=False, embed_dim=512), in_features=40)


def _authors_stats_parameter_count(n_mels: int, base: int = 16, embed_dim: int = 512) -> int:
    """theolepage/sslsv `ResNet34` with `pooling_mode: stats`, layer by layer from its definitions (ResNet34.py):
    conv 7x7 + BN, ResNetBlocks [3, 4, 6, 3] (conv3x3-BN-conv3x3-BN, SELayer reduction 8, 1x1 conv + BN shortcut
    when the shape changes), StatsPooling (no parameters), fc: Linear(2 * int(n_mels / 8 * 8 * base), embed_dim)."""
    def block(c_in, c_out, stride):
        convs = 9 * c_in * c_out + 9 * c_out * c_out + 2 * (2 * c_out)
        se = c_out * (c_out // 8) + c_out // 8 + (c_out // 8) * c_out + c_out
        shortcut = c_in * c_out + 2 * c_out if stride != 1 or c_in != c_out else 0
        return convs + se + shortcut

    total = 49 * base + 2 * base
    c_in = base
    for depth, width, stride in [(3, base, 1), (4, 2 * base, 2), (6, 4 * base, 2), (3, 8 * base, 1)]:
        total += block(c_in, width, stride) + sum(block(width, width, 1) for _ in range(depth - 1))
        c_in = width
    fc_in = 2 * int(n_mels / 8 * (8 * base))
    return total + fc_in * embed_dim + embed_dim


@pytest.mark.parametrize("n_mels, expected", [(40, 2_010_262), (80, 2_665_622)])
def test_stats_pooling_has_the_authors_parameter_count(n_mels, expected):
    """The authors' Fast ResNet-34 with stats pooling: 2.01 M / 2.67 M at 40 / 80 mels, to the parameter."""
    assert _authors_stats_parameter_count(n_mels) == expected
    model = FastResNet34(FastResNet34Config(pooling="stats"), in_features=n_mels)
    assert count_parameters(model) == expected
    assert model.frame_dim == 128 * n_mels // 8 and model.head.in_features == 2 * 128 * n_mels // 8


def test_stats_with_frequency_mean_is_the_smaller_alternative():
    model = FastResNet34(FastResNet34Config(pooling="stats", frequency="mean"), in_features=80)
    assert model.frame_dim == 128 and count_parameters(model) == 1_437_078 - 16_640 - 66_048 + 131_584


def test_stats_pooled_output_equals_the_authors_computation():
    """mean and std over time of every (channel, frequency) row of the last stage, as the authors' StatsPooling."""
    torch.manual_seed(0)
    model = FastResNet34(FastResNet34Config(base_width=4, layers=(1, 1, 1, 1), pooling="stats", embed_dim=8),
                         in_features=24).eval()
    x = torch.randn(2, 24, 37)
    with torch.no_grad():
        last = model.forward_stages(x)[-1]  # (B, C, F', T')
        B, C, F, T = last.shape
        assert (C, F) == (32, 3)
        expected = torch.zeros(B, 2 * C * F)
        for b in range(B):
            for c in range(C):
                for f in range(F):
                    row = last[b, c, f].double()
                    mean = row.sum() / T
                    var = ((row - mean) ** 2).sum() / T
                    expected[b, c * F + f] = mean
                    expected[b, C * F + c * F + f] = var.clamp(min=1e-5).sqrt()
        pooled = model.pooling(model.forward_frames(x))
        assert torch.allclose(pooled, expected, atol=1e-5)
        assert torch.allclose(model(x), model.head(expected), atol=1e-5)


@pytest.mark.parametrize("pooling, frequency, flatten", [("stats", "auto", True), ("sap", "auto", False),
                                                         ("stats", "mean", False), ("asp", "flatten", True)])
def test_frequency_key_selects_the_frames(pooling, frequency, flatten):
    cfg = FastResNet34Config(base_width=4, layers=(1, 1, 1, 1), pooling=pooling, frequency=frequency, embed_dim=8)
    model = FastResNet34(cfg, in_features=20).eval()  # F' = ceil(20 / 8) = 3
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        last = model.forward_stages(x)[-1]
        frames = model.forward_frames(x)
    want = last.flatten(1, 2) if flatten else last.mean(dim=2)
    assert model.frame_dim == (96 if flatten else 32) and torch.equal(frames, want)  # C = 8 x 4


def test_frequency_key_is_checked():
    from sslsv.config import ConfigError, load_config

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError, match="encoder.frequency"):
        load_config(root / "configs/simclr/fast_resnet34.yml", ["encoder.frequency=sum"])
