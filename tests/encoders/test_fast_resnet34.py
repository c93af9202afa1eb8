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
