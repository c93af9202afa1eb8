"""Two gloo processes on CPU compute exactly the gradients of one process on the global batch (float64)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslsv.config import FeaturesConfig, Spec
from sslsv.encoders.base import build_speaker_model
from sslsv.encoders.fast_resnet34 import FastResNet34Config
from sslsv.methods.base import Batch
from sslsv.methods.simclr import SimCLR, SimCLRConfig
from sslsv import distributed
from tests.gloo import free_port


def _method() -> SimCLR:
    torch.manual_seed(0)
    model = build_speaker_model(Spec("fast_resnet34", FastResNet34Config(base_width=4, embed_dim=16)),
                                FeaturesConfig(n_mels=24))
    return SimCLR(model, SimCLRConfig(temperature=0.2), None).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4000, generator=g, dtype=torch.float64), torch.randn(8, 4000, generator=g, dtype=torch.float64)


def _batch(x1, x2):
    zeros = torch.zeros(len(x1), dtype=torch.long)
    return Batch([x1, x2], zeros, zeros)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    method = distributed.convert_batch_norm(_method(), torch.device("cpu"))
    model = torch.nn.parallel.DistributedDataParallel(method)
    x1, x2 = _data()
    rows = slice(rank * 4, rank * 4 + 4)
    output = model(_batch(x1[rows], x2[rows]))
    output.loss.backward()
    loss = distributed.all_reduce_mean(output.loss.detach())
    if rank == 0:
        torch.save({"loss": loss, "grads": {n: p.grad for n, p in method.named_parameters()}}, out)
    dist.barrier()  # nobody tears gloo down while the other rank is still in a collective
    dist.destroy_process_group()



@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_processes_equal_one_process_in_float64(tmp_path):
    reference = _method()
    output = reference(_batch(*_data()))
    output.loss.backward()
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=2)
    result = torch.load(out)
    assert result["loss"].item() == pytest.approx(output.loss.item(), rel=1e-12)
    for name, param in reference.named_parameters():
        assert torch.allclose(result["grads"][name], param.grad, rtol=1e-9, atol=1e-12), name
