"""Linear CKA between representations, layer by layer (Figure 2, Appendix B).

Estimators (DESIGN §3; every result says which one it used):

* "full": Kornblith et al. (2019), the biased estimator on all n examples,
      CKA = ‖Y_cᵀ X_c‖²_F / (‖X_cᵀ X_c‖_F ‖Y_cᵀ Y_c‖_F)   (feature form)
          = ⟨K_c, L_c⟩ / (‖K_c‖ ‖L_c‖),  K_c = H X Xᵀ H  (Gram form),
  features flattened and centred, float64. `linear_cka` takes the cheaper form.
  For layer matrices it keeps every example's features: memory grows with n.
* "minibatch": Nguyen, Raghu & Kornblith (2021). The unbiased HSIC of Song et al.
  (2012) is averaged over minibatches, then
      CKA = Σ_b HSIC_u(K_b, L_b) / sqrt(Σ_b HSIC_u(K_b, K_b) · Σ_b HSIC_u(L_b, L_b)).
  Memory depends on the batch size only; with one batch of all n it is the full
  unbiased estimate (`unbiased_cka`), which is its limit as batches grow. Batches
  are taken in the order given, and each batch's HSIC_u is unbiased only if the
  batch is a random sample: pass examples in random order (e.g. `Dataset.subset`),
  not sorted by class.

Guards (unbiased estimator): HSIC_u divides by n(n-3), so a batch needs n >= 4; a
last batch of fewer than 4 examples is merged into the one before it, and fewer than
4 examples in all raise ValueError. HSIC_u(K, L) can be negative by chance for weakly
related representations (HSIC_u(K, K) is a squared norm, never negative): CKA
estimates are clipped to [0, 1], the range of the quantity estimated. A constant
representation (zero variance) has no similarity structure: its CKA is reported as 0.
"""
from __future__ import annotations

import numpy as np
import torch

from .ensemble import eval_mode
from .gradients import as_members, pair_label

__all__ = ["linear_cka", "unbiased_cka", "minibatch_cka", "layerwise_cka", "ensemble_cka",
           "ESTIMATORS"]

ESTIMATORS = ("minibatch", "full")
MIN_UNBIASED = 4  # HSIC_u divides by n(n-3)


# --------------------------------------------------------------------------- arrays
def _as_2d(a, name: str) -> torch.Tensor:
    t = a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if t.dim() < 1 or t.shape[0] < 2:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 2 examples, got "
                         f"{tuple(t.shape)}")
    return t.reshape(t.shape[0], -1).to(torch.float64)


def _check_pair(X, Y):
    x, y = _as_2d(X, "X"), _as_2d(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must hold the same examples: X has {x.shape[0]} rows, "
                         f"Y has {y.shape[0]}")
    return x, y.to(x.device)


def _ratio(num, da, db) -> float:
    den = float(da) * float(db)
    return 0.0 if den <= 0 else float(np.clip(float(num) / np.sqrt(den), 0.0, 1.0))


def linear_cka(X, Y) -> float:
    """Kornblith et al. (2019) linear CKA of X (n, ...) and Y (n, ...), in [0, 1].

    Features are flattened and centred in float64; the feature form costs
    n(p² + q² + pq), the Gram form n²(p + q): the cheaper one is used.
    """
    x, y = _check_pair(X, Y)
    x, y = x - x.mean(0), y - y.mean(0)
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    if p * p + q * q + p * q <= n * (p + q):
        return _ratio((y.T @ x).square().sum(), (x.T @ x).square().sum(),
                      (y.T @ y).square().sum())
    k, l_ = x @ x.T, y @ y.T  # already centred: H K H = X_c X_cᵀ
    return _ratio((k * l_).sum(), (k * k).sum(), (l_ * l_).sum())


def _u_stats(grams: torch.Tensor):
    """Pieces of Song et al.'s HSIC_u for a stack of Gram matrices (S, n, n): the
    zero-diagonal matrices flattened (S, n²), their row sums (S, n) and totals (S,)."""
    k = grams.clone()
    k.diagonal(dim1=1, dim2=2).zero_()
    rows = k.sum(2)
    return k.flatten(1), rows, rows.sum(1)


def _hsic_u(a, b, n: int) -> torch.Tensor:
    """(Sa, Sb) unbiased HSIC of every pair of Gram matrices of two stacks:
    [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) − 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))."""
    (ka, ra, sa), (kb, rb, sb) = a, b
    t = ka @ kb.T + torch.outer(sa, sb) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * (ra @ rb.T)
    return t / (n * (n - 3))


def _hsic_u_self(a, n: int) -> torch.Tensor:
    """(S,) HSIC_u(K, K) of every Gram matrix of one stack (the diagonal of _hsic_u)."""
    k, r, s = a
    t = k.square().sum(1) + s.square() / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * r.square().sum(1)
    return t / (n * (n - 3))


def _grams(feats) -> torch.Tensor:
    """(S, n, n) float64 Gram matrices of a list of S feature tensors (n, ...). Features
    are centred first (HSIC_u ignores the shift, float32 precision does not) and the
    product is taken in their own dtype, the expensive part, then widened."""
    out = []
    for f in feats:
        f = f.flatten(1)
        f = f - f.mean(0)
        out.append((f @ f.T).double())
    return torch.stack(out)


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) minibatches; a last batch of < 4 examples joins the one before."""
    if n < MIN_UNBIASED:
        raise ValueError(f"the unbiased CKA estimator needs at least {MIN_UNBIASED} examples "
                         f"(HSIC_u divides by n(n-3)), got n={n}")
    if not isinstance(batch_size, int) or batch_size < MIN_UNBIASED:
        raise ValueError(f"batch_size must be an int >= {MIN_UNBIASED}, got {batch_size!r}")
    edges = list(range(0, n, batch_size)) + [n]
    if edges[-1] - edges[-2] < MIN_UNBIASED:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))


def unbiased_cka(X, Y) -> float:
    """Full unbiased linear CKA (HSIC_u of Song et al. 2012) on all n >= 4 examples."""
    x, y = _check_pair(X, Y)
    return minibatch_cka(x, y, batch_size=max(MIN_UNBIASED, x.shape[0]))


def minibatch_cka(X, Y, batch_size: int = 256) -> float:
    """Nguyen et al. (2021) minibatch linear CKA of two arrays, batches taken in order."""
    x, y = _check_pair(X, Y)
    num = dx = dy = 0.0
    for s, e in _batches(x.shape[0], batch_size):
        n = e - s
        a, b = _u_stats(_grams([x[s:e]])), _u_stats(_grams([y[s:e]]))
        num += _hsic_u(a, b, n).item()
        dx += _hsic_u_self(a, n).item()
        dy += _hsic_u_self(b, n).item()
    return _ratio(num, dx, dy)


# --------------------------------------------------------------------------- models
def _check_estimator(estimator: str, x: torch.Tensor, batch_size: int):
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a float tensor (N, *input), got {type(x).__name__} "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if not isinstance(batch_size, int) or batch_size < MIN_UNBIASED:
        raise ValueError(f"batch_size must be an int >= {MIN_UNBIASED}, got {batch_size!r}")
    if estimator == "full" and len(x) < 2:
        raise ValueError(f"the full CKA estimator needs at least 2 examples, got {len(x)}")


def _features(model, xb: torch.Tensor) -> list[torch.Tensor]:
    """The model's layer outputs on one batch, each flattened to (b, features).

    Images go in as channels-last: the same values, a faster convolution path on CPU
    (~25 % for ResNet20), and features that flatten without a copy. CKA does not
    depend on the order of the features, so none is restored."""
    p = next(model.parameters(), None)
    xb = xb.to(p.device if p is not None else xb.device)
    if xb.dim() == 4:
        xb = xb.contiguous(memory_format=torch.channels_last)
    _, feats = model(xb, return_features=True)
    return [f.permute(0, 2, 3, 1).reshape(len(f), -1) if f.dim() == 4 else f.flatten(1)
            for f in feats]


def _distinct(models) -> list[int]:
    """For each model, the index of its first occurrence (the same object twice runs once)."""
    return [next(k for k, m in enumerate(models) if m is mi) for mi in models]


@torch.no_grad()
def _minibatch_matrices(models, x, pairs, batch_size):
    first = _distinct(models)
    num = {p: 0.0 for p in pairs}
    self_ = {k: 0.0 for k in set(first)}
    for s, e in _batches(len(x), batch_size):
        # one model at a time: its features are freed before the next forward
        stats = {k: _u_stats(_grams(_features(models[k], x[s:e])).cpu()) for k in self_}
        for i, j in pairs:
            num[(i, j)] = num[(i, j)] + _hsic_u(stats[first[i]], stats[first[j]], e - s)
        for k in self_:
            self_[k] = self_[k] + _hsic_u_self(stats[k], e - s)
    return {(i, j): _ratio_matrix(num[(i, j)], self_[first[i]], self_[first[j]]) for i, j in pairs}


def _ratio_matrix(num, da, db) -> np.ndarray:
    den = torch.outer(torch.as_tensor(da), torch.as_tensor(db))
    out = torch.where(den > 0, num / den.clamp_min(1e-300).sqrt(), torch.zeros_like(num))
    return out.clamp(0.0, 1.0).numpy()


@torch.no_grad()
def _full_matrices(models, x, pairs, batch_size):
    """Biased CKA on all n. One model at a time: keep its features for every example
    (on the CPU), turn them into one normalised centred Gram matrix per layer, free
    them; then ⟨K̂_a, L̂_b⟩ for every pair of layers, in float64."""
    first = _distinct(models)
    grams = {}
    for k in sorted(set(first)):
        per_layer = None  # per layer: the batches' features
        for s in range(0, len(x), batch_size):
            f = [t.float().cpu() for t in _features(models[k], x[s:s + batch_size])]
            per_layer = [[t] for t in f] if per_layer is None else \
                [c + [t] for c, t in zip(per_layer, f)]
        grams[k] = _normalised_grams(per_layer)
    return {(i, j): _gram_products(grams[first[i]], grams[first[j]]).clamp(0.0, 1.0).numpy()
            for i, j in pairs}


def _normalised_grams(layers: list[list[torch.Tensor]]) -> torch.Tensor:
    """(L, n, n) centred Gram matrices of unit Frobenius norm (zero if constant)."""
    out = []
    while layers:  # free each layer's features once its Gram exists
        f = torch.cat(layers.pop(0))
        f = f - f.mean(0)
        k = (f @ f.T).double()  # H K H = X_c X_cᵀ
        nrm = k.norm()
        out.append((k / nrm if nrm > 0 else k).float())
    return torch.stack(out)


def _gram_products(ga: torch.Tensor, gb: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    out = torch.zeros(ga.shape[0], gb.shape[0], dtype=torch.float64)
    for s in range(0, ga.shape[1], chunk):
        a = ga[:, s:s + chunk].flatten(1).double()
        b = gb[:, s:s + chunk].flatten(1).double()
        out += a @ b.T
    return out


def _cka_matrices(models, x, pairs, batch_size, estimator):
    _check_estimator(estimator, x, batch_size)
    run = _minibatch_matrices if estimator == "minibatch" else _full_matrices
    with eval_mode(models):
        return run(models, x, pairs, batch_size)


def layerwise_cka(model_a, model_b, x: torch.Tensor, batch_size: int = 256,
                  estimator: str = "minibatch") -> np.ndarray:
    """(La, Lb) linear CKA of every layer of model_a against every layer of model_b on
    the same inputs x, in the same order; one forward per batch per model, eval mode
    (each model's mode restored). estimator: "minibatch" (unbiased, memory bounded by
    batch_size) or "full" (Kornblith's biased estimator, memory grows with N)."""
    models = as_members([model_a, model_b])
    return _cka_matrices(models, x, [(0, 1)], batch_size, estimator)[(0, 1)]


def ensemble_cka(ens_or_models, x: torch.Tensor, batch_size: int = 256,
                 estimator: str = "minibatch", *, names=None) -> dict:
    """Layer-wise CKA of every member pair of an ensemble (Figures 2 and 6).

    Returns {"pairs": {(i, j): {"matrix": (Li, Lj) array, "diagonal": (min L,) array,
    "overall": mean of the diagonal, "label": "M1–M2"}} for 0-based i < j,
    "overall": mean over pairs of their overall values (the ensemble's average),
    "estimator", "n", "batch_size", "members"}. One forward per batch per member.
    """
    members = as_members(ens_or_models)
    if len(members) < 2:
        raise ValueError(f"ensemble_cka needs at least 2 models, got {len(members)}")
    m = len(members)
    keys = [(i, j) for i in range(m) for j in range(i + 1, m)]
    mats = _cka_matrices(members, x, keys, batch_size, estimator)
    pairs = {}
    for i, j in keys:
        diag = np.diagonal(mats[(i, j)]).copy()
        pairs[(i, j)] = {"matrix": mats[(i, j)], "diagonal": diag,
                         "overall": float(diag.mean()), "label": pair_label(i, j, names)}
    return {"pairs": pairs, "overall": float(np.mean([p["overall"] for p in pairs.values()])),
            "estimator": estimator, "n": int(len(x)), "batch_size": batch_size, "members": m}
