"""pseudo_supervised: sub-center AAM-softmax (heads.AAMSoftmax) against a plain computation, the loss gate, the GMM
refit, resume."""
import math

import numpy as np
import pytest
import torch

from sslsv.config import ConfigError
from sslsv.methods.base import Batch, TrainingInfo
from sslsv.methods.heads import AAMSoftmax
from sslsv.methods.pseudo_supervised import UNSEEN, PseudoSupervised, PseudoSupervisedConfig
from sslsv.methods.supervised import Supervised, SupervisedConfig


class Stub(torch.nn.Module):
    """Waveform (B, S) -> (B, 8): a linear map of the first 64 samples (keeps the tests about the method)."""

    embed_dim = 8

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 8)

    def forward(self, x):
        return self.linear(x[:, :64])


def method(num_samples=40, classes=5, **options):
    torch.manual_seed(0)
    info = TrainingInfo(num_speakers=classes, num_samples=num_samples, steps_per_epoch=4, epochs=3)
    return PseudoSupervised(Stub(), PseudoSupervisedConfig(**options), info)


def batch(size=10, views=2, offset=0, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch([torch.randn(size, 100, generator=g) for _ in range(views)],
                 torch.randint(0, classes, (size,), generator=g), torch.arange(offset, offset + size))


def reference_losses(y, w, labels, classes, k, s, m):
    """Plain numpy: cos = max over sub-centres, target logit s cos(theta + m), cross-entropy per row."""
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    out = []
    for i in range(len(y)):
        cos = np.array([max(float(y[i] @ w[c * k + j]) for j in range(k)) for c in range(classes)])
        theta = math.acos(np.clip(cos[labels[i]], -1, 1))
        target = math.cos(theta + m) if theta + m <= math.pi else cos[labels[i]] - math.sin(math.pi - m) * m
        logits = s * cos
        logits[labels[i]] = s * target
        out.append(-logits[labels[i]] + np.log(np.exp(logits).sum()))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("m", [0.0, 0.2, 0.5])
def test_subcenter_loss_matches_plain_computation(k, m):
    torch.manual_seed(1)
    loss = AAMSoftmax(6, 4, scale=30.0, margin=m, subcenters=k)
    y, labels = torch.randn(9, 6), torch.randint(0, 4, (9,))
    per_sample, correct = loss(y, labels, reduction="none")
    expected = reference_losses(y.numpy(), loss.weight.detach().numpy(), labels.numpy(), 4, k, 30.0, m)
    np.testing.assert_allclose(per_sample.detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    mean, accuracy = loss(y, labels)  # the default reduction: the batch mean and the top-1 accuracy
    assert mean.item() == pytest.approx(float(expected.mean()), rel=1e-4, abs=1e-4)
    assert accuracy.item() == pytest.approx(correct.float().mean().item()) and not accuracy.requires_grad


def test_supervised_and_one_subcenter_rounds_are_the_same_loss():
    """supervised and pseudo_supervised (K = 1) share one classifier: same parameter name and shape (supervised
    checkpoints keep loading), same initial weights from the same seed, same loss on the same batch."""
    info = TrainingInfo(num_speakers=5, num_samples=40, steps_per_epoch=4, epochs=3)
    torch.manual_seed(0)
    supervised = Supervised(Stub(), SupervisedConfig(), info)
    pseudo = method()
    assert supervised.classifier.weight.shape == (5, 8) and "classifier.weight" in supervised.state_dict()
    assert torch.equal(supervised.classifier.weight, pseudo.classifier.weight)
    b = batch()
    assert torch.allclose(supervised(b).loss, pseudo(b).loss, atol=1e-6)


def test_fixed_gate_drops_exactly_samples_above_threshold():
    probe = method()
    b = batch()
    with torch.no_grad():
        ys = torch.cat([probe.encoder(v) for v in b.views])
        per_sample, _ = probe.classifier(ys, b.labels.repeat(2), reduction="none")
    threshold = float(per_sample.median())
    gated = method(loss_gate="fixed", loss_gate_threshold=threshold, loss_gate_warmup_epochs=0)
    gated.on_epoch_start(0)
    out = gated(b)
    keep = per_sample <= threshold
    assert torch.allclose(out.loss, per_sample[keep].mean(), atol=1e-6)
    assert out.metrics["kept"] == keep.sum() and 0 < keep.sum() < len(keep)
    assert out.metrics["dropped_fraction"] == pytest.approx(1 - keep.float().mean().item())
    out.loss.backward()  # dropped rows contribute no gradient: compare with the kept-only loss
    grad = gated.classifier.weight.grad.clone()
    gated.zero_grad()
    ys = torch.cat([gated.encoder(v) for v in b.views])
    gated.classifier(ys, b.labels.repeat(2), reduction="none")[0][keep].mean().backward()
    assert torch.allclose(grad, gated.classifier.weight.grad, atol=1e-6)


def test_gate_is_open_during_warmup_and_without_gate():
    for options in ({"loss_gate": "fixed", "loss_gate_threshold": 0.0, "loss_gate_warmup_epochs": 1}, {}):
        m = method(**options)
        m.on_epoch_start(0)
        out = m(batch())
        assert out.metrics["dropped_fraction"] == 0 and out.metrics["kept"] == 20


def test_gmm_gate_refits_from_previous_epoch_and_survives_resume():
    m = method(num_samples=400, loss_gate="gmm", loss_gate_warmup_epochs=1)
    m.on_epoch_start(0)
    assert m.threshold == float("inf")
    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.normal(2.0, 0.3, 320), rng.normal(9.0, 0.5, 80)])
    m.record_losses(torch.arange(400), torch.tensor(losses, dtype=torch.float32))
    m.on_epoch_start(1)
    assert 3.0 < m.threshold < 8.0
    assert (m.sample_losses == UNSEEN).all()  # a fresh table for epoch 1
    m.record_losses(torch.arange(10), torch.ones(10))
    state = m.extra_state()
    resumed = method(num_samples=400, loss_gate="gmm", loss_gate_warmup_epochs=1)
    resumed.load_extra_state(state)
    resumed.on_epoch_start(1)  # mid-epoch resume: same threshold, partial table kept
    assert resumed.threshold == m.threshold
    assert (resumed.sample_losses >= 0).sum() == 10
    with pytest.raises(ConfigError, match="loss_gate_threshold"):
        PseudoSupervisedConfig(loss_gate="fixed")


@pytest.mark.parametrize("subcenters", [1, 3])
def test_classifier_initialised_at_centroids_classifies_them(subcenters):
    torch.manual_seed(1)
    centroids = torch.randn(6, 16) * 3
    loss = AAMSoftmax(16, 6, subcenters=subcenters)
    loss.init_from_centroids(centroids, seed=0)
    rows = torch.nn.functional.normalize(loss.weight, dim=1).view(6, subcenters, 16)
    # every sub-centre of class c points (almost) at centroid c
    cosines = (rows * torch.nn.functional.normalize(centroids, dim=1)[:, None]).sum(-1)
    assert cosines.min() > 0.99 and (subcenters == 1 or (rows[:, 0] - rows[:, 1]).abs().max() > 0)
    # points near each centroid are classified correctly from the first step (a random head would not)
    points = centroids + 0.1 * torch.randn(6, 16)
    _, correct = loss(points, torch.arange(6), reduction="none")
    assert correct.all()
    with pytest.raises(ValueError, match=r"expected \(6, 16\)"):
        loss.init_from_centroids(torch.randn(5, 16))
