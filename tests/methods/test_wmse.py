import numpy as np
import pytest
import torch

from sslsv.methods.heads import ProjectorConfig
from sslsv.methods.wmse import WMSE, WMSEConfig, WMSELoss, whiten
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_whiten(x: np.ndarray) -> np.ndarray:
    """W (x - mu) with W = L^-1, Sigma = L L^T (numpy Cholesky)."""
    centred = x - x.mean(0)
    sigma = centred.T @ centred / (len(x) - 1)
    return centred @ np.linalg.inv(np.linalg.cholesky(sigma)).T


def reference_wmse(z1: np.ndarray, z2: np.ndarray, slices: list[np.ndarray]) -> float:
    """Eq. (6): whiten each view of each slice, then 2 - 2 mean cosine."""
    w1, w2 = np.empty_like(z1), np.empty_like(z2)
    for rows in slices:
        w1[rows], w2[rows] = reference_whiten(z1[rows]), reference_whiten(z2[rows])
    cos = [w1[i] @ w2[i] / (np.linalg.norm(w1[i]) * np.linalg.norm(w2[i])) for i in range(len(z1))]
    return 2 - 2 * float(np.mean(cos))


@pytest.mark.parametrize("batch, dim, w_size", [(16, 3, 16), (32, 4, 16), (24, 2, 8)])
def test_loss_matches_equation_6(batch, dim, w_size):
    g = torch.Generator().manual_seed(batch + dim)
    z1, z2 = torch.randn(batch, dim, generator=g, dtype=torch.float64), torch.randn(batch, dim, generator=g, dtype=torch.float64)
    torch.manual_seed(5)
    loss = WMSELoss(w_size=w_size)(z1, z2)
    torch.manual_seed(5)  # the same random slices
    slices = [s.numpy() for s in torch.tensor_split(torch.randperm(batch), batch // w_size)]
    assert loss.item() == pytest.approx(reference_wmse(z1.numpy(), z2.numpy(), slices), rel=1e-9)


def test_whitened_covariance_is_identity():
    x = torch.randn(64, 5, dtype=torch.float64) @ torch.randn(5, 5, dtype=torch.float64)
    w = whiten(x)
    assert torch.allclose(torch.cov(w.T), torch.eye(5, dtype=torch.float64), atol=1e-9)


def test_singular_slice_has_a_clear_message():
    with pytest.raises(RuntimeError, match="w_size"):
        whiten(torch.ones(8, 4))


def test_smoke_two_steps():
    method = WMSE(tiny_speaker_model(), WMSEConfig(w_size=8, projector=ProjectorConfig(hidden_dim=32, out_dim=4)), tiny_info())
    smoke(method, lengths=(0.25, 0.25), batch=8)
