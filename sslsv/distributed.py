"""Everything that knows about torch.distributed. Every helper is the identity in a single process.

Launch with torchrun (one process per device): RANK / WORLD_SIZE / LOCAL_RANK come from the environment.
NCCL is used on CUDA, gloo on CPU (so the distributed path can be tested on a laptop).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: torch.device) -> None:
    """Join the process group when launched by torchrun (no-op otherwise)."""
    if not launched_by_torchrun() or is_distributed():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank the summed gradient of its own slice.

    Each rank's loss uses all ranks' rows; the gradient of the total loss w.r.t. this rank's rows is the sum of the
    gradients computed on every rank, hence all_reduce(SUM) then slice. DDP then averages parameter gradients,
    which matches one process computing the mean loss over the global batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, ...) tensors of all ranks along dim 0, with gradients; identity in one process."""
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 across ranks without gradients (queues, centres, labels)."""
    if not is_distributed() or world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean across ranks (for logging and synchronised statistics)."""
    if not is_distributed() or world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


def broadcast_object(obj):
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum across ranks; every rank's output depends on every rank's input, so the backward is a sum too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Autograd-aware sum across ranks; identity in one process."""
    if not is_distributed() or world_size() == 1:
        return x
    return _AllReduceSumWithGrad.apply(x)


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the global batch, for CPU/gloo where nn.SyncBatchNorm refuses
    to run. Sums and sums of squares are all-reduced with gradients, so the result equals one process normalising
    the whole global batch (up to rounding)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // channels], dtype=x.dtype, device=x.device)
        # Two passes (mean, then centred squares) instead of E[x^2] - E[x]^2, which loses float32 precision
        # whenever |mean| >> std and makes N processes drift away from one process.
        totals = all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        centred = x - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1).clamp(min=1))
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batch_norm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Make every batch norm use global-batch statistics (nn.SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere).

    Like nn.SyncBatchNorm.convert_sync_batchnorm, the new layers hold the same parameter and buffer tensors, so a
    frozen layer (a momentum teacher's) stays frozen and nothing moves to another device or dtype."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batch_norm(child, device))
    return module


@torch.no_grad()
def shuffle_across_ranks(*xs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Shuffled BN (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", 2020,
    arXiv:1911.05722, section 3.3): gather each (B, ...) tensor of every rank (the same B on every rank), permute
    the N = world * B rows with one random permutation shared by all ranks and all tensors, and give each rank its
    own B rows of the result. The permutation is drawn on rank 0 from torch's global generator (which the trainer
    reseeds every step, so a run is reproducible and resumes identically) and broadcast.

    Returns (this rank's rows of each tensor, the permutation (N,) for `unshuffle_across_ranks`): global row j
    after the shuffle is row permutation[j] of the gathered batch. One process: the inputs unchanged and the
    identity (a permutation inside one device changes no batch statistic).
    """
    if not xs:
        raise ValueError("shuffle_across_ranks: nothing to shuffle")
    batch, device = xs[0].shape[0], xs[0].device
    if not is_distributed() or world_size() == 1:
        return list(xs), torch.arange(batch, device=device)
    n = batch * world_size()
    permutation = torch.randperm(n).to(device) if is_main() else torch.empty(n, dtype=torch.long, device=device)
    dist.broadcast(permutation, src=0)
    mine = permutation[rank() * batch : (rank() + 1) * batch]
    return [gather_no_grad(x)[mine] for x in xs], permutation


@torch.no_grad()
def unshuffle_across_ranks(x: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Inverse of `shuffle_across_ranks` for x (B, ...) computed on this rank's shuffled rows: gather, put every
    row back where its sample came from, and keep this rank's own B rows. One process: x unchanged."""
    if not is_distributed() or world_size() == 1:
        return x
    gathered = gather_no_grad(x)
    restored = torch.empty_like(gathered)
    restored[permutation] = gathered
    batch = x.shape[0]
    return restored[rank() * batch : (rank() + 1) * batch]


class DeviceError(ValueError):
    """A device name that cannot be used here (unknown, or CUDA asked for without CUDA)."""


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def parse_device(name: str) -> torch.device | None:
    """Check a device name's spelling without looking at the hardware (a config naming "cuda" must load on a
    laptop): None for "auto" (decided by resolve_device), else the torch.device it names. DeviceError for a name
    that is not a CPU, CUDA or MPS device."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"unknown device '{name}' (use {DEVICE_CHOICES})") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device '{name}' (use {DEVICE_CHOICES})")
    return device


def resolve_device(name: str | torch.device) -> torch.device:
    """The one device resolver: "auto" -> this process's GPU (cuda:LOCAL_RANK under torchrun) when CUDA is
    available, else the CPU; "cuda" without an index -> cuda:LOCAL_RANK; anything else as torch spells it."""
    if isinstance(name, torch.device):
        return name
    device = parse_device(name)
    if device is None:
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' asked for, but CUDA is not available here (use auto or cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    return device
