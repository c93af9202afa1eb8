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
