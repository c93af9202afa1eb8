import pytest
import torch

from sslsv.config import ConfigError, FeaturesConfig, Spec
from sslsv.encoders.base import build_speaker_model, count_parameters
from sslsv.encoders.layerwise import (
    LAPBackend,
    LayerAttentivePooling,
    SVMixerLAPConfig,
    SVMixerUniPoolConfig,
    UniPoolBackend,
)
from sslsv.encoders.sv_mixer import SVMixerConfig

SECONDS = [1.0, 2.0, 7.3]


@pytest.mark.parametrize("layers, dim, expected", [(13, 768, 1.71), (25, 1024, 2.31)])
def test_lap_backend_size_matches_arith(layers, dim, expected):
    # WavLM-Base+ (13 states of 768) and WavLM-Large (25 of 1024): 1.71 M and 2.31 M (arith)
    assert abs(count_parameters(LAPBackend(layers, dim)) / 1e6 - expected) < 0.01


def test_unipool_backend_size_matches_arith():
    assert abs(count_parameters(UniPoolBackend(12, 768)) / 1e6 - 2.87) < 0.01  # wav2vec2-base, layers 1..12


def _reference_lap(lap: LayerAttentivePooling, states: torch.Tensor) -> torch.Tensor:
    """Plain loops over frames and heads, following the LAP description (eval mode: no dropout)."""
    x = lap.in_proj(lap.in_norm(states.permute(0, 3, 2, 1)))  # (B, D, T, L)
    b_size, dim, frames, layers = x.shape
    d = dim // lap.heads
    out = torch.zeros(b_size, dim, frames)
    for b in range(b_size):
        for t in range(frames):
            for h in range(lap.heads):
                xs = x[b, h * d:(h + 1) * d, t, :]  # (d, L)

                def se(v):
                    return torch.relu(v @ lap.sq_weight[h] + lap.sq_bias[h]) @ lap.ex_weight[h] + lap.ex_bias[h]

                score = torch.sigmoid(se(xs.mean(dim=0)) + se(xs.max(dim=0).values))  # (L,)
                out[b, h * d:(h + 1) * d, t] = (xs * score).max(dim=1).values
    return lap.out_norm(lap.out_proj(out))


def test_lap_matches_plain_computation():
    torch.manual_seed(0)
    lap = LayerAttentivePooling(num_layers=5, in_dim=8, out_dim=6, heads=4)
    lap.train()
    lap(torch.randn(4, 5, 7, 8))  # populate batch-norm statistics
    lap.eval()
    states = torch.randn(2, 5, 7, 8)
    with torch.no_grad():
        assert torch.allclose(lap(states), _reference_lap(lap, states), atol=1e-5)


def _mixed_batch(seconds: float) -> torch.Tensor:
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    return torch.stack([torch.zeros(n), 0.5 * torch.randn(n), 0.9 * torch.sin(2 * torch.pi * 220 * t)])


def _tiny_mixer() -> SVMixerConfig:
    return SVMixerConfig(conv_channels=16, hidden_size=32, layers=3, group_dim=8, time_kernel=9)


@pytest.mark.parametrize("name, cfg", [
    ("sv_mixer_lap", SVMixerLAPConfig(sv_mixer=_tiny_mixer(), heads=4, lap_dim=16, pool_bottleneck=8, embed_dim=12)),
    ("sv_mixer_unipool", SVMixerUniPoolConfig(sv_mixer=_tiny_mixer(), width=4, heads=4, embed_dim=12)),
])
def test_tiny_encoders_forward_backward_all_lengths(name, cfg):
    torch.manual_seed(0)
    model = build_speaker_model(Spec(name, cfg), FeaturesConfig())
    for seconds in SECONDS:
        model.zero_grad()
        out = model(torch.randn(2, int(seconds * 16000)))
        assert out.shape == (2, 12) and torch.isfinite(out).all()
        out.pow(2).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
    out = model(_mixed_batch(1.0))
    assert out.shape == (3, 12) and torch.isfinite(out).all()
    assert model.encoder.forward_layers(torch.randn(1, 16000)).shape == (1, 4, 49, 32)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="encoder.heads"):
        SVMixerLAPConfig(heads=3)
    with pytest.raises(ConfigError, match="encoder.heads"):
        SVMixerUniPoolConfig(width=5, heads=3)
