import numpy as np
import pytest
import torch

from sslsv.methods.heads import ProjectorConfig
from sslsv.methods.vibcreg import IterNorm, VIbCReg, VIbCRegConfig, VIbCRegLoss
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_vibcreg(z1: np.ndarray, z2: np.ndarray, lam: float, mu: float, nu: float) -> float:
    """VIbCReg's loss written from its definition: VICReg's s and v, c = 1/D^2 sum of the squared off-diagonal
    entries of the correlation matrix."""
    b, d = z1.shape
    s = sum(np.sum((z1[i] - z2[i]) ** 2) for i in range(b)) / (b * d)

    def v(z):
        return sum(max(0.0, 1 - np.sqrt(np.var(z[:, k], ddof=1) + 1e-4)) for k in range(d)) / d

    def c(z):
        corr = np.corrcoef(z, rowvar=False)
        return sum(corr[k, l] ** 2 for k in range(d) for l in range(d) if k != l) / d ** 2

    return lam * s + mu * (v(z1) + v(z2)) + nu * (c(z1) + c(z2))


@pytest.mark.parametrize("batch, dim, weights", [(4, 3, (1, 1, 8)), (16, 8, (25, 25, 200)), (7, 5, (1, 0.5, 0.0))])
def test_loss_matches_the_papers_equation(batch, dim, weights):
    g = torch.Generator().manual_seed(batch + dim)
    z1 = 0.3 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    z2 = 3.0 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    loss, terms = VIbCRegLoss(*weights)(z1, z2)
    assert loss.item() == pytest.approx(reference_vibcreg(z1.numpy(), z2.numpy(), *weights), rel=1e-9)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_covariance_term_ignores_the_scale_of_each_dimension():
    z = torch.randn(32, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scaled = z * torch.tensor([1e-3, 1.0, 10.0, 1e2, 0.5, 7.0], dtype=torch.float64)
    loss = VIbCRegLoss(0.0, 0.0, 1.0)
    assert loss(scaled, scaled)[1]["covariance"].item() == pytest.approx(loss(z, z)[1]["covariance"].item(), rel=1e-9)


def _correlated(n: int, f: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(f, dtype=torch.float64) + 0.3 * torch.randn(f, f, generator=g, dtype=torch.float64)
    return 2.0 + torch.randn(n, f, generator=g, dtype=torch.float64) @ mixing


def test_iternorm_whitens_each_group_and_evaluates_with_running_statistics():
    x = _correlated(512, 8)
    norm = IterNorm(8, groups=2, iterations=10).double()  # (the uncoupled iteration drifts again past ~15)
    out = norm(x)
    assert (norm.groups, norm.channels) == (2, 4)
    for group in out.split(4, dim=1):  # whitened: identity covariance within a group (biased, as Sigma)
        centred = group - group.mean(0)
        assert torch.allclose(centred.T @ centred / len(x), torch.eye(4, dtype=torch.float64), atol=1e-3)
    # the whitening matrix is Sigma^(-1/2) of each group (eigendecomposition reference)
    first = x[:, :4] - x[:, :4].mean(0)
    sigma = first.T @ first / len(x) + 1e-5 * torch.eye(4, dtype=torch.float64)
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    assert torch.allclose(out[:, :4], first @ (vectors @ torch.diag(eigenvalues.rsqrt()) @ vectors.T), atol=1e-3)
    norm.eval()  # running statistics after one step: 0.1 of the batch's
    expected_mean = 0.1 * x[:, :4].mean(0)
    assert torch.allclose(norm.running_mean[0, :, 0], expected_mean)
    assert norm(x).shape == x.shape


def test_iternorm_group_size_divides_the_features():
    norm = IterNorm(24, groups=64)
    assert norm.groups * norm.channels == 24


def test_smoke_two_steps_and_gradients_through_iternorm():
    cfg = VIbCRegConfig(projector=ProjectorConfig(hidden_dim=32, out_dim=16), iternorm_groups=4)
    method = VIbCReg(tiny_speaker_model(), cfg, tiny_info())
    assert isinstance(method.projector[1], IterNorm)
    history = smoke(method, lengths=(0.25, 0.25), batch=4)
    assert {"invariance", "variance", "covariance", "embedding_std"} <= set(history[-1])
    method(random_batch(4, (0.25, 0.25))).loss.backward()
    assert method.projector[0][0].weight.grad is not None and method.projector[1].weight.grad is not None
