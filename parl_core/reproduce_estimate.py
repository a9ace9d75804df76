"""Time estimates for a reproduction plan (`reproduce --dry-run`): seconds per unit from
timed training steps and timed forward / forward+backward rows of the actual models on
the chosen device. Random inputs, so no data is needed; the fastest of a few repetitions
after a warm-up, so a busy machine overstates less."""
from __future__ import annotations

import json
import time

from .reproduce import _ARCH, _SHAPES, Plan

__all__ = ["estimate"]


def estimate(plan: Plan, *, device=None, reps: int = 2) -> dict:
    """Seconds per unit, from timed training steps (each method's loss, backward and Adam
    step on a batch of the unit's shape) and timed forward / forward+backward rows of the
    actual models on `device`; random inputs, so no data is needed."""
    import torch
    from .ensemble import Ensemble
    from .losses import make_method
    from .models import build_model
    from .train import default_device
    dev, cache = torch.device(device) if device else default_device(), {}

    def clock(fn):  # after a warm-up call, the fastest of `reps` (robust to a busy machine)
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize() if dev.type == "cuda" else None
            times.append(time.perf_counter() - t0)
        return min(times)

    def batch(s, n):
        (shape, classes), members = _SHAPES[s["dataset"]], s.get("members", plan.config["members"])
        e = Ensemble([build_model(_ARCH[s["dataset"]], classes, shape[0], seed=k) for k in range(members)])
        return e.to(dev), torch.rand(n, *shape, device=dev), torch.randint(classes, (n,), device=dev)

    def rows(s):  # (forward, forward + input backward) seconds per row of an ensemble
        key = (s["dataset"], s.get("members", plan.config["members"]))
        if key not in cache:
            e, x, y = batch(s, 100)
            e.eval()
            with torch.no_grad():
                fwd = clock(lambda: e(x))
            nll = torch.nn.functional.nll_loss
            grad = clock(lambda: nll(e(x.clone().requires_grad_(True)), y).backward())
            cache[key] = (fwd / 100, grad / 100)
        return cache[key]

    def step(s):  # seconds per training step
        key = json.dumps([s[k] for k in ("dataset", "members", "method", "params", "batch_size")])
        if key not in cache:
            e, x, y = batch(s, s["batch_size"])
            loss_fn, opt = make_method(s["method"], **s["params"]), torch.optim.Adam(e.train().parameters())
            cache[key] = clock(lambda: (opt.zero_grad(), loss_fn(e, x, y)[0].backward(), opt.step()))
        return cache[key]

    est = {}
    for u in plan.units:
        s = u.settings
        fwd, grad = rows(s)
        if u.kind == "train":  # steps, plus each epoch's test accuracy and R/K probe (256 images)
            n = _train_images(u.dataset, s["data"], s["train_subset"])
            n_test = s["eval_size"] or {"digits": 450}.get(u.dataset, 10000)
            per_epoch = max(1, n // s["batch_size"]) * step(s) + n_test * fwd + 256 * 7 * grad
            est[u.name] = s["epochs"] * per_epoch
        elif u.kind == "cka":
            est[u.name] = 3 * s["n_examples"] * fwd
        else:  # attack steps on the attacked model, then every target scores every example
            runs = {a: len(s["eps"]) * (s["restarts"] if a == "pgd" else 1) for a in s["attacks"]}
            steps = sum(r * (1 if a == "fgsm" else s["steps"]) for a, r in runs.items())
            scored = sum(runs.values()) * (len(s["targets"]) + 1)
            est[u.name] = s["n_examples"] * (steps * grad + scored * fwd)
    return est


def _train_images(dataset, data, subset):
    if dataset == "digits":
        n = 1347
    else:  # 10,000 images per CIFAR-10 batch file, 50,000 in CIFAR-100's one
        files = (data or {}).get("files", [])
        n = sum(10000 if f.startswith("data_batch") else 50000 for f, _ in files) or 50000
    return min(n, subset or n)
