import pytest
import torch
from torch import nn

from sslsv.methods.ema import copy_buffers, deactivate_requires_grad, momentum_copy, update_momentum
from sslsv.methods.ema import cosine_schedule


def _pair():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = momentum_copy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    return online, ema


def test_momentum_copy_is_frozen_and_equal():
    online = nn.Linear(3, 2)
    ema = momentum_copy(online)
    assert all(not p.requires_grad for p in ema.parameters())
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), ema.parameters()))
    assert all(p.requires_grad for p in online.parameters())


def test_m_one_leaves_teacher_unchanged():
    online, ema = _pair()
    before = [p.clone() for p in ema.parameters()]
    update_momentum(online, ema, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, ema.parameters()))


def test_m_zero_copies_student():
    online, ema = _pair()
    update_momentum(online, ema, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), ema.parameters()))


def test_one_step_matches_formula():
    online, ema = _pair()
    before = [p.clone() for p in ema.parameters()]
    update_momentum(online, ema, 0.9)
    for old, new, student in zip(before, ema.parameters(), online.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * student)


def test_buffers_are_not_averaged_unless_copied():
    online, ema = _pair()
    online.train()
    online(torch.randn(8, 3))  # changes the online running statistics
    update_momentum(online, ema, 0.0)
    assert not torch.equal(online[1].running_mean, ema[1].running_mean)
    copy_buffers(online, ema)
    assert torch.equal(online[1].running_mean, ema[1].running_mean)


def test_invalid_momentum_and_deactivate():
    online, ema = _pair()
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(online, ema, 1.5)
    assert all(not p.requires_grad for p in deactivate_requires_grad(nn.Linear(2, 2)).parameters())


def test_cosine_schedule_endpoints():
    assert cosine_schedule(0.0, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(1.0, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(0.5, 0.996, 1.0) == pytest.approx(0.998)
