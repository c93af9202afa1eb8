import math

import numpy as np
import pytest
import torch

from sslsv.methods.simclr import NTXentLoss


def reference_ntxent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """Plain loop over the 2B anchors: positive = other view, candidates = all 2B embeddings but the anchor."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    b = len(z1)
    total = 0.0
    for i in range(2 * b):
        positive = (i + b) % (2 * b)
        sims = [math.exp(float(z[i] @ z[j]) / tau) for j in range(2 * b) if j != i]
        total += -math.log(math.exp(float(z[i] @ z[positive]) / tau) / sum(sims))
    return total / (2 * b)


@pytest.mark.parametrize("batch, dim, tau", [(2, 3, 0.5), (8, 16, 0.03), (5, 32, 0.2)])
def test_matches_reference(batch, dim, tau):
    g = torch.Generator().manual_seed(batch * dim)
    z1, z2 = torch.randn(batch, dim, generator=g, dtype=torch.float64), torch.randn(batch, dim, generator=g, dtype=torch.float64)
    loss, _ = NTXentLoss(tau)(z1, z2)
    assert loss.item() == pytest.approx(reference_ntxent(z1.numpy(), z2.numpy(), tau), rel=1e-9)


def test_identical_directions_give_log_2n_minus_1():
    z = torch.ones(6, 4)
    loss, _ = NTXentLoss(0.1)(z, z)
    assert loss.item() == pytest.approx(math.log(2 * 6 - 1), rel=1e-6)


def test_symmetric_in_views():
    z1, z2 = torch.randn(7, 5), torch.randn(7, 5)
    assert NTXentLoss(0.2)(z1, z2)[0].item() == pytest.approx(NTXentLoss(0.2)(z2, z1)[0].item(), rel=1e-6)
