import math

import numpy as np
import pytest
import torch

from sslsv.methods.moco import MoCo, MoCoConfig, MoCoLoss, negative_gap
from tests.methods.method_helpers import one_thread, random_batch, smoke, tiny_info, tiny_speaker_model  # noqa: F401


def reference_moco(q: np.ndarray, k: np.ndarray, queue: np.ndarray, tau: float) -> float:
    """Eq. (3), one anchor at a time."""
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    total = 0.0
    for i in range(len(q)):
        positive = math.exp(cos(q[i], k[i]) / tau)
        negatives = sum(math.exp(cos(q[i], queue[j]) / tau) for j in range(len(queue)))
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


@pytest.mark.parametrize("batch, dim, size, tau", [(2, 3, 5, 0.5), (6, 8, 17, 0.03), (4, 16, 32, 0.2)])
def test_loss_matches_equation_3(batch, dim, size, tau):
    g = torch.Generator().manual_seed(batch + dim)
    q, k = torch.randn(batch, dim, generator=g, dtype=torch.float64), torch.randn(batch, dim, generator=g, dtype=torch.float64)
    queue = torch.nn.functional.normalize(torch.randn(size, dim, generator=g, dtype=torch.float64), dim=1)
    loss, logits = MoCoLoss(tau)(q, k, queue)
    assert loss.item() == pytest.approx(reference_moco(q.numpy(), k.numpy(), queue.numpy(), tau), rel=1e-9)
    assert logits.shape == (batch, size + 1)


def _method(**options) -> MoCo:
    return MoCo(tiny_speaker_model(), MoCoConfig(**{"queue_size": 20, **options}), tiny_info())


def test_queue_update_writes_at_pointer_and_wraps():
    method = _method()
    keys = torch.arange(2 * 12 * 16, dtype=torch.float32).view(2, 12, 16)
    method.update_queue(keys)
    assert int(method.queue_ptr) == 12 and torch.equal(method.queue[:, :12], keys)
    method.update_queue(keys + 1)
    assert int(method.queue_ptr) == 4  # 24 mod 20
    assert torch.equal(method.queue[:, 12:20], keys[:, :8] + 1) and torch.equal(method.queue[:, :4], keys[:, 8:] + 1)


def test_step_enqueues_the_keys_after_the_optimiser_step():
    method = _method()
    before = method.queue.clone()
    output = method(random_batch(4, (0.3, 0.3)))
    assert torch.equal(method.queue, before)  # nothing changes inside forward
    output.loss.backward()
    method.after_optimizer_step(0.5)
    assert int(method.queue_ptr) == 4
    assert torch.allclose(method.queue[:, :4].norm(dim=2), torch.ones(2, 4))
    assert not torch.equal(method.queue[:, :4], before[:, :4]) and torch.equal(method.queue[:, 4:], before[:, 4:])


def test_momentum_encoder_follows_ema_and_ablation_has_none():
    method = _method(momentum=0.5)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    old = [p.clone() for p in method.key_encoder.parameters()]
    method.after_optimizer_step(0.1)
    for o, new, s in zip(old, method.key_encoder.parameters(), method.encoder.parameters()):
        assert torch.allclose(new, 0.5 * o + 0.5 * s)
    ablation = _method(use_momentum_encoder=False)
    assert ablation.momentum_pairs() == [] and not hasattr(ablation, "key_encoder")


def test_smoke_two_steps():
    history = smoke(_method(), lengths=(0.25, 0.25), batch=4)
    assert {"contrastive_entropy", "embedding_std", "effective_rank", "accuracy"} <= set(history[-1])
    assert history[-1]["contrastive_entropy"] <= math.log(21) + 1e-6
    smoke(_method(use_momentum_encoder=False), lengths=(0.25, 0.25), batch=4)


def test_negative_gap_matches_a_plain_computation():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    queue = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))
    current = np.mean([cos(q[i], k[j]) for i in range(5) for j in range(5) if i != j])
    stale = np.mean([cos(q[i], queue[j]) for i in range(5) for j in range(7)])
    assert negative_gap(q, k, queue).item() == pytest.approx(current - stale, abs=1e-6)
    # Current keys that all moved together, away from the queue: a large gap (what a drifting key encoder gives).
    shift = torch.randn(1, 8, generator=g) * 10
    assert negative_gap(q + shift, k + shift, queue).item() > 0.5


def test_negative_gap_is_logged_once_real_keys_are_queued_and_survives_a_resume():
    method = _method()
    output = method(random_batch(4, (0.3, 0.3)))
    assert "negative_gap" not in output.metrics  # the queue holds random vectors only
    output.loss.backward()
    method.after_optimizer_step(0.5)
    assert method.keys_seen == 4 and "negative_gap" in method(random_batch(4, (0.3, 0.3))).metrics
    resumed = _method()
    resumed.load_extra_state(method.extra_state())
    assert resumed.keys_seen == 4
    resumed.load_extra_state({})  # checkpoints written before the count existed: a long-filled queue
    assert resumed.keys_seen == 20


def test_shuffled_bn_keeps_per_device_batch_norm_under_ddp_and_the_switch_restores_global_bn():
    """The trainer calls `distributed_batch_norm` with several processes: MoCo with shuffle_bn (the authors' setup,
    `ddp_sync_batchnorm: false` in their MoCo configs) keeps plain per-device BN, shuffle_bn false makes every BN
    global-batch, like every other method (the base class default)."""
    from sslsv.distributed import GlobalBatchNorm
    from sslsv.methods.simclr import SimCLR, SimCLRConfig

    def kinds(method):
        return {type(m) for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    shuffled = _method()
    assert not shuffled.sync_batch_norm()
    assert shuffled.distributed_batch_norm(torch.device("cpu")) is shuffled
    assert kinds(shuffled) and GlobalBatchNorm not in kinds(shuffled)
    synced = _method(shuffle_bn=False)
    trainable = [name for name, p in synced.named_parameters() if p.requires_grad]
    assert synced.sync_batch_norm() and kinds(synced.distributed_batch_norm(torch.device("cpu"))) == {GlobalBatchNorm}
    # The key encoder's converted layers stay frozen (DDP would otherwise wait for their gradients).
    assert [name for name, p in synced.named_parameters() if p.requires_grad] == trainable
    simclr = SimCLR(tiny_speaker_model(), SimCLRConfig(), tiny_info())
    assert simclr.sync_batch_norm() and kinds(simclr.distributed_batch_norm(torch.device("cpu"))) == {GlobalBatchNorm}


def test_one_process_keys_do_not_depend_on_shuffle_bn():
    keys = [_method(shuffle_bn=flag)._keys(random_batch(4, (0.3, 0.3)).views) for flag in (True, False)]
    assert all(torch.equal(a, b) for a, b in zip(*keys))
