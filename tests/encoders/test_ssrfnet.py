import pytest
import torch

from sslsv.config import ConfigError, FeaturesConfig, Spec, load_config
from sslsv.encoders.base import build_speaker_model, count_parameters
from sslsv.encoders.redimnet import ReDimNetStage
from sslsv.encoders.ssrfnet import SSRFNet, SSRFNetConfig, group_starts
from sslsv.encoders.sv_mixer import SVMixerConfig

SECONDS = [1.0, 2.0, 7.3]


@pytest.fixture(scope="module")
def full_model():
    """The paper's model with the paper's time-axis Linear, built once (construction only, never run)."""
    return SSRFNet(SSRFNetConfig(sv_mixer=SVMixerConfig(time_mixing="linear")))


def test_parameter_count_matches_arith(full_model):
    # arith 75.16 M (paper 74.2 M): SV-Mixer 49.68 M + classifier 25.48 M
    assert 74e6 <= count_parameters(full_model) <= 76e6
    assert abs(count_parameters(full_model) / 1e6 - 75.16) < 0.02
    assert abs(count_parameters(full_model.sv_mixer) / 1e6 - 49.68) < 0.01
    convs = sum(count_parameters(p.conv) for p in full_model.fusion)
    assert abs(convs / 1e6 - 20.98) < 0.01
    assert abs((count_parameters(full_model.pooling) + count_parameters(full_model.head)) / 1e6 - 0.92) < 0.01


def test_fusion_layout(full_model):
    assert group_starts(12, 4, 4) == [0, 3, 5, 8]  # E1-4, E4-7, E6-9, E9-12
    sizes = [a.num_inputs for a in full_model.aggregations]
    assert sizes == [2, 4, 6, 8, 9, 10] and full_model.final_aggregation.num_inputs == 11


def _tiny() -> SSRFNetConfig:
    mixer = SVMixerConfig(conv_channels=16, hidden_size=32, layers=4, group_dim=8, time_kernel=9)
    stages = [ReDimNetStage(1, 1, 1, 4), ReDimNetStage(2, 1, 1, 4), ReDimNetStage(2, 1, 2, 2)]
    return SSRFNetConfig(sv_mixer=mixer, n_mels=20, freq_bins=8, channels=4, stages=stages, fusion_groups=2,
                         group_size=2, embed_dim=12, pool_bottleneck=8)


def _mixed_batch(seconds: float) -> torch.Tensor:
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    return torch.stack([torch.zeros(n), 0.5 * torch.randn(n), 0.9 * torch.sin(2 * torch.pi * 220 * t)])


def test_tiny_forward_backward_all_lengths():
    torch.manual_seed(0)
    model = build_speaker_model(Spec("ssrfnet", _tiny()), FeaturesConfig())
    for seconds in SECONDS:
        model.zero_grad()
        out = model(torch.randn(2, int(seconds * 16000)))
        assert out.shape == (2, 12) and torch.isfinite(out).all()
        out.pow(2).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
    out = model(_mixed_batch(2.0))
    assert out.shape == (3, 12) and torch.isfinite(out).all()


@pytest.mark.parametrize("samples", [48000, 16000 + 80, 16000 + 159, 23456])
def test_frame_rates_are_aligned_by_cropping(samples):
    model = SSRFNet(_tiny()).eval()
    wave = torch.randn(1, samples)
    with torch.no_grad():
        frames, states = model.forward_frames(wave), model.forward_layers(wave)
        spec = model.spectrogram(wave)
    assert frames.shape[-1] == min(states.shape[2], spec.shape[-1])
    assert abs(states.shape[2] - spec.shape[-1]) <= 2
    if samples == 48000:
        assert frames.shape[-1] == 149 == states.shape[2] == spec.shape[-1]


def test_config_checks_width():
    with pytest.raises(ConfigError, match="encoder.freq_bins"):
        SSRFNetConfig(freq_bins=72)  # 16 * 72 != 1024
    with pytest.raises(ConfigError, match="encoder.group_size"):
        SSRFNetConfig(sv_mixer=SVMixerConfig(layers=2), group_size=4)


def test_configs_load():
    config = load_config("configs/supervised/ssrfnet.yml")
    assert config.encoder.name == "ssrfnet" and config.dataset.batch_size == 128
    demo = load_config("configs/supervised/ssrfnet_demo.yml")
    assert demo.encoder.options.sv_mixer.hidden_size == demo.encoder.options.channels * demo.encoder.options.freq_bins
