import pytest
import torch
from torch import nn

from sslsv.config import ConfigError, FeaturesConfig, Spec
from sslsv.encoders.base import build_speaker_model, count_parameters
from sslsv.encoders.sv_mixer import (
    MixerBlock,
    SVMixerBackbone,
    SVMixerConfig,
    TimeLinearMixer,
    conv_frames,
)
from sslsv.encoders.profile import count_macs

SECONDS = [1.0, 2.0, 7.3]


def _tiny(**overrides) -> SVMixerConfig:
    values = dict(conv_channels=16, hidden_size=32, layers=2, group_dim=8, embed_dim=12, pool_bottleneck=8,
                  time_kernel=9)
    values.update(overrides)
    return SVMixerConfig(**values)


def _mixed_batch(seconds: float) -> torch.Tensor:
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    return torch.stack([torch.zeros(n), 0.5 * torch.randn(n), 0.9 * torch.sin(2 * torch.pi * 220 * t)])


def test_block_size_and_macs_match_the_paper():
    # Paper (and arith): 3.75 M parameters and 0.63 GMACs per block for a 3-s input (149 frames), "linear" mode.
    block = MixerBlock(SVMixerConfig(time_mixing="linear"), last=False)
    assert count_parameters(block) == 3_745_969
    macs = count_macs(block, torch.randn(1, 149, 1024))
    assert abs(macs / 1e9 - 0.632) < 0.005


def test_whole_stack_parameter_count():
    backbone = SVMixerBackbone(SVMixerConfig(time_mixing="linear"))
    assert abs(count_parameters(backbone) / 1e6 - 49.68) < 0.01
    assert abs(count_parameters(backbone.features) / 1e6 - 4.20) < 0.01


def test_frame_counts():
    assert conv_frames(48000) == 149 and conv_frames(16000) == 49 and conv_frames(400) == 1


def test_count_macs_on_known_layers():
    assert count_macs(nn.Linear(4, 3), torch.randn(7, 4)) == 3 * 4  # per batch element
    assert count_macs(nn.Conv1d(3, 6, 5, groups=3), torch.randn(1, 3, 7)) == 6 * 3 * 1 * 5


@pytest.mark.parametrize("time_mixing, policy", [("conv", "error"), ("linear", "pad")])
def test_tiny_forward_backward_all_lengths(time_mixing, policy):
    torch.manual_seed(0)
    cfg = _tiny(time_mixing=time_mixing, length_policy=policy, max_frames=49)
    model = build_speaker_model(Spec("sv_mixer", cfg), FeaturesConfig())
    for seconds in SECONDS:
        model.zero_grad()
        wave = torch.randn(2, int(seconds * 16000))
        states = model.encoder.forward_layers(wave)
        assert states.shape == (2, 3, conv_frames(wave.shape[1]), 32)
        out = model(wave)
        assert out.shape == (2, 12) and torch.isfinite(out).all()
        out.pow(2).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
    out = model(_mixed_batch(2.0))
    assert out.shape == (3, 12) and torch.isfinite(out).all()


def test_linear_mode_rejects_other_lengths_by_default():
    model = build_speaker_model(Spec("sv_mixer", _tiny(time_mixing="linear")), FeaturesConfig()).eval()
    assert model(torch.randn(1, 48000)).shape == (1, 12)  # 3 s = 149 frames
    with pytest.raises(ValueError, match="max_frames=149"):
        model(torch.randn(1, 32000))


def test_linear_pad_policy_mixes_each_chunk_alone():
    torch.manual_seed(0)
    mixer = TimeLinearMixer(max_frames=5, expansion=2, length_policy="pad")
    x = torch.randn(2, 3, 12)
    y = mixer(x)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (0, 3))
    for k in range(3):
        chunk = padded[..., 5 * k:5 * k + 5]
        expected = mixer.fc2(torch.nn.functional.gelu(mixer.fc1(chunk)))[..., : min(5, 12 - 5 * k)]
        assert torch.allclose(y[..., 5 * k:5 * k + 5], expected, atol=1e-6)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="encoder.group_dim"):
        SVMixerConfig(hidden_size=100, group_dim=128)
    with pytest.raises(ConfigError, match="encoder.time_kernel"):
        SVMixerConfig(time_kernel=8)
