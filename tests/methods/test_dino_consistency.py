"""DINO + cosine consistency loss (method.consistency_weight): the term equals its equation written with loops, the
method's loss is the DINO loss plus lambda times the term, and the default (0) leaves DINO unchanged."""
import pytest
import torch

from sslsv.config import ConfigError
from sslsv.methods.dino import DINO, DINOConfig, cosine_consistency
from tests.methods.method_helpers import one_thread, random_batch, tiny_info, tiny_speaker_model  # noqa: F401

LENGTHS = (0.5, 0.5, 0.25, 0.25)  # 2 global, 2 local views


def _plain(teacher, student):
    """mean over (t, s != t) of mean_i 1 - <y'_t,i, y_s,i> / (|y'_t,i| |y_s,i|)."""
    terms = []
    for t in range(len(teacher)):
        for s in range(len(student)):
            if s == t:
                continue
            rows = [1 - float(torch.dot(teacher[t][i], student[s][i]) / (teacher[t][i].norm() * student[s][i].norm()))
                    for i in range(len(teacher[t]))]
            terms.append(sum(rows) / len(rows))
    return sum(terms) / len(terms)


def test_cosine_consistency_equals_the_equation():
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    student = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    assert cosine_consistency(teacher, student).item() == pytest.approx(_plain(teacher, student), rel=1e-12)


def _dino(weight):
    return DINO(tiny_speaker_model(), DINOConfig(hidden_dim=8, bottleneck_dim=4, out_dim=16, consistency_weight=weight),
                tiny_info())


def test_dino_loss_plus_weighted_consistency():
    batch = random_batch(4, LENGTHS)
    plain, with_term = _dino(0.0), _dino(0.5)
    with_term.load_state_dict(plain.state_dict())
    base = plain(batch)
    out = with_term(batch)
    assert "consistency_loss" not in base.metrics
    # views of one length go through the encoders together (batch norm statistics), as in DINO.forward
    teacher = list(with_term.teacher_encoder(torch.cat(batch.views[:2])).chunk(2))
    student = list(with_term.encoder(torch.cat(batch.views[:2])).chunk(2)) + \
        list(with_term.encoder(torch.cat(batch.views[2:])).chunk(2))
    expected = _plain([t.detach().double() for t in teacher], [s.detach().double() for s in student])
    assert out.metrics["consistency_loss"].item() == pytest.approx(expected, rel=1e-4)
    assert out.loss.item() == pytest.approx(base.loss.item() + 0.5 * expected, rel=1e-4)
    out.loss.backward()
    assert all(p.grad is None for p in with_term.teacher_encoder.parameters())  # the teacher takes no gradient


def test_negative_weight_is_refused():
    with pytest.raises(ConfigError, match="method.consistency_weight"):
        DINOConfig(consistency_weight=-1.0)
