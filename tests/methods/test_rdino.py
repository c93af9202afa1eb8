import numpy as np
import pytest
import torch

from sslsv.methods.dino import DINOLoss
from sslsv.methods.rdino import RDINO, RDINOConfig, rdino_regularization
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_regularization(s: np.ndarray, t: np.ndarray, out_dim: int, alpha: float, beta: float) -> float:
    """alpha L_div + beta L_re written from RDINO's definition (3D-Speaker's RegLoss normalisation)."""
    d = s.shape[1]

    def v(z):
        return sum(max(0.0, 1 - np.sqrt(np.var(z[:, k], ddof=1) + 1e-4)) for k in range(d)) / d

    def c(z):
        cov = np.cov(z, rowvar=False)
        return sum(cov[k, l] ** 2 for k in range(d) for l in range(d) if k != l) / out_dim

    return alpha * (v(s) + v(t)) / 2 + beta * (c(s) + c(t))


@pytest.mark.parametrize("batch, dim, out_dim, alpha, beta", [(4, 3, 64, 10.0, 1.0), (16, 8, 8, 1.0, 0.5),
                                                              (9, 6, 4096, 10.0, 1.0)])
def test_regularization_matches_the_equation(batch, dim, out_dim, alpha, beta):
    g = torch.Generator().manual_seed(batch * dim)
    s = 0.4 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    t = 2.0 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    value, terms = rdino_regularization(s, t, out_dim, alpha, beta)
    assert value.item() == pytest.approx(reference_regularization(s.numpy(), t.numpy(), out_dim, alpha, beta), rel=1e-9)
    assert set(terms) == {"diversity", "redundancy"}


def _method(**options) -> RDINO:
    cfg = RDINOConfig(**{"hidden_dim": 32, "embedding_dim": 24, "bottleneck_dim": 8, "out_dim": 64, **options})
    return RDINO(tiny_speaker_model(), cfg, tiny_info())


def test_regularization_weight_ramps_as_numpy_linspace_then_stays():
    method = _method()
    schedule = np.linspace(0.05, 0.2, 10)
    for epoch in range(10):
        assert method.regularization_weight(epoch) == pytest.approx(schedule[epoch])
    assert method.regularization_weight(10) == method.regularization_weight(69) == pytest.approx(0.2)
    assert _method(regularization_warmup_epochs=0).regularization_weight(0) == pytest.approx(0.2)


def test_loss_is_dino_plus_weighted_regularization_on_the_global_views():
    method = _method(regularization_warmup_epochs=0, regularization_weight=0.3)
    method.train()
    batch = random_batch(4, (0.3, 0.3, 0.2, 0.2))
    captured = {}  # the regularised embeddings of both heads, as the forward computes them
    method.head.expander.register_forward_hook(lambda m, i, o: captured.setdefault("student", []).append(o))
    method.teacher_head.expander.register_forward_hook(lambda m, i, o: captured.setdefault("teacher", []).append(o))
    center = method.center.clone()
    output = method(batch)
    student_global = captured["student"][0].detach()  # first pass: the two global crops (B G, D)
    teacher_global = captured["teacher"][0]
    s = student_global.view(2, 4, -1).mean(0).double().numpy()
    t = teacher_global.view(2, 4, -1).mean(0).double().numpy()
    regularization = reference_regularization(s, t, 64, 10.0, 1.0)
    assert output.metrics["dino"].item() + 0.3 * regularization == pytest.approx(output.loss.item(), rel=1e-5)
    assert output.metrics["regularization_weight"].item() == pytest.approx(0.3)
    # the DINO part is DINOLoss on the head's outputs (recomputed from the captured embeddings)
    with torch.no_grad():
        student = [method.head.projection(e) for e in captured["student"][0].chunk(2) + captured["student"][1].chunk(2)]
        teacher = [method.teacher_head.projection(e) for e in teacher_global.chunk(2)]
        dino, _, _ = DINOLoss(0.1)(teacher, student, center, 0.04)
    assert dino.item() == pytest.approx(output.metrics["dino"].item(), rel=1e-5)


def test_only_the_student_gets_gradients_and_last_layer_frozen_first_epoch():
    method = _method()
    method(random_batch(4, (0.3, 0.3, 0.2, 0.2))).loss.backward()
    assert all(p.grad is None for p in method.teacher_head.parameters())
    method.before_optimizer_step(0)
    assert method.head.last_layer.weight_v.grad is None
    assert method.head.expander[0].weight.grad is not None


def test_evaluates_the_teacher_and_smoke():
    method = _method()
    assert method.embedding_model() is method.teacher_encoder
    history = smoke(method, lengths=(0.3, 0.3, 0.2, 0.2), batch=4, epoch=1)
    assert {"dino", "diversity", "redundancy", "teacher_entropy", "embedding_std"} <= set(history[-1])
