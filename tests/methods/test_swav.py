import math

import numpy as np
import pytest
import torch

from sslsv.methods.heads import ProjectorConfig
from sslsv.methods.swav import SwAV, SwAVConfig, SwAVLoss, sinkhorn_knopp
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_swav(scores1, scores2, codes1, codes2, tau) -> float:
    """Eq. (5) for both swapped directions, averaged; multiplied by P (the authors' normalisation, see module)."""
    def one(codes, scores):
        b, p = scores.shape
        total = 0.0
        for i in range(b):
            denominator = sum(math.exp(scores[i, k] / tau) for k in range(p))
            for k in range(p):
                total += codes[i, k] * math.log(math.exp(scores[i, k] / tau) / denominator)
        return -total / (b * p) * p
    return (one(codes1, scores2) + one(codes2, scores1)) / 2


@pytest.mark.parametrize("batch, prototypes, tau", [(3, 4, 0.1), (8, 6, 0.5)])
def test_loss_matches_equation_5(batch, prototypes, tau):
    g = torch.Generator().manual_seed(batch)
    s1, s2 = (torch.rand(batch, prototypes, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(2))
    c1, c2 = (torch.softmax(torch.randn(batch, prototypes, generator=g, dtype=torch.float64), 1) for _ in range(2))
    loss = SwAVLoss(tau)(s1, s2, c1, c2)
    assert loss.item() == pytest.approx(reference_swav(s1.numpy(), s2.numpy(), c1.numpy(), c2.numpy(), tau), rel=1e-9)


def test_sinkhorn_gives_balanced_assignments():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(60, 6, generator=g, dtype=torch.float64) * 2 - 1
    scores[:, 0] += 1.0  # a prototype that every sample prefers
    codes = sinkhorn_knopp(scores, epsilon=0.05, iterations=100)
    assert torch.allclose(codes.sum(dim=1), torch.ones(60, dtype=torch.float64))
    assert torch.allclose(codes.sum(dim=0), torch.full((6,), 10.0, dtype=torch.float64), rtol=1e-3)
    three = sinkhorn_knopp(scores, epsilon=0.05, iterations=3).sum(dim=0)  # the review's setting: near-balanced
    greedy = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert (three - 10).abs().max() < 0.2 * (greedy - 10).abs().max()


def _method(**options) -> SwAV:
    cfg = SwAVConfig(**{"num_prototypes": 10, "queue_size": 8, "queue_start_epoch": 1,
                        "projector": ProjectorConfig(hidden_dim=32, out_dim=16), **options})
    return SwAV(tiny_speaker_model(), cfg, tiny_info())


def test_prototypes_frozen_during_first_epoch_and_unit_norm():
    method = _method()
    method(random_batch(4, (0.25, 0.25))).loss.backward()
    method.before_optimizer_step(0)
    assert method.prototypes.weight.grad is None
    method(random_batch(4, (0.25, 0.25))).loss.backward()
    method.before_optimizer_step(1)
    assert method.prototypes.weight.grad is not None
    with torch.no_grad():
        method.prototypes.weight.mul_(3)
    method.after_optimizer_step(0.5)
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(10))


def test_queue_starts_at_its_epoch_and_is_used_once_full():
    method = _method()
    history = smoke(method, lengths=(0.25, 0.25), batch=4, epoch=0)
    assert method.queue is None and history[-1]["queue_used"] == 0.0
    history = smoke(method, lengths=(0.25, 0.25), batch=4, epoch=1, steps=3)
    assert method.queue.shape == (2, 8, 16) and method.queue_count == 8
    assert [h["queue_used"] for h in history] == [0.0, 0.0, 1.0]
    assert 0 <= history[-1]["cluster_entropy"] <= math.log(10)
