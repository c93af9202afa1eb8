import numpy as np
import pytest
import torch

from sslsv.methods.heads import ProjectorConfig
from sslsv.methods.simsiam import SimSiam, SimSiamConfig, SimSiamLoss
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_simsiam(p1, p2, z1, z2) -> float:
    """Eq. (10), averaged over the two directions."""
    def one(p, z):
        return -np.mean([p[i] @ z[i] / (np.linalg.norm(p[i]) * np.linalg.norm(z[i])) for i in range(len(p))])
    return (one(p1, z2) + one(p2, z1)) / 2


@pytest.mark.parametrize("batch, dim", [(2, 3), (9, 12)])
def test_loss_matches_equation_10(batch, dim):
    g = torch.Generator().manual_seed(batch)
    p1, p2, z1, z2 = (torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(4))
    assert SimSiamLoss()(p1, p2, z1, z2).item() == pytest.approx(
        reference_simsiam(p1.numpy(), p2.numpy(), z1.numpy(), z2.numpy()), rel=1e-10)


def test_stop_gradient_on_targets():
    p1, p2, z1, z2 = (torch.randn(4, 3, requires_grad=True) for _ in range(4))
    SimSiamLoss()(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None


def test_projector_ends_with_batch_norm_and_smoke():
    method = SimSiam(tiny_speaker_model(), SimSiamConfig(
        projector=ProjectorConfig(hidden_dim=32, out_dim=16, last_batch_norm=True), predictor_hidden_dim=8), tiny_info())
    assert isinstance(method.projector[-1], torch.nn.BatchNorm1d)
    assert method.predictor[0].out_features == 8
    smoke(method, lengths=(0.25, 0.25), batch=4)
