"""How long a training run will take on this server, timed with a few real steps."""
from __future__ import annotations

import time

import parl_core as pc

from . import config
from .jobs import TrainSettings


def estimate_seconds(settings: TrainSettings, n_steps: int = 3) -> dict:
    """Time a few real training steps and one end-of-epoch evaluation of these settings;
    returns {"step": s, "epoch_eval": s, "steps": total steps, "total": s}."""
    import torch
    from parl_core.train import evaluate_accuracy, mean_pairwise_r
    s = settings
    train_ds = pc.load_dataset(s.dataset, "train", config.data_root())
    test_ds = pc.load_dataset(s.dataset, "test", config.data_root())
    n = min(s.train_subset or len(train_ds), len(train_ds))
    steps = max(1, n // s.batch_size)
    ens = pc.build_ensemble(s.arch, s.members, train_ds, seed=s.seed).to(pc.default_device())
    loss_fn = pc.make_method(s.method, **s.params)
    opt = torch.optim.Adam(ens.parameters(), lr=s.lr)
    g = torch.Generator().manual_seed(s.seed)
    dev = pc.default_device()
    times = []
    for i in range(n_steps + 1):  # the first step warms up kernels and is not counted
        idx = torch.randint(0, len(train_ds), (min(s.batch_size, n),), generator=g)
        x, y = train_ds.images[idx].to(dev), train_ds.labels[idx].to(dev)
        t = time.perf_counter()
        loss, _ = loss_fn(ens, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    t = time.perf_counter()
    evaluate_accuracy(ens, test_ds.subset(min(2000, len(test_ds)), seed=s.seed))
    mean_pairwise_r(ens, test_ds.subset(min(256, len(test_ds)), seed=s.seed).images.to(dev))
    ev = time.perf_counter() - t
    step = sorted(times)[len(times) // 2]
    return {"step": step, "epoch_eval": ev, "steps": steps * s.epochs,
            "total": s.epochs * (steps * step + ev)}
