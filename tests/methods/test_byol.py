import numpy as np
import pytest
import torch

from sslsv.methods.byol import BYOL, BYOLConfig, BYOLLoss
from sslsv.methods.heads import ProjectorConfig
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_byol(p1, p2, z1, z2) -> float:
    """Eq. (9) in both directions, summed: (2 - 2 mean cos(p1, z2)) + (2 - 2 mean cos(p2, z1))."""
    def one(p, z):
        return 2 - 2 * np.mean([p[i] @ z[i] / (np.linalg.norm(p[i]) * np.linalg.norm(z[i])) for i in range(len(p))])
    return one(p1, z2) + one(p2, z1)


@pytest.mark.parametrize("batch, dim", [(2, 3), (7, 16), (16, 5)])
def test_loss_matches_equation_9(batch, dim):
    g = torch.Generator().manual_seed(batch * dim)
    p1, p2, z1, z2 = (torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(4))
    loss = BYOLLoss()(p1, p2, z1, z2)
    assert loss.item() == pytest.approx(reference_byol(p1.numpy(), p2.numpy(), z1.numpy(), z2.numpy()), rel=1e-10)


def _method() -> BYOL:
    return BYOL(tiny_speaker_model(), BYOLConfig(projector=ProjectorConfig(hidden_dim=32, out_dim=16),
                                                 predictor_hidden_dim=32), tiny_info())


def test_target_gets_no_gradient_and_momentum_schedule_endpoints():
    method = _method()
    assert all(not p.requires_grad for p in method.target_encoder.parameters())
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    old = [p.clone() for p in method.target_encoder.parameters()]
    method.after_optimizer_step(1.0)  # end of the run: m = 1, teacher frozen
    assert all(torch.equal(a, b) for a, b in zip(old, method.target_encoder.parameters()))
    method.after_optimizer_step(0.0)  # start: m = 0.996
    for o, new, s in zip(old, method.target_encoder.parameters(), method.encoder.parameters()):
        assert torch.allclose(new, 0.996 * o + 0.004 * s)


def test_smoke_two_steps():
    history = smoke(_method(), lengths=(0.25, 0.25), batch=4)
    assert {"embedding_std", "effective_rank"} <= set(history[-1])
