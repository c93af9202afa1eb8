import math

import numpy as np
import pytest
import torch

from sslsv.methods.dino import DINO, DINOConfig, DINOLoss
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_dino(teacher, student, center, tau_t, tau_s) -> float:
    """Eq. (11): sum over i, t, s != t of H((z'_t - c)/tau_t, z_s/tau_s), divided by B and by the number of pairs."""
    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()
    b = teacher[0].shape[0]
    total, pairs = 0.0, 0
    for t in range(len(teacher)):
        for s in range(len(student)):
            if s == t:
                continue
            pairs += 1
            for i in range(b):
                total += -np.sum(softmax((teacher[t][i] - center) / tau_t) * np.log(softmax(student[s][i] / tau_s)))
    return total / b / pairs


@pytest.mark.parametrize("batch, dim, g, l", [(2, 5, 2, 4), (4, 8, 2, 2), (3, 6, 1, 3)])
def test_loss_matches_equation_11(batch, dim, g, l):
    gen = torch.Generator().manual_seed(batch * dim)
    teacher = [torch.randn(batch, dim, generator=gen, dtype=torch.float64) for _ in range(g)]
    student = [torch.randn(batch, dim, generator=gen, dtype=torch.float64) for _ in range(g + l)]
    center = 0.1 * torch.randn(1, dim, generator=gen, dtype=torch.float64)
    loss, _, _ = DINOLoss(0.1)(teacher, student, center, 0.04)
    expected = reference_dino([t.numpy() for t in teacher], [s.numpy() for s in student], center.numpy()[0], 0.04, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def _method(**options) -> DINO:
    cfg = DINOConfig(**{"hidden_dim": 32, "bottleneck_dim": 8, "out_dim": 64, **options})
    return DINO(tiny_speaker_model(), cfg, tiny_info())


def test_center_update_is_a_running_mean():
    method = _method()
    x = torch.randn(6, 64)
    method.update_center(x)
    assert torch.allclose(method.center, 0.1 * x.mean(0, keepdim=True))
    y = torch.randn(6, 64)
    method.update_center(y)
    assert torch.allclose(method.center, 0.9 * 0.1 * x.mean(0, keepdim=True) + 0.1 * y.mean(0, keepdim=True))


def test_last_layer_frozen_during_the_first_epoch_only():
    method = _method()
    lengths = (0.3, 0.3, 0.2, 0.2)
    method(random_batch(4, lengths)).loss.backward()
    method.before_optimizer_step(0)
    assert method.head.last_layer.weight_v.grad is None
    assert method.head.mlp[0].weight.grad is not None
    method(random_batch(4, lengths)).loss.backward()
    method.before_optimizer_step(1)
    assert method.head.last_layer.weight_v.grad is not None


def test_teacher_temperature_warmup_and_ablations():
    method = _method(teacher_temperature_warmup=True, warmup_teacher_temperature=0.04, teacher_temperature=0.07,
                     warmup_teacher_epochs=10)
    assert method.teacher_temperature(0) == pytest.approx(0.04)
    # np.linspace(0.04, 0.07, 10)[e] (DINO's and the authors' schedule): the end value at epoch 9
    for epoch in range(12):
        expected = 0.04 + min(epoch, 9) / 9 * 0.03
        assert method.teacher_temperature(epoch) == pytest.approx(expected)
    assert _method(sharpening=False).teacher_temperature(3) == pytest.approx(0.1)
    no_center = _method(centering=False)
    no_center(random_batch(4, (0.3, 0.3, 0.2, 0.2)))
    assert torch.count_nonzero(no_center.center) == 0


def test_evaluates_the_teacher_and_smoke():
    method = _method()
    assert method.embedding_model() is method.teacher_encoder
    history = smoke(method, lengths=(0.3, 0.3, 0.2, 0.2), batch=4)
    metrics = history[-1]
    assert 0 <= metrics["teacher_entropy"] <= math.log(64) + 1e-6 and metrics["kl_teacher_student"] >= 0


def test_head_batch_norm_spreads_nearly_constant_representations():
    """head_batch_norm standardises the hidden units over the batch: representations that differ by 1e-3 around a
    common vector give clearly different head outputs, where the plain head (no BN) maps them to almost one point."""
    from sslsv.methods.heads import DINOHead

    torch.manual_seed(0)
    y = torch.randn(1, 32) + 1e-3 * torch.randn(16, 32)
    plain, with_bn = DINOHead(32, 64, 16, 128), DINOHead(32, 64, 16, 128, batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn.mlp) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.mlp)
    spread = lambda head: torch.nn.functional.normalize(head.mlp(y), dim=1).std(dim=0).mean().item()
    assert spread(plain) < 0.01 < 0.1 < spread(with_bn)
    assert isinstance(_method(head_batch_norm=True).head.mlp[1], torch.nn.BatchNorm1d)
