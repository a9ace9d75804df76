"""One training loop for every method (a method is a loss object, parl_core.losses).

Progress payload (`on_progress(event: dict)`), the same for the CLI and the dashboard:
    {"event": "start" | "step" | "epoch" | "end",
     "epoch": e (1-based, the epoch in progress or just finished), "epochs": E,
     "step": s (1-based within the epoch), "steps": steps per epoch,
     "global_step": g, "total_steps": G, "elapsed": seconds, "eta": seconds or None,
     "loss": float, "parts": {name: float}           (step events)
     "record": {...}                                  (epoch events: the history entry)
     "state": {...}                                   (epoch events: History.state so far)
     "cancelled": bool                                (end event)}

History: a list of per-epoch records (JSON-serialisable dicts):
    {"epoch", "lr", "loss", "ce", "reg"? (method terms, batch means over the epoch),
     "train_acc" (ensemble vote on training batches), "test_acc" (ensemble vote),
     "member_acc" [per member], "r_mean" (mean pairwise R/K at K_eval on the probe
     batch), "r_pairwise" [[...]] (M x M R/K), "k_eval", "time" (seconds, cumulative)}

Randomness: every epoch draws its shuffling, augmentation and method choices from a
generator seeded by (seed, epoch), so a run resumed at an epoch boundary continues
exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import copy
import inspect
import math
import time
from contextlib import nullcontext

import torch

from .data import Dataset, augment_batch, evaluation_subset
from .ensemble import Ensemble, eval_mode
from .features import check_space
from .gradients import as_members
from .layergrad import PARL_FEATURES, layer_gradients, num_layers
from .losses import make_method, pairwise_cosines

__all__ = ["train", "History", "evaluate_accuracy", "mean_pairwise_r", "layer_cosines", "default_device",
           "epoch_generator", "build_ensemble", "SCHEDULES", "training_meta"]

SCHEDULES = ("cosine", "step", "constant")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator for everything random in one epoch (shuffle, augmentation...)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def build_ensemble(arch: str, members: int, dataset: Dataset, *, seed: int = 0, **kwargs) -> Ensemble:
    """An ensemble of `members` freshly initialised models for `dataset`, member i seeded seed+i."""
    from .models import build_model
    if not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be an int >= 1, got {members!r}")
    if arch == "mlp" and len(dataset.input_shape) != 1:
        raise ValueError(f"arch 'mlp' takes vector inputs (the 2-D sets); {dataset.name} holds images "
                         f"of shape {tuple(dataset.input_shape)}: use smallcnn or resnet20")
    in_ch = dataset.input_shape[0]
    return Ensemble([build_model(arch, dataset.num_classes, in_ch, mean=dataset.mean,
                                 std=dataset.std, seed=seed + i, **kwargs) for i in range(members)])


class History(list):
    """Per-epoch records; `.cancelled` tells whether the run stopped early, `.state`
    holds what `train(..., resume=...)` needs to continue it exactly."""
    cancelled = False
    state: dict | None = None


def _lr_at(schedule, lr, epoch, epochs):
    if schedule == "constant":
        return lr
    if schedule == "step":  # ×0.1 at 50 % and 75 % of the epochs
        return lr * (0.1 ** ((epoch >= epochs // 2) + (epoch >= (3 * epochs) // 4)))
    return 0.5 * lr * (1 + math.cos(math.pi * epoch / max(1, epochs)))  # per epoch, from lr


@torch.no_grad()
def evaluate_accuracy(ens: Ensemble, ds: Dataset, *, batch_size: int = 500, device=None):
    """Clean accuracy: (ensemble majority-vote accuracy, [member accuracies]), in eval mode."""
    device = device or next(ens.parameters()).device
    correct_e, correct_m = 0, torch.zeros(len(ens.members))
    with eval_mode(ens):
        for i in range(0, len(ds), batch_size):
            x = ds.images[i:i + batch_size].to(device)
            y = ds.labels[i:i + batch_size].to(device)
            ml = ens.member_logits(x)
            correct_e += (Ensemble.vote(ml) == y).sum().item()
            correct_m += (ml.argmax(-1) == y).sum(1).float().cpu()
    n = max(1, len(ds))
    return correct_e / n, (correct_m / n).tolist()


def mean_pairwise_r(ens: Ensemble, x: torch.Tensor, k: int | None = None, *,
                    feature: str = "pre_bn"):
    """Mean pairwise R/K of an ensemble on inputs x, models in eval mode.

    Returns (mean over pairs i<j of R/K, (M, M) matrix of R/K). R/K is the mean over the
    first K layers and the examples of the per-example layer-gradient cosine. `feature`
    is PARL's definition of the layer outputs F^k (parl_core.layergrad): "pre_bn" (the
    default, raw conv outputs; layer 1's gradient is then the same for every input, so
    its cosine is a constant of the weights), "post_bn" or "post_relu". In eval mode
    batch norm uses its running statistics, so every example's gradient is its own.
    """
    L = min(num_layers(m) for m in ens.members)
    k = min(7, L) if k is None else k
    with eval_mode(ens):
        grads = torch.stack([layer_gradients(m, x, k, feature=feature)
                             for m in ens.members])  # (M, K, N, ...)
    r = pairwise_cosines(grads).mean((2, 3)).cpu()  # (M, M)
    m = len(ens.members)
    iu = torch.triu_indices(m, m, 1)
    mean = r[iu[0], iu[1]].mean().item() if m > 1 else float("nan")
    return mean, r.tolist()


def layer_cosines(models, x: torch.Tensor, *, feature: str = "pre_bn", per_example: bool = False,
                  batch_size: int = 128) -> torch.Tensor:
    """The mean pairwise layer-gradient cosine of every layer k = 1..L, models in eval mode.

    models: an Ensemble (its members) or a list of at least 2 modules; L is the fewest
    layers any of them has. Returns (L,): per layer, the mean over member pairs i < j and
    the examples of cos(g^k_i(x), g^k_j(x)), g^k = ∇x Σ F^k (parl_core.layergrad); or, with
    per_example=True, (L, N): the mean over the pairs for each example. The mean of the
    first K entries is `mean_pairwise_r(ens, x, K, feature=feature)[0]`, R/K. Its floor is
    −1/(M−1) per layer. `feature`: "pre_bn" (default; the stem is linear, so layer 1's
    cosine is the same at every input), "post_bn" or "post_relu". Computed in batches of
    `batch_size` examples (in eval mode each example's gradient is its own); returned on the CPU.
    """
    members = as_members(models)
    if len(members) < 2:
        raise ValueError(f"layer_cosines needs at least 2 models (a pair), got {len(members)}")
    check_space(feature, "feature", PARL_FEATURES)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty float tensor (N, *input), got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(per_example, bool):
        raise ValueError(f"per_example must be True or False, got {per_example!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    L = min(num_layers(m) for m in members)
    m = len(members)
    iu = torch.triu_indices(m, m, 1)
    out = []
    with eval_mode(members):
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            grads = torch.stack([layer_gradients(mod, xb.to(next(mod.parameters()).device), L,
                                                 feature=feature).detach().cpu() for mod in members])
            out.append(pairwise_cosines(grads)[iu[0], iu[1]].mean(0))  # (L, B)
    cos = torch.cat(out, 1).float()  # (L, N)
    return cos if per_example else cos.mean(1)


def _validate(ens, train_ds, epochs, batch_size, lr, schedule):
    if not isinstance(ens, Ensemble):
        raise ValueError(f"ens must be a parl_core.Ensemble, got {type(ens).__name__}")
    if not isinstance(train_ds, Dataset) or len(train_ds) == 0:
        raise ValueError("train_ds must be a non-empty parl_core Dataset")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (batch norm needs 2), got {batch_size!r}")
    from .validate import finite
    finite(lr=lr)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def train(ens: Ensemble, train_ds: Dataset, test_ds: Dataset | None = None, *, method: str = "parl",
          epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, schedule: str = "cosine",
          seed: int = 0, device=None, augment: bool | None = None, amp: bool = False,
          probe_size: int = 256, eval_size: int | None = 2000, on_progress=None, cancel=None,
          resume: dict | None = None, weight_decay: float = 0.0, distributed=None, sync_bn: bool = False,
          **method_params) -> History:
    """Train `ens` in place with one of the registered methods; returns the History.

    Adam (lr 1e-3, the paper's optimiser), learning rate per epoch by `schedule`:
    "cosine" (default; half-cosine from lr to 0 over the run), "step" (×0.1 at 50 % and
    75 %) or "constant". `augment` (default: on for CIFAR) is a random 4-pixel crop
    and horizontal flip. `amp` runs the loss in bf16 autocast on CUDA. `weight_decay`:
    Adam's L2 penalty (default 0, the paper's; the DVERGE/TRS reference trainers use
    1e-4). Test accuracy is measured on the first `eval_size` test examples of the
    canonical evaluation order (`parl_core.data.evaluation_order`; None: all), the same
    examples for every run, and R/K on the first `probe_size` of them. `cancel` is
    a threading.Event or a callable; when it fires, the weights are restored to the
    last finished epoch and History.cancelled is True. `resume` is a History.state from
    an interrupted run with the same settings. `distributed`: a
    `parl_core.distributed.DistContext` (torchrun) to train data-parallel, each process on
    a shard of every batch (see that module for why the result stays exact); `sync_bn`
    then synchronises batch norm (CUDA). Every process must call train with the same
    arguments.
    """
    _validate(ens, train_ds, epochs, batch_size, lr, schedule)
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    loss_fn = make_method(method, **method_params)
    feature = loss_fn.params.get("feature", "pre_bn")
    if distributed is not None:
        distributed.check_batch(batch_size)
        device = distributed.device
    from .validate import device as check_device
    device = check_device(device) if device is not None else default_device()
    ens.to(device)
    augment = train_ds.name.startswith("cifar") if augment is None else augment
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda"
                else nullcontext())
    xs, ys = train_ds.images.to(device), train_ds.labels.to(device)
    test = evaluation_subset(test_ds, eval_size) if test_ds is not None else None
    probe = (evaluation_subset(test, probe_size) if test is not None
             else train_ds.subset(probe_size, seed=seed)).images.to(device)
    k_eval = min(7, min(num_layers(m) for m in ens.members))
    if loss_fn.params.get("layers", 0) is None:  # record the K actually used
        loss_fn.params["layers"] = k_eval
    opt = torch.optim.Adam(ens.parameters(), lr=lr, weight_decay=weight_decay)
    step_loss = (distributed.wrap(ens, loss_fn, sync_bn=sync_bn) if distributed is not None
                 else (lambda x, y: loss_fn(ens, x, y)))
    history, start_epoch = History(), 0
    if resume is not None:
        ens.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        history.extend(resume["history"])
        start_epoch = len(history)
    n = len(ys)
    steps = max(1, n // batch_size) if n >= batch_size else 1
    total = steps * epochs
    t0 = time.perf_counter() - (history[-1]["time"] if history else 0.0)
    t_run = time.perf_counter()
    snapshot = _snapshot(ens, opt, history)
    emit = on_progress or (lambda ev: None)
    stop = cancel.is_set if hasattr(cancel, "is_set") else (cancel or (lambda: False))
    emit({"event": "start", "epoch": start_epoch + 1, "epochs": epochs, "step": 0, "steps": steps,
          "global_step": start_epoch * steps, "total_steps": total, "elapsed": 0.0, "eta": None})
    cancelled = False
    for epoch in range(start_epoch, epochs):
        gen = epoch_generator(seed, epoch)
        cur_lr = _lr_at(schedule, lr, epoch, epochs)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        if hasattr(loss_fn, "start_epoch"):  # methods with per-epoch state (DVERGE, TRS's ε ramp)
            if "epochs" in inspect.signature(loss_fn.start_epoch).parameters:
                loss_fn.start_epoch(ens, epoch, gen, train_ds, epochs=epochs)
            else:
                loss_fn.start_epoch(ens, epoch, gen, train_ds)
        ens.train()
        order = torch.randperm(n, generator=gen).to(device)
        sums, correct, seen, voted = {}, 0, 0, False
        for s in range(steps):
            if distributed.any(stop()) if distributed is not None else stop():
                cancelled = True
                break
            idx = order[s * batch_size:(s + 1) * batch_size]
            x, y = xs[idx], ys[idx]
            if augment:  # the whole batch, as one process would: then this process's shard
                x = augment_batch(x, generator=gen)
            if distributed is not None:
                x, y = distributed.shard(x), distributed.shard(y)
            with autocast:
                loss, parts = step_loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scal = {"loss": loss.item()}
            scal.update({k: v.item() for k, v in parts.items() if v.dim() == 0})
            hit = (Ensemble.vote(parts["logits"]) == y).sum().item() if "logits" in parts else 0
            if distributed is not None:  # the global batch's numbers, the same on every process
                *vals, hit = distributed.total([*scal.values(), hit])
                scal = {k: v / distributed.world_size for k, v in zip(scal, vals)}
            for k, v in scal.items():
                sums[k] = sums.get(k, 0.0) + v
            if "logits" in parts:
                voted = True
                correct += int(hit)
            seen += len(y) * (distributed.world_size if distributed is not None else 1)
            g_step = epoch * steps + s + 1
            done = g_step - start_epoch * steps
            el = time.perf_counter() - t_run
            emit({"event": "step", "epoch": epoch + 1, "epochs": epochs, "step": s + 1,
                  "steps": steps, "global_step": g_step, "total_steps": total,
                  "elapsed": time.perf_counter() - t0, "eta": el / done * (total - g_step),
                  "loss": scal["loss"], "parts": scal})
        if cancelled:
            break
        rec = {"epoch": epoch + 1, "lr": cur_lr, **{k: v / steps for k, v in sums.items()},
               "train_acc": correct / seen if voted else None}
        if test is not None:
            rec["test_acc"], rec["member_acc"] = evaluate_accuracy(ens, test, device=device)
        rec["r_mean"], rec["r_pairwise"] = mean_pairwise_r(ens, probe, k_eval)
        rec["k_eval"] = k_eval
        if feature != "pre_bn":  # R also under the loss's definition (params.feature); r_mean stays comparable
            rec["r_feature_mean"] = mean_pairwise_r(ens, probe, k_eval, feature=feature)[0]
        rec["time"] = time.perf_counter() - t0
        history.append(rec)
        snapshot = _snapshot(ens, opt, history)
        done = (epoch + 1 - start_epoch) * steps
        el = time.perf_counter() - t_run
        emit({"event": "epoch", "epoch": epoch + 1, "epochs": epochs, "step": steps, "steps": steps,
              "global_step": (epoch + 1) * steps, "total_steps": total, "elapsed": rec["time"],
              "eta": el / done * (total - (epoch + 1) * steps), "record": rec,
              "state": snapshot})
    if cancelled:  # back to the last finished epoch: a partial epoch is never kept
        ens.load_state_dict(snapshot["model"])
        opt.load_state_dict(snapshot["optimizer"])
    history.cancelled = cancelled
    history.state = snapshot
    history.method_params = dict(loss_fn.params)
    emit({"event": "end", "epoch": len(history), "epochs": epochs, "cancelled": cancelled,
          "elapsed": time.perf_counter() - t0})
    return history


def _snapshot(ens, opt, history) -> dict:
    return {"model": copy.deepcopy(ens.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()),
            "history": [dict(r) for r in history]}


def training_meta(train_ds: Dataset, history: list, *, method: str, params: dict, seed: int, epochs: int,
                  batch_size: int, lr: float, schedule: str, augment: bool | None = None,
                  train_subset: int | None = None, command: str | None = None, **extra) -> dict:
    """The checkpoint metadata of a training run (DESIGN §5), shared by CLI and dashboard."""
    last = history[-1] if history else {}
    meta = {"dataset": train_ds.name, "dataset_info": {k: v for k, v in train_ds.info.items()
                                                        if isinstance(v, (int, float, str))},
            "num_classes": train_ds.num_classes, "classes": train_ds.classes,
            "input_shape": list(train_ds.input_shape), "method": method,
            "params": dict(params), "seed": seed,
            "epochs": epochs, "epochs_done": len(history), "batch_size": batch_size, "lr": lr,
            "schedule": schedule, "augment": augment, "train_subset": train_subset,
            "train_size": len(train_ds), "history": list(history),
            "clean_acc": last.get("test_acc"), "r_mean": last.get("r_mean"),
            "cancelled": bool(getattr(history, "cancelled", False))}
    if command:
        meta["command"] = command
    meta.update(extra)
    return meta
