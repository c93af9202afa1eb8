"""Activation checkpointing of the encoders' blocks (sslsv/encoders/checkpointing.py): same step, less kept memory.

- a DINO training step (forward, backward, SGD step, EMA) with checkpointing equals the step without it, bitwise on
  a CPU: loss, every gradient, every parameter and buffer after the step (BN running statistics and
  num_batches_tracked included, which the recomputation would otherwise update a second time);
- outside training (no_grad, inference mode, eval, nothing needing a gradient) the blocks run directly;
- state dicts keep their keys and load both ways; deep copies (EMA teachers) get their own forward; 2 gloo ranks
  with checkpointing and global-batch BN equal one process;
- what autograd keeps for the backward of a DINO-like multi-crop student forward drops to about a quarter.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslsv import distributed
from sslsv.config import FeaturesConfig, Spec, from_dict
from sslsv.encoders import checkpointing
from sslsv.encoders.base import Encoder, build_speaker_model
from sslsv.encoders.checkpointing import (
    disable_activation_checkpointing,
    enable_activation_checkpointing,
    is_checkpointed,
)
from sslsv.encoders.ecapa_tdnn import ECAPATDNNConfig
from sslsv.encoders.fast_resnet34 import FastResNet34Config
from sslsv.methods.base import encode_views
from sslsv.methods.dino import DINO, DINOConfig
from sslsv.registry import ENCODERS
from tests.gloo import free_port
from tests.methods.method_helpers import one_thread, random_batch, tiny_info  # noqa: F401

LENGTHS = (0.5, 0.5, 0.25, 0.25, 0.25, 0.25)  # DINO-like: 2 global + 4 local crops, two encoder passes


def fast_resnet34():
    torch.manual_seed(0)
    return build_speaker_model(Spec("fast_resnet34", FastResNet34Config(base_width=4, embed_dim=16)),
                               FeaturesConfig(n_mels=24))


def ecapa_tdnn():
    torch.manual_seed(0)
    cfg = ECAPATDNNConfig(channels=32, last_channels=96, se_channels=8, attention_channels=8, embed_dim=16)
    return build_speaker_model(Spec("ecapa_tdnn", cfg), FeaturesConfig(n_mels=24))


def example_model(name: str):
    """The registered family's tiny example (as tests/encoders/test_interface.py builds it)."""
    entry = ENCODERS.get(name)
    torch.manual_seed(0)
    return build_speaker_model(Spec(name, from_dict(entry.config, entry.example["encoder"], "encoder.")),
                               FeaturesConfig(**entry.example.get("features", {})))


def dino_step(make_model, checkpoint: bool) -> tuple[torch.Tensor, dict, dict]:
    """One DINO step from fixed weights and inputs: forward, backward, plain SGD, EMA. Returns (loss, gradients,
    state dict after the step)."""
    method = DINO(make_model(), DINOConfig(hidden_dim=16, bottleneck_dim=8, out_dim=32), tiny_info()).train()
    if checkpoint:
        assert enable_activation_checkpointing(method) > 0
    torch.manual_seed(1)
    output = method(random_batch(4, LENGTHS))
    output.loss.backward()
    method.before_optimizer_step(0)
    grads = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
    with torch.no_grad():
        for p in method.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-0.1)
    method.after_optimizer_step(0.5)
    return output.loss.detach(), grads, {k: v.clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("make_model", [fast_resnet34, ecapa_tdnn], ids=["fast_resnet34", "ecapa_tdnn"])
def test_a_dino_step_is_bitwise_the_same(make_model):
    loss, grads, state = dino_step(make_model, checkpoint=False)
    loss_ckpt, grads_ckpt, state_ckpt = dino_step(make_model, checkpoint=True)
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and any(".encoder.stages." in k or ".blocks." in k for k in grads)
    for name in grads:
        assert torch.equal(grads[name], grads_ckpt[name]), name
    assert state.keys() == state_ckpt.keys()
    for name in state:  # parameters, BN running statistics, num_batches_tracked, DINO's center
        assert torch.equal(state[name], state_ckpt[name]), name
    tracked = [v.item() for k, v in state_ckpt.items() if k.startswith("encoder.") and "num_batches_tracked" in k]
    assert tracked and set(tracked) == {2}  # the global and the local pass, each counted once


def test_without_the_recompute_context_bn_would_count_each_batch_twice(monkeypatch):
    """What the buffer handling prevents: the recomputation runs BN in training mode again."""
    monkeypatch.setattr(checkpointing, "_buffers_kept", lambda block: contextlib.nullcontext())
    _, _, state = dino_step(fast_resnet34, checkpoint=True)
    assert state["encoder.encoder.stages.0.0.bn1.num_batches_tracked"].item() == 4  # instead of 2


def test_blocks_run_directly_unless_training_with_gradients(monkeypatch):
    plain, wrapped = fast_resnet34(), fast_resnet34()
    assert enable_activation_checkpointing(wrapped) == 17  # the stem and 3 + 4 + 6 + 3 residual blocks
    calls = []
    real = checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    wave = random_batch(3, (0.5,)).views[0]
    for model in (plain, wrapped):
        model.train()
    with torch.no_grad():  # a teacher's pass: BN in training mode, no graph
        assert torch.equal(plain(wave), wrapped(wave))
    with torch.inference_mode():
        assert torch.equal(plain(wave), wrapped(wave))
    for model in (plain, wrapped):
        model.eval()
    assert torch.equal(plain(wave), wrapped(wave))  # eval with grad mode on
    for model in (plain, wrapped):
        model.train().requires_grad_(False)
    assert torch.equal(plain(wave), wrapped(wave))  # frozen: nothing needs a gradient
    assert not calls
    for model in (plain, wrapped):
        model.requires_grad_(True)
    assert torch.equal(plain(wave), wrapped(wave))
    assert len(calls) == 17
    assert torch.equal(plain.state_dict()["encoder.stem.1.running_mean"],
                       wrapped.state_dict()["encoder.stem.1.running_mean"])


def test_state_dicts_keep_their_keys_and_load_both_ways():
    plain, wrapped = fast_resnet34(), fast_resnet34()
    enable_activation_checkpointing(wrapped)
    assert list(plain.state_dict()) == list(wrapped.state_dict())
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in wrapped.named_parameters()]
    with torch.no_grad():  # different weights on each side, so that loading is seen
        for p in wrapped.parameters():
            p.add_(0.01)
    for source, target in ((wrapped, fast_resnet34()), (plain, wrapped)):
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        target.load_state_dict(torch.load(buffer), strict=True)
        for a, b in zip(source.state_dict().values(), target.state_dict().values()):
            assert torch.equal(a, b)
    assert is_checkpointed(wrapped.encoder.stages[0][0])


def test_counts_copies_and_undo():
    class Plain(Encoder):  # declares no blocks: left as it is
        embed_dim = 4

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.linear(x)

    assert enable_activation_checkpointing(Plain()) == 0
    assert enable_activation_checkpointing(ecapa_tdnn()) == 3
    model = fast_resnet34()
    assert enable_activation_checkpointing(model) == 17
    assert enable_activation_checkpointing(model) == 0  # already wrapped
    clone = copy.deepcopy(model)  # e.g. an EMA teacher made afterwards
    block = clone.encoder.stages[1][2]
    assert is_checkpointed(block) and block.forward.__self__ is block
    assert disable_activation_checkpointing(model) == 17
    assert not is_checkpointed(model.encoder.stages[0][0]) and "forward" not in model.encoder.stem.__dict__
    assert is_checkpointed(block)
    method = DINO(fast_resnet34(), DINOConfig(hidden_dim=16, bottleneck_dim=8, out_dim=32), tiny_info())
    assert enable_activation_checkpointing(method) == 2 * 17  # the student and the teacher


@pytest.mark.parametrize("name", ["fast_resnet34_ms", "redimnet", "sv_mixer", "ssrfnet"])
def test_other_encoders_declare_blocks_and_train_the_same(name):
    """SV-Mixer blocks hold dropout: the checkpoint replays the forward's random state, so the masks match."""
    plain, wrapped = example_model(name).train(), example_model(name).train()
    assert enable_activation_checkpointing(wrapped) > 0
    wave = random_batch(2, (1.0,)).views[0]
    losses = []
    for model in (plain, wrapped):
        torch.manual_seed(3)
        loss = model(wave).pow(2).sum()
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(*losses)
    for (name_, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        assert (a.grad is None) == (b.grad is None), name_
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-9), name_
    for (name_, a), b in zip(plain.named_buffers(), wrapped.buffers()):
        assert torch.equal(a, b), name_


def saved_bytes(model: torch.nn.Module, views: list[torch.Tensor]) -> int:
    """Bytes autograd keeps for the backward of `encode_views(model, views)`: the storages of the tensors packed
    for backward, each once, parameters excluded. Inside a non-reentrant checkpoint the checkpoint's own hooks
    pack the inner tensors (placeholders, recomputed in the backward), so what is counted here is what stays."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        encode_views(model, views)
    return sum(storages.values())


def test_multi_crop_student_keeps_a_quarter_of_the_activations():
    """Measured (deterministic): 2,999,168 of 14,036,480 bytes, 0.214x (0.236x with the residual blocks alone,
    without the stem). Full size (configs/dino/fast_resnet34.yml, batch 16, 2 x 4 s + 4 x 2 s): 722 MB of 2,914 MB
    (0.25x), of which 536 MB are the blocks' inputs and 187 MB the pooling, DINO head and loss."""
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, int(16000 * seconds), generator=g) for seconds in (1, 1, 0.5, 0.5, 0.5, 0.5)]
    model = fast_resnet34().train()
    full = saved_bytes(model, views)
    enable_activation_checkpointing(model)
    kept = saved_bytes(model, views)
    assert full > 10_000_000  # the count sees the activations
    assert kept <= 0.25 * full, (kept, full)


def _ddp_worker(rank: int, port: int, out: str, checkpoint: bool = True) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = distributed.convert_batch_norm(fast_resnet34().double(), torch.device("cpu"))
    if checkpoint:
        enable_activation_checkpointing(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    views = _ddp_views()
    rows = slice(rank * 4, rank * 4 + 4)
    loss = sum(z.pow(2).sum() for z in encode_views(ddp, [v[rows] for v in views]))
    loss.backward()
    if rank == 0:
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters()},
                    "buffers": dict(model.named_buffers())}, out)
    dist.barrier()
    dist.destroy_process_group()


def _ddp_views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, n, generator=g, dtype=torch.float64) for n in (4000, 4000, 2000)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_ranks_with_checkpointing_equal_one_process(tmp_path):
    """DDP, global-batch BN (all-reduced again in the recomputation) and checkpointing together: the gradients and
    BN buffers of one process on the global batch, in float64."""
    model = fast_resnet34().double().train()
    (sum(z.pow(2).sum() for z in encode_views(model, _ddp_views())) / 2).backward()  # DDP averages the 2 ranks
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_ddp_worker, args=(free_port(), out), nprocs=2)
    result = torch.load(out)
    for name, expected in [*((n, p.grad) for n, p in model.named_parameters()), *model.named_buffers()]:
        got = result["grads" if name in result["grads"] else "buffers"][name].to(expected.dtype)
        # float64 sums in another order: within 1e-9 of the tensor's largest value (measured: 3e-12 at most)
        assert (got - expected).abs().max() <= 1e-9 * expected.abs().max(), name


@pytest.mark.skipif(not checkpointing._malloc_trim(), reason="needs glibc's malloc_trim (Linux)")
def test_release_freed_host_memory_hands_free_heap_pages_back():
    # blocks freed inside the heap (a live block after each run of freed ones, so the heap's top cannot shrink)
    # stay resident until trimmed
    import ctypes

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")

    def resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page

    size, count = 64 * 1024, 3072  # 192 MB in blocks below any mmap threshold: from the heap
    blocks = [libc.malloc(size) for _ in range(count)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for i, block in enumerate(blocks):
        if i % 16:
            libc.free(block)
    before = resident()
    assert checkpointing.release_freed_host_memory()
    after = resident()
    for block in blocks[::16]:
        libc.free(block)
    assert before - after > 0.5 * size * count * 15 / 16, (before, after)
