"""Per-example input gradients of several models and the angles between them (Figure 1).

    grads = input_gradients(models, x, y)          # (M, N, *input)
    cos = gradient_cosines(grads)                  # (N, M, M)
    deg = cosine_to_angle(cos)                     # degrees
    dist = cosine_distribution(models, x, y)       # every pair's cosines over a dataset
    coords, distortion = embed_directions(cos[0])  # 3-D unit vectors for Figure 1(e)

The loss gradient (Figure 1's ∇prim, ∇sim, ∇div) is ∇x CE(model(x), y) per example,
with models in eval mode, so batch norm uses its running statistics and one example's
gradient does not depend on the others in the batch. `layer=k` gives PARL's layer
gradient ∇x Σ_f F^k_f(x) instead (parl_core.layergrad, statistics held constant).
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .ensemble import Ensemble, eval_mode
from .layergrad import check_layers, layer_gradients, num_layers

__all__ = ["input_gradients", "gradient_cosines", "cosine_to_angle", "cosine_distribution",
           "embed_directions", "as_members", "eval_mode", "pair_label"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def as_members(models) -> list[nn.Module]:
    """The models to analyse: an Ensemble's members, a list of modules, or one module."""
    if isinstance(models, Ensemble):
        return list(models.members)
    if isinstance(models, nn.Module):
        return [models]
    try:
        members = list(models)
    except TypeError:
        raise ValueError(f"models must be an Ensemble, an nn.Module or a list of them, "
                         f"got {type(models).__name__}") from None
    bad = [i for i, m in enumerate(members) if not isinstance(m, nn.Module)]
    if not members or bad:
        raise ValueError(f"models must be a non-empty list of nn.Module; got {len(members)} "
                         f"items, items {bad} are not modules")
    return members


def _device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def pair_label(i: int, j: int, names=None) -> str:
    """A person's name for the pair (i, j) of 0-based indices: 'M1–M2' or 'a–b'."""
    if names is None:
        return f"M{i + 1}–M{j + 1}"
    return f"{names[i]}–{names[j]}"


def _check_inputs(x, y, layer, members):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a float tensor (N, *input), got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if y is not None:
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"y must be None or an int tensor of shape ({len(x)},), got "
                             f"{type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
    if layer is not None:
        for m in members:  # raises the layer-range ValueError of parl_core.layergrad
            check_layers(layer, num_layers(m))


@torch.no_grad()
def _vote_labels(members, x) -> torch.Tensor:
    """The members' majority vote on x: the label where none is given (a 2-D plane)."""
    logits = torch.stack([m(x.to(_device(m))).float().to(x.device) for m in members])
    return Ensemble.vote(logits)


def _loss_gradient(model, x, y) -> torch.Tensor:
    """∇x of the summed per-example CE; in eval mode the examples are independent, so
    row n is exactly example n's gradient. Parameters' .grad are not touched."""
    dev = _device(model)
    xg = x.detach().to(dev).requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(xg), y.to(dev), reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    return g.to(x.device)


def input_gradients(models, x: torch.Tensor, y: torch.Tensor | None = None,
                    layer: int | None = None, *, batch_size: int | None = None) -> torch.Tensor:
    """(M, N, *input) input gradients of M models at the N inputs x.

    models: an Ensemble (its members) or a list of modules (e.g. from different
      checkpoints side by side); each is evaluated on its own device, in eval mode,
      and its own train/eval mode is restored afterwards.
    y: (N,) labels; None -> the models' majority vote (ties broken by mean probability).
    layer: None -> loss gradient ∇x CE; k (1-based) -> PARL's layer gradient of layer k.
    batch_size: examples per pass (None: all at once).
    """
    members = as_members(models)
    _check_inputs(x, y, layer, members)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    step = batch_size or max(1, len(x))
    out = []
    with eval_mode(members):
        for s in range(0, len(x), step):
            xb = x[s:s + step]
            yb = None if y is None else y[s:s + step]
            out.append(_batch_gradients(members, xb, yb, layer))
    return torch.cat(out, 1) if out else x.new_zeros((len(members), 0) + tuple(x.shape[1:]))


def _batch_gradients(members, x, y, layer):
    if layer is not None:
        return torch.stack([layer_gradients(m, x.to(_device(m)), layers=layer)[layer - 1]
                            .to(x.device) for m in members])
    if y is None:
        y = _vote_labels(members, x)
    return torch.stack([_loss_gradient(m, x, y) for m in members])


def _to_tensor(a) -> tuple[torch.Tensor, bool]:
    if isinstance(a, torch.Tensor):
        return a, True
    return torch.as_tensor(np.asarray(a)), False


def gradient_cosines(grads, eps: float = 1e-12):
    """(N, M, M) cosine of every pair of the M models' gradients, per example.

    grads: (M, N, *input), tensor or array (the type is kept). A zero gradient has
    cosine 0 with everything, itself included, instead of NaN.
    """
    g, is_tensor = _to_tensor(grads)
    if g.dim() < 2:
        raise ValueError(f"grads must have shape (M, N, *input), got {tuple(g.shape)}")
    u = F.normalize(g.detach().flatten(2).double(), dim=-1, eps=eps)  # (M, N, D)
    cos = torch.einsum("ind,jnd->nij", u, u).clamp(-1.0, 1.0)
    return cos if is_tensor else cos.numpy()


def cosine_to_angle(cos):
    """Angle in degrees for a cosine (float, array or tensor; values clipped to [-1, 1])."""
    if isinstance(cos, torch.Tensor):
        return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    out = np.degrees(np.arccos(np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)))
    return float(out) if out.ndim == 0 else out


def _summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    qs = np.quantile(values, QUANTILES)
    out = {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size),
           "angle_mean_deg": float(cosine_to_angle(values).mean())}
    out.update({f"q{int(round(q * 100)):02d}": float(v) for q, v in zip(QUANTILES, qs)})
    return out


def cosine_distribution(models, x: torch.Tensor, y: torch.Tensor | None = None,
                        layer: int | None = None, *, batch_size: int = 256,
                        names=None) -> dict:
    """Every member pair's gradient cosine over a dataset (for "ENS_U vs PARL" histograms).

    Returns {"pairs": [(i, j), ...] (0-based, i < j), "labels": ["M1–M2", ...],
    "cosines": {(i, j): (N,) array}, "all": every pair's cosines concatenated,
    "summary": {(i, j) or "all": {mean, std, n, angle_mean_deg, q05, q25, q50, q75, q95}},
    "mean": mean pairwise cosine, "n": N, "layer": layer, "gradient": what was differentiated}.
    """
    members = as_members(models)
    if len(members) < 2:
        raise ValueError(f"cosine_distribution needs at least 2 models, got {len(members)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    _check_inputs(x, y, layer, members)
    m = len(members)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    chunks = {p: [] for p in pairs}
    for s in range(0, len(x), batch_size):
        yb = None if y is None else y[s:s + batch_size]
        cos = gradient_cosines(input_gradients(members, x[s:s + batch_size], yb, layer)).cpu()
        for i, j in pairs:
            chunks[(i, j)].append(cos[:, i, j].numpy())
    cosines = {p: np.concatenate(c) if c else np.zeros(0) for p, c in chunks.items()}
    pooled = np.concatenate([cosines[p] for p in pairs])
    summary = {p: _summary(cosines[p]) for p in pairs}
    summary["all"] = _summary(pooled)
    return {"pairs": pairs, "labels": [pair_label(i, j, names) for i, j in pairs],
            "cosines": cosines, "all": pooled, "summary": summary,
            "mean": summary["all"]["mean"], "n": int(len(x)), "layer": layer,
            "gradient": "loss (cross-entropy)" if layer is None else f"layer {layer} (PARL)"}


def embed_directions(cos_matrix) -> tuple[np.ndarray, float]:
    """3-D unit vectors whose pairwise angles match an (M, M) cosine matrix.

    The cosine matrix is the Gram matrix of the unit gradient directions; its top-3
    eigenpairs give coordinates V·sqrt(λ). For M <= 3 (rank <= 3) the angles are
    reproduced exactly; for more vectors this is the best rank-3 approximation of the
    Gram matrix, rows rescaled to unit length. The result is rotated so the first
    vector lies on +x and the second in the x-y plane (a canonical, repeatable view).
    A zero row/column (a zero gradient, cosine 0 with itself) maps to the origin.

    Returns (coords (M, 3), distortion): the largest absolute error, in degrees, of
    any pairwise angle in the embedding (≈ 0 when exact).
    """
    g = np.asarray(cos_matrix.detach().cpu() if isinstance(cos_matrix, torch.Tensor)
                   else cos_matrix, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] < 1:
        raise ValueError(f"cos_matrix must be a square (M, M) matrix, got shape {g.shape}")
    if not np.all(np.isfinite(g)) or np.abs(g).max() > 1 + 1e-6:
        raise ValueError("cos_matrix must hold finite cosines in [-1, 1]")
    g = (g + g.T) / 2
    live = np.diag(g) > 0.5  # unit vectors have 1 on the diagonal, zero gradients 0
    lam, vec = np.linalg.eigh(g)
    top = np.argsort(lam)[::-1][:3]
    coords = vec[:, top] * np.sqrt(np.clip(lam[top], 0.0, None))
    coords = np.pad(coords, ((0, 0), (0, 3 - coords.shape[1])))
    norms = np.linalg.norm(coords, axis=1, keepdims=True)
    coords = np.where(live[:, None] & (norms > 0), coords / np.where(norms > 0, norms, 1), 0.0)
    coords = _canonical_rotation(coords)
    emb = np.clip(coords @ coords.T, -1, 1)
    iu = [(i, j) for i in range(len(g)) for j in range(i + 1, len(g)) if live[i] and live[j]]
    err = [abs(cosine_to_angle(emb[i, j]) - cosine_to_angle(np.clip(g[i, j], -1, 1)))
           for i, j in iu]
    return coords, float(max(err, default=0.0))


def _canonical_rotation(coords: np.ndarray) -> np.ndarray:
    """Rotate (M, 3) points so row 0 lies on +x and row 1 in the x-y plane (y >= 0).
    QR of coords^T: coords @ Q is lower-triangular in its first rows; angles unchanged."""
    q, r = np.linalg.qr(coords.T, mode="complete")  # (3, 3), (3, M)
    signs = np.ones(3)
    d = np.diag(r)  # min(3, M) entries
    signs[:len(d)] = np.where(d < 0, -1.0, 1.0)
    return coords @ (q * signs)
