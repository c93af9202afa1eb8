"""Two gloo ranks on CPU (float64): the methods see the global batch.

- MoCo: after one step the queue of every rank holds the keys of both ranks' utterances, equal to one process on
  the global batch (with shuffled BN across ranks, exact because BN statistics are global).
- SimCLR (NT-Xent), Barlow Twins, VICReg: the 2-rank loss equals the one-process loss on the global batch.
- SwAV Sinkhorn codes and the DINO centre are computed over the global batch.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslsv.methods.barlow_twins import BarlowTwinsLoss
from sslsv.methods.base import Batch
from sslsv.methods.dino import DINO, DINOConfig
from sslsv.methods.moco import MoCo, MoCoConfig
from sslsv.methods.simclr import NTXentLoss
from sslsv.methods.swav import sinkhorn_knopp
from sslsv.methods.vicreg import VICRegLoss
from sslsv import distributed
from tests.gloo import free_port
from tests.methods.method_helpers import tiny_info, tiny_speaker_model

BATCH = 4  # per rank


def _moco() -> MoCo:
    return MoCo(tiny_speaker_model(), MoCoConfig(queue_size=16, temperature=0.2), tiny_info()).double()


def _dino() -> DINO:
    return DINO(tiny_speaker_model(), DINOConfig(hidden_dim=8, bottleneck_dim=4, out_dim=16), tiny_info())


def _data():
    g = torch.Generator().manual_seed(3)
    waves = [0.1 * torch.randn(2 * BATCH, 3200, generator=g, dtype=torch.float64) for _ in range(2)]
    z = [torch.randn(2 * BATCH, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    return waves, z


def _losses(z1, z2, prototypes):
    return {"ntxent": NTXentLoss(0.2)(z1, z2)[0], "barlow_twins": BarlowTwinsLoss(0.01)(z1, z2),
            "vicreg": VICRegLoss()(z1, z2)[0], "sinkhorn": sinkhorn_knopp(z1 @ prototypes.T, 0.5, 3)}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    waves, z = _data()
    losses = _losses(z[0][rows], z[1][rows], z[1][:3])
    losses = {k: v if k == "sinkhorn" else distributed.all_reduce_mean(v.detach()) for k, v in losses.items()}
    losses["sinkhorn"] = distributed.gather_no_grad(losses["sinkhorn"])
    moco = distributed.convert_batch_norm(_moco(), torch.device("cpu"))
    output = moco(Batch([w[rows] for w in waves], torch.zeros(BATCH, dtype=torch.long), torch.arange(BATCH)))
    output.loss.backward()
    moco.after_optimizer_step(0.5)
    dino = _dino()
    dino.update_center(z[0][rows].float().repeat(1, 3)[:, :16])
    result = {"losses": losses, "queue": moco.queue.clone(), "moco_loss": distributed.all_reduce_mean(output.loss.detach()),
              "center": dino.center.clone()}
    torch.save(result, out.replace(".pt", f"{rank}.pt"))
    dist.barrier()  # nobody tears gloo down while the other rank is still in a collective
    dist.destroy_process_group()



@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_ranks_use_the_global_batch(tmp_path):
    torch.set_num_threads(1)
    waves, z = _data()
    reference = _losses(z[0], z[1], z[1][:3])
    moco = _moco()
    output = moco(Batch(waves, torch.zeros(2 * BATCH, dtype=torch.long), torch.arange(2 * BATCH)))
    moco.after_optimizer_step(0.5)
    dino = _dino()
    dino.update_center(z[0].float().repeat(1, 3)[:, :16])

    out = str(tmp_path / "rank.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=2)
    ranks = [torch.load(out.replace(".pt", f"{r}.pt")) for r in range(2)]
    for name in ("ntxent", "barlow_twins", "vicreg"):
        assert ranks[0]["losses"][name].item() == pytest.approx(reference[name].item(), rel=1e-10), name
    assert torch.allclose(ranks[0]["losses"]["sinkhorn"], reference["sinkhorn"], rtol=1e-10)
    # MoCo: both ranks hold the same queue, whose first 2B rows are the keys of all 8 utterances.
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])
    assert torch.allclose(ranks[0]["queue"][:, : 2 * BATCH], moco.queue[:, : 2 * BATCH], atol=1e-10)
    assert not torch.allclose(ranks[0]["queue"][:, BATCH : 2 * BATCH], ranks[0]["queue"][:, :BATCH])
    assert ranks[0]["moco_loss"].item() == pytest.approx(output.loss.item(), rel=1e-10)
    assert torch.allclose(ranks[0]["center"], dino.center, atol=1e-7) and torch.equal(ranks[0]["center"], ranks[1]["center"])
