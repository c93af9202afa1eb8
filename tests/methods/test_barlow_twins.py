import numpy as np
import pytest
import torch

from sslsv.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig, BarlowTwinsLoss
from sslsv.methods.heads import ProjectorConfig
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_barlow_twins(z1: np.ndarray, z2: np.ndarray, lam: float) -> float:
    """Eq. (7) with C_dd' = sum_b a_bd b_bd' / sqrt(sum_b a_bd^2) sqrt(sum_b b_bd'^2) on batch-centred a, b."""
    a, b = z1 - z1.mean(0), z2 - z2.mean(0)
    d = z1.shape[1]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = (a[:, i] @ b[:, j]) / (np.sqrt(a[:, i] @ a[:, i]) * np.sqrt(b[:, j] @ b[:, j]))
            total += (1 - c) ** 2 if i == j else lam * c ** 2
    return total


@pytest.mark.parametrize("batch, dim, lam", [(4, 3, 0.005), (16, 8, 0.1), (9, 5, 1.0)])
def test_loss_matches_equation_7(batch, dim, lam):
    g = torch.Generator().manual_seed(batch * dim)
    z1, z2 = torch.randn(batch, dim, generator=g, dtype=torch.float64), torch.randn(batch, dim, generator=g, dtype=torch.float64)
    assert BarlowTwinsLoss(lam)(z1, z2).item() == pytest.approx(reference_barlow_twins(z1.numpy(), z2.numpy(), lam), rel=1e-8)


def test_affine_invariance_per_dimension():
    z1, z2 = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    scale, shift = torch.tensor([2.0, 0.5, 3.0, 1.5], dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    loss = BarlowTwinsLoss(0.01)
    assert loss(z1 * scale + shift, z2).item() == pytest.approx(loss(z1, z2).item(), rel=1e-9)


def test_smoke_two_steps():
    method = BarlowTwins(tiny_speaker_model(), BarlowTwinsConfig(projector=ProjectorConfig(hidden_dim=32, out_dim=16)), tiny_info())
    smoke(method, lengths=(0.25, 0.25), batch=4)
