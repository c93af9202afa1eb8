"""Margins on contrastive losses (sslsv/methods/margins.py): NT-Xent and MoCo's InfoNCE with CosFace, ArcFace and
AdaFace margins equal the equations written out with loops; schedules; learnable margins get gradients."""
import math

import pytest
import torch

from sslsv.config import ConfigError
from sslsv.methods.margins import ContrastiveMargin, MarginConfig
from sslsv.methods.moco import MoCo, MoCoConfig, MoCoLoss
from sslsv.methods.simclr import NTXentLoss, SimCLR, SimCLRConfig
from tests.methods.method_helpers import one_thread, random_batch, tiny_info, tiny_speaker_model  # noqa: F401

TAU, M, H = 0.2, 0.3, 0.333


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _psi(kind, c, norm, stats):
    """The positive's cosine after the margin, written from the papers' equations."""
    if kind == "cosface":
        return c - M
    if kind == "arcface":
        theta = math.acos(c)
        return math.cos(theta + M) if theta + M < math.pi else c - M * math.sin(M)
    mean, std = stats
    norm = min(max(norm, 0.001), 100.0)  # AdaFace clips the norms
    g = min(max(H * (norm - mean) / (std + 1e-3), -1.0), 1.0)
    theta = min(max(math.acos(c) - M * g, 1e-3), math.pi - 1e-3)
    return math.cos(theta) - (M + M * g)


def _adaface_stats(norms):
    """One running update from AdaFace's initial values (mean 20, std 100), momentum 0.01."""
    n = torch.tensor(norms, dtype=torch.float64).clamp(0.001, 100)
    return 0.99 * 20 + 0.01 * float(n.mean()), 0.99 * 100 + 0.01 * float(n.std())


def _plain_ntxent(kind, z1, z2):
    """Symmetric NT-Xent: each of the 2B embeddings is an anchor, its positive the other view, its negatives the
    2(B - 1) embeddings of the other utterances."""
    b = len(z1)
    views = [z1, z2]
    stats = _adaface_stats([float(v[i].norm()) for v in views for i in range(b)])
    total = 0.0
    for a in range(2):
        for i in range(b):
            anchor, positive = views[a][i], views[1 - a][i]
            pos = math.exp(_psi(kind, _cos(anchor, positive), float(anchor.norm()), stats) / TAU)
            neg = sum(math.exp(_cos(anchor, views[v][j]) / TAU) for v in range(2) for j in range(b) if j != i)
            total += -math.log(pos / (pos + neg))
    return total / (2 * b)


def _plain_infonce(kind, q, k, queue):
    stats = _adaface_stats([float(x.norm()) for x in q])
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(_psi(kind, _cos(q[i], k[i]), float(q[i].norm()), stats) / TAU)
        neg = sum(math.exp(_cos(q[i], queue[j]) / TAU) for j in range(len(queue)))
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def _embeddings(seed=0, b=5, d=8):
    g = torch.Generator().manual_seed(seed)
    # norms spread around a few units, so AdaFace's g differs between anchors
    scale = 1 + 30 * torch.rand(b, 1, generator=g, dtype=torch.float64)
    return (scale * torch.randn(b, d, generator=g, dtype=torch.float64),
            scale * torch.randn(b, d, generator=g, dtype=torch.float64))


def _margin(kind, **kw):
    return ContrastiveMargin(MarginConfig(kind=kind, margin=M, adaface_h=H, **kw), epochs=10).double()


@pytest.mark.parametrize("kind", ["cosface", "arcface", "adaface"])
def test_ntxent_with_margin_equals_the_equation(kind):
    z1, z2 = _embeddings()
    loss, _ = NTXentLoss(TAU, _margin(kind))(z1, z2)
    assert loss.item() == pytest.approx(_plain_ntxent(kind, z1, z2), rel=1e-10)


@pytest.mark.parametrize("kind", ["cosface", "arcface", "adaface"])
def test_moco_infonce_with_margin_equals_the_equation(kind):
    q, k = _embeddings(1)
    g = torch.Generator().manual_seed(2)
    queue = torch.nn.functional.normalize(torch.randn(7, 8, generator=g, dtype=torch.float64), dim=1)
    loss, _ = MoCoLoss(TAU, _margin(kind))(q, k, queue)
    assert loss.item() == pytest.approx(_plain_infonce(kind, q, k, queue), rel=1e-10)


def test_arcface_past_pi_uses_the_monotonic_extension():
    # antipodal views: theta = pi, so theta + m > pi
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    loss, _ = NTXentLoss(TAU, _margin("arcface"))(z1, -z1)
    assert loss.item() == pytest.approx(_plain_ntxent("arcface", z1, -z1), rel=1e-10)


def test_no_margin_is_the_plain_loss_and_adds_no_state():
    z1, z2 = _embeddings()
    none = ContrastiveMargin(MarginConfig(), epochs=10)
    assert NTXentLoss(TAU, none)(z1, z2)[0].item() == NTXentLoss(TAU)(z1, z2)[0].item()
    assert list(none.state_dict()) == [] and list(none.parameters()) == []
    assert sorted(SimCLR(tiny_speaker_model(), SimCLRConfig(), tiny_info()).state_dict()) == \
        sorted(SimCLR(tiny_speaker_model(), SimCLRConfig(margin=MarginConfig()), tiny_info()).state_dict())


def test_schedules_ramp_the_margin():
    linear = ContrastiveMargin(MarginConfig(kind="cosface", margin=0.2, schedule="linear", ramp_epochs=4), epochs=10)
    cosine = ContrastiveMargin(MarginConfig(kind="cosface", margin=0.2, schedule="cosine"), epochs=10)  # ramp 5
    values = []
    for epoch in (0, 2, 4, 8):
        linear.set_epoch(epoch)
        cosine.set_epoch(epoch)
        values.append((linear.value(), cosine.value()))
    assert [v[0] for v in values] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    assert [v[1] for v in values] == pytest.approx([0.0, 0.2 * (1 - (math.cos(math.pi * 0.4) + 1) / 2), 0.2 * (1 - (math.cos(math.pi * 0.8) + 1) / 2), 0.2])


def test_learnable_margin_is_trained_with_the_method():
    method = SimCLR(tiny_speaker_model(), SimCLRConfig(temperature=0.2, margin=MarginConfig(kind="arcface", learnable=True)),
                    tiny_info())
    names = [n for n, _ in method.named_parameters()]
    assert "loss.margin.learned" in names
    output = method(random_batch(4))
    output.loss.backward()
    assert method.loss.margin.learned.grad is not None and method.loss.margin.learned.grad.abs() > 0
    assert output.metrics["margin"].item() == pytest.approx(0.1)


def test_moco_margin_scheduled_by_epoch():
    method = MoCo(tiny_speaker_model(), MoCoConfig(queue_size=8, margin=MarginConfig(kind="cosface", margin=0.2,
                                                                                       schedule="linear")),
                  tiny_info(epochs=4))  # ramp: 2 epochs
    method.on_epoch_start(1)
    assert method(random_batch(4)).metrics["margin"].item() == pytest.approx(0.1)


@pytest.mark.parametrize("section, key", [
    ({"kind": "cosface", "margin": -0.1}, "method.margin.margin"),
    ({"kind": "arcface", "margin": 3.5}, "method.margin.margin"),
    ({"kind": "cosface", "learnable": True, "schedule": "linear"}, "method.margin.learnable"),
    ({"schedule": "linear"}, "method.margin.kind"),
])
def test_bad_margin_settings_name_the_key(section, key):
    with pytest.raises(ConfigError, match=key):
        MarginConfig(**section)
