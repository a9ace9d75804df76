"""Run by tests/test_distributed.py under torchrun (not a test module): one DDP step of a
method on this process's shard of a fixed digits batch, batch norm in eval mode; rank 0
saves the parameter gradients to OUT.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py METHOD OUT
"""
import sys

import torch

import parl_core as pc
from parl_core.distributed import from_env

PARAMS = {"parl": dict(gamma1=1.0, gamma2=0.5, layers=2), "ce_only": {}, "gal": {}}


def batch():
    ds = pc.load_dataset("digits", "train").subset(16, seed=0)
    return ds, ds.images, ds.labels


def model(ds):
    ens = pc.build_ensemble("smallcnn", 3, ds, seed=0, width=4)
    return ens.eval()  # batch norm from running statistics: per-example gradients


def main(method: str, out: str) -> None:
    torch.set_num_threads(1)
    ctx = from_env("cpu")
    ds, x, y = batch()
    ens = model(ds)
    ddp = ctx.wrap(ens, pc.make_method(method, **PARAMS[method]))
    loss, _ = ddp(ctx.shard(x), ctx.shard(y))
    loss.backward()
    if ctx.is_main:
        torch.save({n: p.grad.clone() for n, p in ens.named_parameters()}, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
