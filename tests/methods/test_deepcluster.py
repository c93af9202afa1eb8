import math

import numpy as np
import pytest
import torch

from sslsv.methods.deepcluster import DeepCluster, DeepClusterConfig, DeepClusterLoss
from sslsv.methods.heads import ProjectorConfig
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_deepcluster(z: np.ndarray, c: np.ndarray, labels: np.ndarray, tau: float) -> float:
    """Eq. (4), one sample at a time."""
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    total = 0.0
    for i in range(len(z)):
        denominator = sum(math.exp(cos(z[i], c[k]) / tau) for k in range(len(c)))
        total += -math.log(math.exp(cos(z[i], c[labels[i]]) / tau) / denominator)
    return total / len(z)


@pytest.mark.parametrize("batch, dim, k, tau", [(3, 4, 5, 0.1), (10, 8, 3, 0.5)])
def test_loss_matches_equation_4(batch, dim, k, tau):
    g = torch.Generator().manual_seed(batch)
    z, c = torch.randn(batch, dim, generator=g, dtype=torch.float64), torch.randn(k, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(k, (batch,), generator=g)
    loss = DeepClusterLoss(tau)(z, c, labels)
    assert loss.item() == pytest.approx(reference_deepcluster(z.numpy(), c.numpy(), labels.numpy(), tau), rel=1e-9)


def _method() -> DeepCluster:
    cfg = DeepClusterConfig(num_clusters=[4, 4], kmeans_restarts=5, projector=ProjectorConfig(hidden_dim=32, out_dim=16))
    return DeepCluster(tiny_speaker_model(), cfg, tiny_info(num_samples=40))


def test_epoch_zero_random_then_kmeans_on_the_memory_bank():
    method = _method()
    method.on_epoch_start(0)
    assert method.assignments.shape == (2, 40) and torch.equal(method.assignments, _method().assignments)
    # Fill the bank with 4 well separated groups of 10 (both views), as if an epoch had run.
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    truth = torch.arange(40) % 4
    z = centres[truth] + 0.01 * torch.randn(40, 16)
    method.update_memory_bank(torch.arange(40), z, z)
    method.on_epoch_start(1)
    for j in range(2):
        labels = method.assignments[j]
        for group in range(4):
            assert len(set(labels[truth == group].tolist())) == 1  # every group lands in one cluster
        assert len(set(labels.tolist())) == 4
        cos = torch.nn.functional.normalize(method.heads[j].weight, dim=1) @ centres.T
        assert torch.allclose(cos.max(dim=0).values, torch.ones(4), atol=1e-3)  # heads = centroids
    before = method.assignments.clone()
    method.on_epoch_start(1)  # same epoch again (resume): labels kept
    assert torch.equal(before, method.assignments)


def test_smoke_two_steps_fills_the_bank():
    method = _method()
    history = smoke(method, lengths=(0.25, 0.25), batch=4)
    assert int(method.filled.sum()) == 8 and "cluster_entropy" in history[-1]
