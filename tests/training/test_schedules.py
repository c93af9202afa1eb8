import pytest

from sslsv.config import TrainerConfig
from sslsv.methods.ema import cosine_schedule
from sslsv.training.schedules import learning_rate


def test_step_decay_5_percent_every_5_epochs():
    cfg = TrainerConfig(epochs=20, lr=1e-3, schedule="step", step_epochs=5, step_gamma=0.95)
    assert learning_rate(cfg, 0, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 49, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 50, 10) == pytest.approx(0.95e-3)
    assert learning_rate(cfg, 199, 10) == pytest.approx(1e-3 * 0.95**3)


def test_warmup_cosine_reaches_peak_and_minimum():
    cfg = TrainerConfig(epochs=10, lr=0.2, schedule="warmup_cosine", warmup_epochs=2, min_lr=1e-5)
    steps = 10
    assert learning_rate(cfg, 0, steps) == pytest.approx(1e-5 + (0.2 - 1e-5) / 20)
    assert learning_rate(cfg, 19, steps) == pytest.approx(0.2)
    assert learning_rate(cfg, 99, steps) == pytest.approx(1e-5)
    lrs = [learning_rate(cfg, s, steps) for s in range(20, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_cosine_momentum_schedule_endpoints():
    assert cosine_schedule(0.0, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(1.0, 0.996, 1.0) == pytest.approx(1.0)
