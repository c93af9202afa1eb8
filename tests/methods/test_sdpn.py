import math

import numpy as np
import pytest
import torch

from sslsv.methods.sdpn import SDPN, SDPNConfig, SDPNLoss, koleo
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_sdpn(student, teacher, tau, sharpen_t, iterations, me_max_weight, sinkhorn=True) -> float:
    """L_CE + w_me L_MEMAX from SDPN's definition. student (L, B, K), teacher (1, B, K) cosines."""
    p = _softmax(student / tau)
    q = _softmax(teacher[0] / tau) ** (1 / sharpen_t)
    q = q / q.sum(axis=1, keepdims=True)
    if sinkhorn:  # rows of Q^T (prototypes) to 1/K, columns (samples) to 1/B, alternately
        m = q.T / q.sum()
        k, b = m.shape
        for _ in range(iterations):
            m = m / m.sum(axis=1, keepdims=True) / k
            m = m / m.sum(axis=0, keepdims=True) / b
        q = (m * b).T
    cross_entropy = np.mean([-np.sum(q[i] * np.log(p[v, i])) for v in range(len(p)) for i in range(q.shape[0])])
    mean = p.reshape(-1, p.shape[-1]).mean(axis=0)
    return cross_entropy + me_max_weight * (np.sum(mean * np.log(mean)) + math.log(len(mean)))


@pytest.mark.parametrize("views, batch, k, sinkhorn", [(4, 6, 16, True), (2, 3, 8, True), (3, 5, 10, False)])
def test_loss_matches_the_equations(views, batch, k, sinkhorn):
    g = torch.Generator().manual_seed(views * batch * k)
    student = 2 * torch.rand(views, batch, k, generator=g, dtype=torch.float64) - 1
    teacher = 2 * torch.rand(1, batch, k, generator=g, dtype=torch.float64) - 1
    loss, probs, targets, _, _ = SDPNLoss(0.1, 0.25, sinkhorn, 3, 1.0)(student, teacher)
    expected = reference_sdpn(student.numpy(), teacher.numpy(), 0.1, 0.25, 3, 1.0, sinkhorn)
    assert loss.item() == pytest.approx(expected, rel=1e-5)  # targets in float32 (as under AMP)
    assert probs.shape == (views * batch, k) and targets.shape == (batch, k)
    assert torch.allclose(targets.sum(dim=1), torch.ones(batch, dtype=targets.dtype), atol=1e-5)


def test_me_max_vanishes_for_balanced_prototype_use():
    student = torch.log(torch.eye(4, dtype=torch.float64) * 0.97 + 0.01).unsqueeze(0) * 0.1  # each sample its own
    _, _, _, _, balanced = SDPNLoss(0.1, 0.25, True, 3, 1.0)(student, student)
    assert balanced.item() == pytest.approx(0.0, abs=1e-9)


def test_koleo_matches_nearest_neighbour_distances():
    y = torch.randn(7, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    yn = (y / y.norm(dim=1, keepdim=True)).numpy()
    distances = [min(np.linalg.norm(yn[i] - yn[j]) for j in range(7) if j != i) for i in range(7)]
    assert koleo(y).item() == pytest.approx(-np.mean(np.log(np.array(distances) + 1e-8)), rel=1e-9)


def _method(**options) -> SDPN:
    cfg = SDPNConfig(**{"hidden_dim": 32, "output_dim": 8, "num_prototypes": 16, **options})
    return SDPN(tiny_speaker_model(), cfg, tiny_info())


def test_teacher_uses_the_students_prototypes_and_evaluates_the_teacher():
    method = _method()
    assert method.embedding_model() is method.teacher_encoder
    assert method.head.last_layer.weight_v.requires_grad
    names = {name for name, _ in method.named_parameters()}
    assert not any(name.startswith("teacher_mlp") and "weight_v" in name for name in names)
    assert {id(a) for a, _ in method.momentum_pairs()} == {id(method.encoder), id(method.head.mlp)}


def test_loss_adds_the_weighted_diversity_term():
    batch = random_batch(4, (0.3, 0.2, 0.2))
    torch.manual_seed(0)
    with_diversity = _method(diversity_weight=0.5)(batch)
    torch.manual_seed(0)
    without = _method(diversity_weight=0.0)(batch)
    diversity = with_diversity.metrics["diversity"].item()
    assert with_diversity.loss.item() == pytest.approx(without.loss.item() + 0.5 * diversity, rel=1e-5)


def test_smoke_prototypes_learn_from_the_first_step():
    method = _method()
    method(random_batch(4, (0.3, 0.2, 0.2))).loss.backward()
    method.before_optimizer_step(0)
    assert method.head.last_layer.weight_v.grad is not None  # not frozen (3D-Speaker trains them from epoch 0)
    assert all(p.grad is None for p in method.teacher_mlp.parameters())
    history = smoke(method, lengths=(0.3, 0.2, 0.2), batch=4)
    assert {"cross_entropy", "me_max", "diversity", "cluster_entropy", "target_entropy"} <= set(history[-1])


# ------------------------------------------------------------------ two gloo ranks (also RDINO's and VIbCReg's terms)

def _global_data():
    g = torch.Generator().manual_seed(5)
    student = 2 * torch.rand(4, 8, 12, generator=g, dtype=torch.float64) - 1  # (views, 2 ranks x 4, K)
    teacher = 2 * torch.rand(1, 8, 12, generator=g, dtype=torch.float64) - 1
    z = [torch.randn(8, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    return student, teacher, z


def _global_losses(student, teacher, z):
    from sslsv.methods.rdino import rdino_regularization
    from sslsv.methods.vibcreg import VIbCRegLoss
    loss, _, targets, _, me_max_value = SDPNLoss(0.1, 0.25, True, 3, 1.0)(student, teacher)
    return {"sdpn": loss, "me_max": me_max_value, "targets": targets, "rdino": rdino_regularization(z[0], z[1], 64)[0],
            "vibcreg": VIbCRegLoss()(z[0], z[1])[0]}


def _worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from sslsv import distributed
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rows = slice(rank * 4, (rank + 1) * 4)
    student, teacher, z = _global_data()
    losses = _global_losses(student[:, rows], teacher[:, rows], [x[rows] for x in z])
    result = {k: distributed.gather_no_grad(v) if k == "targets" else distributed.all_reduce_mean(v.detach())
              for k, v in losses.items()}
    result["me_max_rank"] = losses["me_max"]  # every rank sees the global mean probabilities
    torch.save(result, out.replace(".pt", f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_use_the_global_batch(tmp_path):
    """SDPN's Sinkhorn targets and me-max, RDINO's regularisation and VIbCReg's loss over 2 gloo ranks of 4 equal the
    one-process values on the 8 samples (the cross-entropy and invariance terms are per-rank means)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from tests.gloo import free_port
    if not dist.is_available():
        pytest.skip("torch.distributed not built")
    reference = _global_losses(*_global_data())
    out = str(tmp_path / "rank.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=2)
    ranks = [torch.load(out.replace(".pt", f"{r}.pt")) for r in range(2)]
    for name in ("sdpn", "me_max", "rdino", "vibcreg"):
        assert ranks[0][name].item() == pytest.approx(reference[name].item(), rel=1e-6), name
    assert ranks[1]["me_max_rank"].item() == pytest.approx(reference["me_max"].item(), rel=1e-6)
    assert torch.allclose(ranks[0]["targets"], reference["targets"], atol=1e-6)
