"""Data-parallel training under torchrun: one process per GPU (or CPU slot), each training
on a shard of every batch, gradients all-reduced by DistributedDataParallel.

    torchrun --nproc_per_node=N -m parl_core train ...   # the same command without torchrun
                                                         # is today's single-process training
How it stays exact:
- **Batches.** Every process draws the same global batch (the same seeded permutation and
  augmentation as a single process) and keeps its contiguous shard (`shard`); the batch
  size must divide by the number of processes, so the shards are equal and DDP's average of
  the shard gradients is the gradient of the global batch's mean loss.
- **PARL's regulariser under DDP.** DDP wraps a module whose forward *is* the whole loss
  (`LossModule`): cross-entropy, and the input gradients at the first K layers taken with
  `torch.autograd.grad(..., create_graph=True)`. Those input-gradient calls ask only for
  gradients w.r.t. the inputs, so no parameter gradient is accumulated and none of DDP's
  all-reduce hooks fire inside the forward; the one `loss.backward()` then differentiates
  through the input gradients (the double backward) and accumulates every parameter's
  gradient exactly once, when DDP averages it across processes. Every method's terms are
  per-example means (PARL's R, GAL's cosine, ADP's per-example diversity), so the average
  over equal shards equals the single-process value.
- **Batch norm.** In training mode each process normalises with its own shard's statistics
  (DDP's default, as in any data-parallel training): results differ slightly from one
  process on the whole batch. `sync_bn=True` converts batch norm to SyncBatchNorm
  (statistics over the global batch; CUDA only in PyTorch). With batch norm in eval mode
  (or synced) a DDP step equals a single-process step on the concatenated batch
  (tests/test_distributed.py checks this on CPU with gloo). Running statistics are
  broadcast from rank 0 with every forward (DDP's `forward_sync_buffers`).
- **Writes.** Only rank 0 writes checkpoints, resume state and progress (the CLI passes its
  callbacks on rank 0 only). Every process stops at the same step: the cancel flag is
  all-reduced before each step, so Ctrl-C stops all of them after the last finished
  epoch, which rank 0 saved atomically; a dead rank makes torchrun stop the others, and the
  last finished epoch's checkpoint stays intact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "from_env", "LossModule"]


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} must divide by the {self.world_size} processes "
                             "(equal shards keep the averaged gradient exact)")

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of a batch (equal shares: see check_batch)."""
        return t.tensor_split(self.world_size)[self.rank]

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (e.g. a cancel request)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, values: list[float]) -> list[float]:
        """Means over processes of a few scalars (the logged losses), in one all-reduce."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def total(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def wrap(self, ens: nn.Module, loss_fn, *, sync_bn: bool = False):
        """`loss_fn(ens, x, y)` as a DistributedDataParallel module (see module docstring)."""
        from torch.nn.parallel import DistributedDataParallel as DDP
        if sync_bn:
            if self.device.type != "cuda":
                raise ValueError("sync_bn needs CUDA: PyTorch's SyncBatchNorm does not run on the CPU")
            ens = nn.SyncBatchNorm.convert_sync_batchnorm(ens)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(LossModule(ens, loss_fn), device_ids=ids, forward_sync_buffers=True)


class LossModule(nn.Module):
    """A module whose forward is a training method's loss on an ensemble, so that DDP sees
    one forward (PARL's input gradients included) and one backward per step."""

    def __init__(self, ens: nn.Module, loss_fn):
        super().__init__()
        self.ens, self.loss_fn = ens, loss_fn

    def forward(self, x, y):
        return self.loss_fn(self.ens, x, y)


def from_env(device=None) -> DistContext | None:
    """The process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT), initialised once: NCCL with one GPU per process when
    CUDA is available, gloo on CPU. None when not started by torchrun (one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = torch.device(device) if device is not None else None
    cuda = torch.cuda.is_available() and (want is None or want.type == "cuda")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistContext(rank, world, local, dev, backend)
