import numpy as np
import pytest
import torch

from sslsv.methods.heads import ProjectorConfig
from sslsv.methods.vicreg import VICReg, VICRegConfig, VICRegLoss, covariance_loss, variance_loss
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_vicreg(z1: np.ndarray, z2: np.ndarray, lam: float, mu: float, nu: float) -> float:
    """Eq. (8) with the authors' normalisations (module docstring): s averaged over B and D, eps 1e-4 in the std."""
    b, d = z1.shape
    s = sum(np.sum((z1[i] - z2[i]) ** 2) for i in range(b)) / (b * d)

    def v(z):
        return sum(max(0.0, 1 - np.sqrt(np.var(z[:, k], ddof=1) + 1e-4)) for k in range(d)) / d

    def c(z):
        cov = np.cov(z, rowvar=False)
        return sum(cov[k, l] ** 2 for k in range(d) for l in range(d) if k != l) / d

    return lam * s + mu * (v(z1) + v(z2)) + nu * (c(z1) + c(z2))


@pytest.mark.parametrize("batch, dim, weights", [(4, 3, (1, 1, 0.1)), (16, 8, (25, 25, 1)), (7, 5, (1, 0.5, 0.04))])
def test_loss_matches_equation_8(batch, dim, weights):
    g = torch.Generator().manual_seed(batch + dim)
    z1, z2 = 0.3 * torch.randn(batch, dim, generator=g, dtype=torch.float64), torch.randn(batch, dim, generator=g, dtype=torch.float64)
    loss, terms = VICRegLoss(*weights)(z1, z2)
    assert loss.item() == pytest.approx(reference_vicreg(z1.numpy(), z2.numpy(), *weights), rel=1e-9)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_terms_vanish_on_ideal_embeddings():
    z = torch.eye(4, dtype=torch.float64).repeat(8, 1) * 4  # decorrelated-ish dims with std > 1
    assert variance_loss(z).item() == 0.0
    assert covariance_loss(torch.zeros(5, 3)).item() == 0.0


def test_smoke_two_steps():
    method = VICReg(tiny_speaker_model(), VICRegConfig(projector=ProjectorConfig(hidden_dim=32, out_dim=16)), tiny_info())
    history = smoke(method, lengths=(0.25, 0.25), batch=4)
    assert {"invariance", "variance", "covariance", "embedding_std"} <= set(history[-1])
