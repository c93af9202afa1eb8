"""Shared pieces of the method tests: a tiny Fast ResNet-34 and a smoke step (forward, backward, hooks)."""
from __future__ import annotations

import math

import pytest
import torch

from sslsv.config import FeaturesConfig, Spec
from sslsv.encoders.base import build_speaker_model
from sslsv.encoders.fast_resnet34 import FastResNet34Config
from sslsv.methods.base import Batch, Method, TrainingInfo


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores); restored afterwards.
    Import it into a test module to apply it to every test there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_speaker_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_speaker_model(Spec("fast_resnet34", FastResNet34Config(base_width=4, embed_dim=16)),
                               FeaturesConfig(n_mels=24))


def tiny_info(num_samples: int = 32, epochs: int = 2) -> TrainingInfo:
    return TrainingInfo(num_speakers=0, num_samples=num_samples, steps_per_epoch=4, epochs=epochs)


def random_batch(batch: int = 8, lengths: tuple[float, ...] = (0.5, 0.5), seed: int = 0, offset: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [0.1 * torch.randn(batch, int(seconds * 16000), generator=g) for seconds in lengths]
    indices = torch.arange(offset, offset + batch)
    return Batch(views, torch.zeros(batch, dtype=torch.long), indices)


def smoke(method: Method, lengths: tuple[float, ...] = (0.5, 0.5), batch: int = 8, epoch: int = 0,
          steps: int = 2) -> list[dict[str, float]]:
    """Runs `steps` training steps, each: on_epoch_start(epoch), forward, backward, before_optimizer_step, a plain
    SGD step (lr 0.01) on the parameters that got a gradient, after_optimizer_step. Returns each step's metrics.

    Checks: a finite 0-d loss, metrics that are finite, detached 0-d tensors, and that the steps changed the
    encoder's parameters. It does not check which parameters got a gradient (tests that care check it)."""
    params = [p for p in method.parameters() if p.requires_grad]
    method.train()
    before = [p.detach().clone() for p in method.encoder.parameters()]
    history = []
    for step in range(steps):
        method.on_epoch_start(epoch)
        output = method(random_batch(batch, lengths, seed=step, offset=(step * batch) % 32))
        assert output.loss.dim() == 0 and math.isfinite(output.loss.item())
        for p in params:
            p.grad = None
        output.loss.backward()
        method.before_optimizer_step(epoch)
        with torch.no_grad():  # plain SGD (torch.optim imports torch._dynamo: seconds per test process)
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-0.01)
        method.after_optimizer_step((step + 1) / steps)
        metrics = {}
        for key, value in output.metrics.items():
            assert value.dim() == 0 and not value.requires_grad, key
            assert math.isfinite(value.item()), key
            metrics[key] = value.item()
        history.append(metrics)
    changed = any(not torch.equal(a, p) for a, p in zip(before, method.encoder.parameters()))
    assert changed, "the optimiser step did not change the encoder"
    return history
