"""MoCo's shuffled BN across two gloo ranks on CPU (float64), with per-device batch norm as the trainer leaves it.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", 2020, arXiv:1911.05722, section
3.3: the key encoder's inputs are shuffled across devices and its outputs unshuffled, so a key's BN statistics come
from another sub-batch than its query's.

- `distributed.shuffle_across_ranks` / `unshuffle_across_ranks`: one permutation shared by both ranks and both
  tensors, rows crossing ranks, and unshuffle(shuffle(x)) == x on every rank.
- MoCo's keys with shuffling equal a single process encoding the permuted global batch in chunks of B (per-device
  statistics of the shuffled sub-batch) and differ from keys without shuffling; with the key branch in eval mode
  (no batch statistics) they are identical with and without shuffling, and so are the loss and the gradients of
  the online encoder in a DDP step (the trainer's wrapping): the shuffle touches only the no-grad key branch.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslsv import distributed
from sslsv.methods.base import Batch
from sslsv.methods.moco import MoCo, MoCoConfig
from tests.gloo import free_port
from tests.methods.method_helpers import one_thread, tiny_info, tiny_speaker_model  # noqa: F401

BATCH = 4  # per rank
SEED = 11  # the permutation's seed on rank 0


def _moco() -> MoCo:
    return MoCo(tiny_speaker_model(), MoCoConfig(queue_size=16, temperature=0.2), tiny_info()).double()


def _waves() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [0.1 * torch.randn(2 * BATCH, 3200, generator=g, dtype=torch.float64) for _ in range(2)]


def _keys(moco: MoCo, views, shuffle: bool) -> list[torch.Tensor]:
    moco.cfg.shuffle_bn = shuffle
    torch.manual_seed(SEED)
    keys = moco._keys(views)
    moco.cfg.shuffle_bn = True
    return keys


def _step(model: torch.nn.parallel.DistributedDataParallel, views, shuffle: bool) -> dict:
    moco = model.module
    moco.cfg.shuffle_bn = shuffle
    for p in moco.parameters():
        p.grad = None
    output = model(Batch(views, torch.zeros(BATCH, dtype=torch.long), torch.arange(BATCH)))
    output.loss.backward()
    moco.cfg.shuffle_bn = True
    return {"loss": output.loss.detach(), "keys_grad": moco._pending_keys.requires_grad,
            "key_grads": [p.grad for p in list(moco.key_encoder.parameters()) + list(moco.key_projector.parameters())],
            "grads": [p.grad.clone() for p in moco.encoder.parameters() if p.grad is not None]}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    result = {}

    x = torch.arange(2 * BATCH * 3, dtype=torch.float64).view(2 * BATCH, 3)[rows]
    y = -torch.arange(2 * BATCH * 5, dtype=torch.float64).view(2 * BATCH, 5)[rows]
    torch.manual_seed(SEED)
    (xs, ys), permutation = distributed.shuffle_across_ranks(x, y)
    result.update(x=x, xs=xs, ys=ys, permutation=permutation,
                  x_back=distributed.unshuffle_across_ranks(xs, permutation),
                  y_back=distributed.unshuffle_across_ranks(ys, permutation))

    moco = _moco()
    result["kept_per_device"] = moco.distributed_batch_norm(torch.device("cpu")) is moco and not any(
        isinstance(m, distributed.GlobalBatchNorm) for m in moco.modules())
    moco.train()
    views = [w[rows] for w in _waves()]
    result["shuffled"] = _keys(moco, views, True)
    result["plain"] = _keys(moco, views, False)
    # A fresh copy: the running statistics of the train-mode passes above differ between ranks (DDP would
    # broadcast rank 0's before each forward), and eval mode reads them.
    moco = _moco().train()
    moco.key_encoder.eval(), moco.key_projector.eval()
    result["eval_shuffled"] = _keys(moco, views, True)
    result["eval_plain"] = _keys(moco, views, False)
    model = torch.nn.parallel.DistributedDataParallel(moco.distributed_batch_norm(torch.device("cpu")))  # the trainer's
    result["step_shuffled"] = _step(model, views, True)
    result["step_plain"] = _step(model, views, False)

    torch.save(result, out.replace(".pt", f"{rank}.pt"))
    dist.barrier()  # nobody tears gloo down while the other rank is still in a collective
    dist.destroy_process_group()



@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_shuffled_bn_permutes_and_restores_keys_across_two_ranks(tmp_path):
    out = str(tmp_path / "rank.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=2)
    ranks = [torch.load(out.replace(".pt", f"{r}.pt")) for r in range(2)]

    # The helpers: one permutation on both ranks, rows crossing ranks, the inverse restoring every rank's rows.
    permutation = ranks[0]["permutation"]
    assert torch.equal(permutation, ranks[1]["permutation"])
    assert sorted(permutation.tolist()) == list(range(2 * BATCH))
    assert (permutation[:BATCH] >= BATCH).any() and (permutation[BATCH:] < BATCH).any()
    everything_x = torch.cat([r["x"] for r in ranks])
    everything_y = -torch.arange(2 * BATCH * 5, dtype=torch.float64).view(2 * BATCH, 5)
    assert torch.equal(torch.cat([r["xs"] for r in ranks]), everything_x[permutation])
    assert torch.equal(torch.cat([r["ys"] for r in ranks]), everything_y[permutation])  # same rows for both tensors
    for rank, r in enumerate(ranks):
        assert torch.equal(r["x_back"], r["x"])
        assert torch.equal(r["y_back"], everything_y[rank * BATCH : (rank + 1) * BATCH])
        assert r["kept_per_device"]  # shuffle_bn: the trainer leaves batch norm per device

    # Train-mode key encoder: shuffled keys are those of the permuted global batch encoded in chunks of B (per-device
    # statistics of the shuffled sub-batch), put back in place; unshuffled keys use each rank's own sub-batch.
    moco = _moco().train()
    network = lambda x: moco.key_projector(moco.key_encoder(x))  # noqa: E731
    with torch.no_grad():
        for view, wave in enumerate(_waves()):
            shuffled = torch.cat([network(wave[permutation[r * BATCH : (r + 1) * BATCH]]) for r in range(2)])
            expected = torch.empty_like(shuffled)
            expected[permutation] = shuffled
            plain = torch.cat([network(wave[r * BATCH : (r + 1) * BATCH]) for r in range(2)])
            got = torch.cat([r["shuffled"][view] for r in ranks])
            assert torch.allclose(got, expected, rtol=0, atol=1e-10)
            assert torch.allclose(torch.cat([r["plain"][view] for r in ranks]), plain, rtol=0, atol=1e-10)
            assert (got - plain).abs().max() > 1e-3  # the batch statistics differ

    for r in ranks:
        # Eval-mode key branch (no batch statistics): the per-sample key is the same with and without shuffling.
        for a, b in zip(r["eval_shuffled"], r["eval_plain"]):
            assert torch.allclose(a, b, rtol=0, atol=1e-12)
        # The gradient path is unchanged: keys carry no gradient, the key branch gets none, and the loss and the
        # online encoder's gradients are those without shuffling.
        s, p = r["step_shuffled"], r["step_plain"]
        assert not s["keys_grad"] and all(g is None for g in s["key_grads"])
        assert torch.allclose(s["loss"], p["loss"], rtol=0, atol=1e-12)
        assert len(s["grads"]) == len(p["grads"]) > 0
        assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(s["grads"], p["grads"]))


def test_one_process_shuffle_is_the_identity():
    x, y = torch.randn(3, 2), torch.randn(3, 5)
    (xs, ys), permutation = distributed.shuffle_across_ranks(x, y)
    assert xs is x and ys is y and torch.equal(permutation, torch.arange(3))
    assert distributed.unshuffle_across_ranks(xs, permutation) is x
