import math

import numpy as np
import pytest
import torch
from torch import nn

from sslsv.config import ConfigError, FeaturesConfig, Spec
from sslsv.encoders.base import Encoder, SpeakerModel, build_speaker_model
from sslsv.encoders.fast_resnet34 import FastResNet34Config
from sslsv.methods.cpc import CPC, CPCConfig, CPCLoss
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_cpc(p: np.ndarray, y: np.ndarray, tau: float) -> float:
    """Eq. (1): p, y (B, K, C); negatives: the other utterances' frames at the same step."""
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    b, k, _ = p.shape
    total = 0.0
    for i in range(b):
        for t in range(k):
            denominator = sum(math.exp(cos(p[i, t], y[j, t]) / tau) for j in range(b))
            total += -math.log(math.exp(cos(p[i, t], y[i, t]) / tau) / denominator)
    return total / (b * k)


@pytest.mark.parametrize("batch, steps, dim, tau", [(2, 1, 3, 1.0), (5, 4, 8, 1.0), (4, 3, 6, 0.2)])
def test_loss_matches_equation_1(batch, steps, dim, tau):
    g = torch.Generator().manual_seed(batch * steps)
    p, y = torch.randn(batch, steps, dim, generator=g, dtype=torch.float64), torch.randn(batch, steps, dim, generator=g, dtype=torch.float64)
    loss, logits = CPCLoss(tau, "cosine")(p, y)  # method.logits=cosine: the literal Eq. (1)
    assert loss.item() == pytest.approx(reference_cpc(p.numpy(), y.numpy(), tau), rel=1e-9)
    assert logits.shape == (steps, batch, batch)


def test_predicts_the_last_steps_from_the_past():
    method = CPC(tiny_speaker_model(), CPCConfig(aggregator_dim=8), tiny_info())
    frames = torch.randn(3, method.aggregator.gru.input_size, 12)
    predictions, targets, context = method._predict(frames)
    assert predictions.shape == (3, 4, frames.shape[1]) and context.shape == (3, 8)
    assert torch.equal(targets, frames[:, :, -4:].transpose(1, 2))
    changed = frames.clone()
    changed[:, :, -4:] += 1  # the future does not leak into the context
    assert torch.equal(method._predict(changed)[2], context)
    with pytest.raises(ValueError, match="frames"):
        method._predict(torch.randn(3, frames.shape[1], 4))


def test_cross_view_targets_are_the_positive_views_future():
    method = CPC(tiny_speaker_model(), CPCConfig(aggregator_dim=8), tiny_info())
    frames, positive = torch.randn(3, method.aggregator.gru.input_size, 12), torch.randn(3, 16, 9)
    predictions, targets, context = method._predict(frames, positive)
    assert torch.equal(targets, positive[:, :, -4:].transpose(1, 2))
    assert torch.equal(context, method._predict(frames)[2])  # the context reads the anchor only
    pairs = method._frames(random_batch(batch=3, lengths=(0.3, 0.3)))
    assert len(pairs) == 1  # anchor -> positive only, as Eq. (1) and the authors
    symmetric = CPC(tiny_speaker_model(), CPCConfig(aggregator_dim=8, symmetric=True), tiny_info())
    pairs = symmetric._frames(random_batch(batch=3, lengths=(0.3, 0.3)))
    assert len(pairs) == 2 and pairs[0][0] is pairs[1][1] and pairs[0][1] is pairs[1][0]  # both directions
    own = CPC(tiny_speaker_model(), CPCConfig(aggregator_dim=8, cross_view=False), tiny_info())
    assert all(a is b for a, b in own._frames(random_batch(batch=3, lengths=(0.3, 0.3))))


def test_gru_pooling_is_the_aggregator_and_the_evaluated_read_out():
    torch.manual_seed(0)
    model = build_speaker_model(Spec("fast_resnet34", FastResNet34Config(base_width=4, pooling="gru", head=False,
                                                                         embed_dim=256)), FeaturesConfig(n_mels=24))
    method = CPC(model, CPCConfig(), tiny_info())
    assert method.aggregator is None and method.context_network is model.encoder.pooling
    assert not any(name.startswith("aggregator") for name, _ in method.named_parameters())
    wave = 0.1 * torch.randn(2, 8000)
    frames = model.forward_frames(wave)
    assert torch.allclose(model(wave), method.context_network.contexts(frames.transpose(1, 2))[:, -1])
    history = smoke(method, lengths=(0.3, 0.3), batch=4)  # Eq. (1) trains the pooling that embeds utterances
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.pooling.parameters())
    assert history
    with pytest.raises(ConfigError, match="method.aggregator_dim"):
        CPC(model, CPCConfig(aggregator_dim=128), tiny_info())


def test_smoke_two_steps():
    history = smoke(CPC(tiny_speaker_model(), CPCConfig(aggregator_dim=16), tiny_info()), lengths=(0.3, 0.3), batch=4)
    assert history[-1]["contrastive_entropy"] <= math.log(4) + 1e-6


class _PooledOnly(Encoder):
    """An encoder without frame-level outputs (has_frames False)."""

    def __init__(self):
        super().__init__()
        self.embed_dim = 4
        self.linear = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=2))


def test_encoder_without_frames_is_refused_through_the_interface():
    with pytest.raises(ConfigError, match="cpc needs an encoder with frame-level outputs.*_PooledOnly"):
        CPC(SpeakerModel(_PooledOnly(), FeaturesConfig(n_mels=24)), CPCConfig(), tiny_info())


def test_msfa_gru_pooling_is_reused_through_frame_pooling():
    """fast_resnet34_ms with MSFA: one pooling reads forward_frames, so a gru pooling is CPC's aggregator."""
    from sslsv.encoders.resnet_multiscale import FastResNet34MSConfig

    cfg = FastResNet34MSConfig(aggregation="msfa", pooling="gru", base_width=4, layers=(1, 1, 1, 1), embed_dim=16)
    model = build_speaker_model(Spec("fast_resnet34_ms", cfg), FeaturesConfig(n_mels=24))
    method = CPC(model, CPCConfig(), tiny_info())
    assert method.aggregator is None and method.context_network is model.encoder.poolings[0]
