"""DVERGE (Yang et al. 2020) as a loss object for the one trainer, with its feature
distillation; re-exported by parl_core.baselines (where ADP and GAL live).

Read against the reference trainer (github.com/zjysteven/DVERGE: train/train_dverge.py,
distillation.py, models/resnet.py) and the TRS repository's copy of it
(AI-secure/Transferability-Reduced-Smooth-Ensemble, train/Empirical/train_dverge.py).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import FEATURE_SPACES, check_space, layer_outputs, num_feature_layers
from .losses import LABELS, _check_nonneg, _members, non_default, register_method
from .models import per_example_bn

__all__ = ["dverge_distill", "features_at", "member_pgd", "DVERGE"]

LABELS.update({"dverge": "DVERGE"})


class _Reached(Exception):
    """Raised by a forward hook to stop a forward once the wanted layer has run."""


def features_at(model, x: torch.Tensor, layer: int, space: str = "pre_bn") -> torch.Tensor:
    """Output of `model`'s 1-based layer `layer` in feature space `space`.

    "pre_bn" (default) is the list of DESIGN §3; the others are those of
    parl_core.features ("reference": the DVERGE reference trainer's layers, the logits
    being layer L + 1). The forward stops right after that layer: nothing later
    changes it, and skipping the rest halves the average cost of DVERGE's distillation.
    Models without `layer_modules()` run the whole forward.
    """
    check_space(space)
    if space != "pre_bn":
        return layer_outputs(model, x, space, upto=layer)[1][layer - 1]
    if not hasattr(model, "layer_modules"):
        return model(x, return_features=True)[1][layer - 1]
    box = {}

    def hook(module, inputs, output):
        box["out"] = output
        raise _Reached

    handle = model.layer_modules()[layer - 1].register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass  # the forward was stopped on purpose; its result is in box
    finally:
        handle.remove()
    return box["out"]


def _check_int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


def _check_distill(models, x_source, x_target, layer, eps, step_size, steps, space):
    if x_source.shape != x_target.shape:
        raise ValueError(f"x_source and x_target must have the same shape, got "
                         f"{tuple(x_source.shape)} and {tuple(x_target.shape)}")
    check_space(space, "feature_space")
    L = min(num_feature_layers(m, space) for m in models)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= L:
        raise ValueError(f"layer must be an int in 1..{L} (the models' layers in feature "
                         f"space {space!r}), got {layer!r}")
    _check_nonneg(eps=eps, step_size=step_size)
    _check_int("steps", steps, 0)


def _as_models(model):
    single = isinstance(model, nn.Module) and not hasattr(model, "members")
    return single, ([model] if single else _members(model))


def _project(x, x0, eps, bounds):
    x = torch.min(torch.max(x, x0 - eps), x0 + eps)
    return x.clamp(*bounds) if bounds is not None else x


def dverge_distill(model, x_source: torch.Tensor, x_target: torch.Tensor, layer: int,
                   eps: float = 0.07, step_size: float = 0.007, steps: int = 10, *,
                   momentum: bool = True, rand_start: bool = False, seed: int = 0,
                   bounds=(0.0, 1.0), feature_space: str = "pre_bn") -> torch.Tensor:
    """DVERGE's feature distillation (Yang et al. 2020).

    Finds x' within `eps` (L∞) of x_source whose layer-`layer` features match those
    of x_target: x' = argmin ||f_l(x') − f_l(x_target)||² by `steps` signed steps of
    `step_size`, each projected to the ε-ball and to `bounds` (None: no pixel range).
    As in the reference: start at the source (`rand_start` adds uniform noise in the
    ball, drawn from `seed`), momentum 1 on the per-example L1-normalised gradient.
    Features are layer `layer` of `feature_space` (parl_core.features; default "pre_bn",
    DESIGN §3's raw conv outputs, 1..L; "reference" the reference trainer's, 1..L+1)
    with batch-norm statistics held constant; the model's train/eval mode is used as it is.

    model: one model -> (N, *input); a list of models or an Ensemble -> (M, N, *input),
    one x' per member, all members distilled together with one backward per step.
    """
    single, models = _as_models(model)
    _check_distill(models, x_source, x_target, layer, eps, step_size, steps, feature_space)
    x0 = x_source.detach()
    with contextlib.ExitStack() as stack, torch.no_grad():
        for m in models:
            stack.enter_context(per_example_bn(m))
        targets = [features_at(m, x_target.detach(), layer, feature_space) for m in models]
    x = x0.unsqueeze(0).repeat(len(models), *[1] * x0.dim())  # (M, N, *input)
    if rand_start:
        gen = torch.Generator().manual_seed(int(seed))
        x = x + (torch.rand(x.shape, generator=gen) * 2 - 1).to(x) * eps
        x = x.clamp(*bounds) if bounds is not None else x
    g = torch.zeros_like(x)
    for _ in range(steps):
        grad = _batched_grad(models, x, lambda j, m, xj: F.mse_loss(
            features_at(m, xj, layer, feature_space).float(), targets[j].float()))
        with torch.no_grad():
            if momentum:  # accumulate the per-example L1-normalised gradient
                norm = grad.flatten(2).abs().sum(-1).clamp_min(1e-12)
                g = g + grad / norm.view(*norm.shape, *[1] * (grad.dim() - 2))
                grad = g
            x = _project(x - step_size * grad.sign(), x0, eps, bounds)
    return x[0] if single else x


def _batched_grad(models, x, loss_of):
    """∇ of Σ_j loss_of(j, model_j, x_j) w.r.t. x (M, N, ...), batch-norm statistics held
    constant: member j's slice only depends on member j's loss, so one backward serves
    every member."""
    xg = x.detach().requires_grad_(True)
    with contextlib.ExitStack() as stack, torch.enable_grad():
        for m in models:
            stack.enter_context(per_example_bn(m))
        loss = sum(loss_of(j, m, xg[j]) for j, m in enumerate(models))
        return torch.autograd.grad(loss, xg)[0]


def member_pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255,
               step_size: float = 2 / 255, steps: int = 10, *, seed: int = 0,
               bounds=(0.0, 1.0)) -> torch.Tensor:
    """Untargeted L∞ PGD on each model's own cross-entropy, as DVERGE+AdvT's reference
    (distillation.py `Linf_PGD` with its trainer's settings): a uniform random start in
    the ε-ball (drawn from `seed`), clipped to `bounds`, then `steps` steps of
    `step_size` · sign(∇_x CE), each projected to the ball and to `bounds`; no momentum.
    Batch-norm statistics are held constant and running statistics left alone (the
    reference runs its train-mode forward, coupling the batch and updating them).

    model: one model -> (N, *input); a list of models or an Ensemble -> (M, N, *input).
    """
    single, models = _as_models(model)
    _check_nonneg(eps=eps, step_size=step_size)
    _check_int("steps", steps, 0)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have one label per example of x ({x.shape[0]}), got {y.shape[0]}")
    x0 = x.detach().unsqueeze(0).repeat(len(models), *[1] * x.dim())
    gen = torch.Generator().manual_seed(int(seed))
    xa = x0 + (torch.rand(x0.shape, generator=gen) * 2 - 1).to(x0) * eps
    xa = xa.clamp(*bounds) if bounds is not None else xa
    for _ in range(steps):
        grad = _batched_grad(models, xa, lambda j, m, xj: F.cross_entropy(m(xj).float(), y))
        with torch.no_grad():
            xa = _project(xa + step_size * grad.sign(), x0, eps, bounds)
    return xa[0] if single else xa


_ADV_DEFAULTS = {"adv_eps": 8 / 255, "adv_step_size": 2 / 255, "adv_steps": 10, "dverge_coeff": 1.0}


@register_method
class DVERGE:
    """DVERGE (Yang et al. 2020): each member learns the other members' non-robust features.

    Every step, for every member j, x'_j = dverge_distill(member j, x, t, layer): the batch
    x (source) moved within ε until member j's layer-l features match those of a target
    batch t. Member i then minimises Σ_{j≠i} CE_i(x'_j, y) with the source labels (the
    reference's round-robin), and loss = Σ_i of those sums. parts: "ce" (that loss, the
    only CE DVERGE trains on), "clean_ce" (Σ_i CE_i on the clean batch, no gradient),
    "layer" (the distillation layer), "ce_members" (M,), "logits" (clean, for accuracy).

    Defaults are the paper's and the DVERGE reference's: ε 0.07, step 0.007, 10 steps,
    momentum, no random start, a layer drawn every epoch (`layer=None`; an int fixes it,
    the reference's --distill-fixed-layer).

    Options (each enters `params` only when it differs from its default, so runs at the
    defaults keep the parameters and hashes they had before the options existed):
      * feature_space: "pre_bn" (default, DESIGN §3's raw conv outputs 1..L: 19 for
        ResNet20, no logits) or "reference", the reference trainer's layers 1..L+1
        (parl_core.features: bn1(conv1(x)); per block bn_a(conv_a(h)), then
        bn_b(conv_b(u)) + shortcut(h) before the block's ReLU; the logits as layer L+1:
        for ResNet20 exactly the reference's 1..20). "post_bn"/"post_relu" also work.
      * plus_adv: DVERGE+AdvT as in the reference (--plus-adv): besides the distilled
        batches, every member i also gets PGD examples of itself, adv_i = member_pgd(
        member i, x, y; adv_eps 8/255, adv_step_size 2/255, adv_steps 10, random start),
        and minimises dverge_coeff · Σ_{j≠i} CE_i(x'_j, y) + CE_i(adv_i, y) (the
        reference's --dverge-coeff, default 1). Extra parts: "div_ce", "adv_ce". The adv_*
        and dverge_coeff parameters only apply with plus_adv=True.

    Differences from the reference trainer, all documented choices:
      * Layers: see feature_space. Both references (DVERGE's train/train_dverge.py and
        the TRS repository's train/Empirical/train_dverge.py) redraw the layer at the
        start of every epoch, random.randint(1, depth), unless it is fixed; so do we,
        from the epoch's seeded generator, over 1..L of the chosen feature space.
      * Targets: as in the reference, a batch from an independently shuffled pass over the
        training set (a seeded permutation per epoch), but not augmented. Outside pc.train
        (no start_epoch) the targets are the batch itself rolled by one.
      * Warm start: the reference starts from a trained plain ensemble (--start-from
        baseline, its default). The CLI refuses DVERGE without `--init CKPT` (a trained
        ENS_U, e.g. from `train --method ce_only`) unless `--scratch` is given; pc.train
        starts from whatever weights the ensemble holds.
      * Distillation and PGD hold batch-norm statistics constant and leave the running
        ones alone; target features are computed once per step (the reference recomputes
        the same values every distillation step). Clean logits for train accuracy also
        leave the running statistics alone.
    """
    name = "dverge"

    def __init__(self, eps: float = 0.07, step_size: float = 0.007, steps: int = 10,
                 layer: int | None = None, momentum: bool = True, rand_start: bool = False,
                 feature_space: str = "pre_bn", plus_adv: bool = False,
                 adv_eps: float = 8 / 255, adv_step_size: float = 2 / 255, adv_steps: int = 10,
                 dverge_coeff: float = 1.0):
        _check_nonneg(eps=eps, step_size=step_size, adv_eps=adv_eps,
                      adv_step_size=adv_step_size, dverge_coeff=dverge_coeff)
        _check_int("steps", steps, 1)
        _check_int("adv_steps", adv_steps, 1)
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
            raise ValueError(f"layer must be None (drawn every epoch) or an int >= 1, got {layer!r}")
        check_space(feature_space, "feature_space", FEATURE_SPACES)
        if not isinstance(plus_adv, bool):
            raise ValueError(f"plus_adv must be True or False, got {plus_adv!r}")
        adv = {"adv_eps": float(adv_eps), "adv_step_size": float(adv_step_size),
               "adv_steps": adv_steps, "dverge_coeff": float(dverge_coeff)}
        changed = sorted(k for k, v in adv.items() if v != _ADV_DEFAULTS[k])
        if changed and not plus_adv:
            raise ValueError(f"{', '.join(changed)} only apply with plus_adv=True (DVERGE+AdvT), "
                             f"got plus_adv=False")
        self.params = {"eps": float(eps), "step_size": float(step_size), "steps": steps,
                       "layer": layer, "momentum": bool(momentum), "rand_start": bool(rand_start),
                       **non_default(feature_space=(feature_space, "pre_bn"))}
        if plus_adv:
            self.params.update({"plus_adv": True, **adv})
        self._gen, self._layer, self._pool, self._order, self._cursor = None, None, None, None, 0

    @property
    def feature_space(self) -> str:
        return self.params.get("feature_space", "pre_bn")

    def start_epoch(self, ens, epoch, generator, train_ds):
        """Draw this epoch's layer and target order from the epoch's seeded generator."""
        self._start(ens, int(torch.randint(2**62, (1,), generator=generator)))
        self._pool = train_ds.images
        self._order, self._cursor = torch.randperm(len(self._pool), generator=self._gen), 0

    def _start(self, ens, seed):
        self._gen = torch.Generator().manual_seed(seed)
        L = min(num_feature_layers(m, self.feature_space) for m in _members(ens))
        layer = self.params["layer"]
        if layer is not None and layer > L:
            raise ValueError(f"layer={layer} is out of range: these models have L={L} layers "
                             f"in feature space {self.feature_space!r}")
        self._layer = layer if layer is not None else int(torch.randint(1, L + 1, (1,), generator=self._gen))

    def _targets(self, x):
        n = x.shape[0]
        if self._pool is None or n > len(self._pool):
            return torch.roll(x, 1, 0)
        if self._cursor + n > len(self._order):  # a new pass, like the reference's loader
            self._order, self._cursor = torch.randperm(len(self._pool), generator=self._gen), 0
        idx = self._order[self._cursor:self._cursor + n]
        self._cursor += n
        return self._pool[idx].to(x.device, x.dtype)

    def __call__(self, ens, x, y):
        members = _members(ens)
        if len(members) < 2:
            raise ValueError(f"DVERGE needs at least 2 members (round-robin), got {len(members)}")
        if self._gen is None:
            self._start(ens, 0)
        p = self.params
        bounds = (0.0, 1.0) if x.dim() == 4 else None
        seed = int(torch.randint(2**62, (1,), generator=self._gen)) if p["rand_start"] else 0
        xd = dverge_distill(members, x, self._targets(x), self._layer, p["eps"], p["step_size"],
                            p["steps"], momentum=p["momentum"], rand_start=p["rand_start"], seed=seed,
                            bounds=bounds, feature_space=self.feature_space)  # (M, N, ...)
        ces = torch.stack([sum(F.cross_entropy(m(xd[j]).float(), y)
                               for j in range(len(members)) if j != i)
                           for i, m in enumerate(members)])
        extra = {}
        if p.get("plus_adv"):
            adv_seed = int(torch.randint(2**62, (1,), generator=self._gen))
            xa = member_pgd(members, x, y, p["adv_eps"], p["adv_step_size"], p["adv_steps"],
                            seed=adv_seed, bounds=bounds)  # (M, N, ...): member i's own PGD
            adv = torch.stack([F.cross_entropy(m(xa[i]).float(), y) for i, m in enumerate(members)])
            extra = {"div_ce": ces.sum().detach(), "adv_ce": adv.sum().detach()}
            ces = p["dverge_coeff"] * ces + adv
        with contextlib.ExitStack() as stack, torch.no_grad():
            for m in members:
                stack.enter_context(per_example_bn(m))
            clean = torch.stack([m(x) for m in members])  # (M, N, C)
        loss = ces.sum()
        clean_ce = sum(F.cross_entropy(c.float(), y) for c in clean)
        return loss, {"ce": loss, "clean_ce": clean_ce, "layer": torch.tensor(float(self._layer)),
                      "ce_members": ces.detach(), "logits": clean, **extra}
