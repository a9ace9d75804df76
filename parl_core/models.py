"""Models with normalisation inside and an explicit list of layer outputs.

Every model maps pixel-space inputs (DESIGN §3) to logits and, on request, returns
the raw outputs of its conv (linear, for the MLP) layers in forward order, before
batch norm, shortcut convs excluded: `logits, feats = model(x, return_features=True)`.
That list is what PARL's "first K layers" and CKA's "layer-wise" both mean.
Every forward also accepts `taps`, through which `parl_core.features.layer_outputs`
reads the same layers in another feature space (after batch norm, after the ReLU, or
DVERGE's reference layers).

Each model also knows how to compute PARL's layer gradients
    g_k(x) = ∇_x Σ_f F^k_f(x),  k = 1..K
as explicit vector-Jacobian products (`layer_input_grads`). The network is piecewise
linear once batch-norm statistics are held constant (DESIGN §3), so g_k is a chain of
transposed convolutions, ReLU masks and batch-norm scales. Written this way the
double backward needed for training is a plain first-order backward of
`conv_transpose2d`, much cheaper on CPU than autograd's double backward through
convolutions and train-mode batch norm. `parl_core.layergrad` holds the generic
autograd path and the parity test checks one against the other.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["build_model", "ARCHS", "ResNet20", "SmallCNN", "MLP", "BatchNorm2d",
           "per_example_bn"]

ARCHS = ("resnet20", "smallcnn", "mlp")


# --------------------------------------------------------------------------- batch norm
class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that can hold its statistics constant for per-example gradients.

    With `detach_stats=True` (see `per_example_bn`), a train-mode forward normalises
    with the *detached* batch statistics and leaves the running statistics alone, so
    the gradient for one example does not depend on the others; values are unchanged.
    A plain train-mode forward also keeps the batch's 1/σ it computed, so `scale` need
    not recompute the variance of the same features.
    """
    detach_stats = False
    _last = None  # (weakref to the input, its detached batch 1/σ)

    def forward(self, x):
        if self.training and self.detach_stats:
            mean, var = batch_stats(x)
            return _bn_apply(x, mean, var, self)
        if not self.training or self.momentum is None or x.dtype != self.weight.dtype:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        out, _, invstd = torch.native_batch_norm(x, self.weight, self.bias, self.running_mean,
                                                 self.running_var, True, self.momentum, self.eps)
        self._last = (weakref.ref(x), invstd.detach())
        return out

    def scale(self, feat: torch.Tensor) -> torch.Tensor:
        """Per-channel slope γ/σ with σ held constant: batch σ of `feat` in train mode,
        running σ in eval mode. Shape (C,)."""
        if not self.training:
            return self.weight * torch.rsqrt(self.running_var + self.eps)
        if self._last is not None and self._last[0]() is feat:
            return self.weight * self._last[1]
        return self.weight * torch.rsqrt(batch_stats(feat)[1] + self.eps)


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached per-channel batch mean and (biased) variance of (N, C, H, W)."""
    x = x.detach()
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)


def _bn_apply(x, mean, var, bn):
    inv = torch.rsqrt(var + bn.eps) * bn.weight
    return (x - mean.view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


@contextlib.contextmanager
def per_example_bn(model: nn.Module):
    """Within this context every BatchNorm2d of `model` holds its statistics constant."""
    bns = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    for m in bns:
        m.detach_stats = True
    try:
        yield model
    finally:
        for m in bns:
            m.detach_stats = False


def _conv_t(g: torch.Tensor, conv: nn.Conv2d, in_hw, scale: torch.Tensor | None = None):
    """Transpose of `conv` (no bias) applied to a cotangent g: (S, Cout, h, w) -> (S, Cin, H, W).

    `scale` (Cout,) multiplies g's channels first; it is folded into the (small) kernel
    rather than applied to the (large) cotangent, which saves a pass over g forward and
    backward. For stride 1 the transpose is a plain convolution with the flipped,
    transposed kernel, which takes the fast oneDNN path on CPU.
    """
    w = conv.weight if scale is None else conv.weight * scale.view(-1, 1, 1, 1)
    s, p, k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
    if s == 1 and p <= k - 1:
        return F.conv2d(g, w.transpose(0, 1).flip(2, 3), padding=k - 1 - p)
    out_pad = in_hw[0] - ((g.shape[-2] - 1) * s - 2 * p + k)
    return F.conv_transpose2d(g, w, stride=s, padding=p, output_padding=out_pad)


def _on(out: torch.Tensor) -> torch.Tensor:
    """The ReLU's derivative, from its output (>= 0), as a 0/1 tensor of the same dtype:
    one pass, and a same-dtype multiply is several times faster on CPU than
    torch.where or a bool mask."""
    return torch.sign(out.detach())


def _gate(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """g with the entries where the ReLU was off set to zero (mask broadcast over g)."""
    return g * mask


class _Normalized(nn.Module):
    """Base: mean/std buffers, `config` for checkpoints, features on request."""

    def __init__(self, config: dict, mean, std, shape):
        super().__init__()
        self.config = config
        c = config["in_channels"]
        mean = [0.0] * c if mean is None else list(mean)
        std = [1.0] * c if std is None else list(std)
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values (one per input channel), got "
                             f"{len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        config["mean"], config["std"] = mean, std
        self.register_buffer("mean", torch.tensor(mean).view(shape))
        self.register_buffer("std", torch.tensor(std).view(shape))

    @property
    def num_layers(self) -> int:
        return len(self.layer_modules())

    def forward(self, x, return_features: bool = False):
        logits, feats, _ = self.forward_trace(x, trace=False)
        return (logits, feats) if return_features else logits


# --------------------------------------------------------------------------- ResNet20
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn_a = BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn_b = BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                       BatchNorm2d(cout))

    def forward(self, h, feats, trace: bool, taps=None):
        fa = self.conv_a(h)
        ba = self.bn_a(fa)
        u = F.relu(ba)
        if taps is not None:
            taps.add(fa, ba, u, ba)
        fb = self.conv_b(u)
        bb = self.bn_b(fb)
        pre = bb + (h if self.short is None else self.short(h))
        out = F.relu(pre)
        if taps is not None:
            taps.add(fb, bb, out, pre)
        feats += [fa, fb]
        return out, ((_on(u), _on(out)) if trace else None)

    def back_a(self, gu, mu, fa, h_hw):
        """Cotangent at u = relu(bn_a(fa)) -> cotangent at the block input (N, C, H, W)."""
        return _conv_t(_gate(gu, mu), self.conv_a, h_hw, self.bn_a.scale(fa))

    def back(self, g, h, fa, fb, masks):
        """Cotangent at the block output -> cotangent at the block input (N, C, H, W)."""
        mu, mo = masks
        g = _gate(g, mo)
        gh = self.back_a(_conv_t(g, self.conv_b, fa.shape[-2:], self.bn_b.scale(fb)), mu, fa,
                         h.shape[-2:])
        if self.short is None:
            return gh + g
        conv, bn = self.short
        fs = conv(h.detach())  # only its batch variance is used, held constant
        return gh + _conv_t(g, conv, h.shape[-2:], bn.scale(fs))


class ResNet20(_Normalized):
    """He et al. (2016) CIFAR ResNet20: 3x3 stem (16 ch), 3 stages x 3 basic blocks at
    16/32/64 channels, stride 2 at the start of stages 2 and 3, 1x1 conv + BN shortcut
    when the shape changes, global average pool, linear. 19 layers in `feats`."""

    def __init__(self, num_classes=10, in_channels=3, mean=None, std=None, width=16):
        super().__init__({"arch": "resnet20", "num_classes": num_classes,
                          "in_channels": in_channels, "width": width},
                         mean, std, (1, in_channels, 1, 1))
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = BatchNorm2d(w)
        blocks, cin = [], w
        for stage, cout in enumerate([w, 2 * w, 4 * w]):
            for i in range(3):
                blocks.append(_Block(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def layer_modules(self):
        return [self.conv1] + [c for b in self.blocks for c in (b.conv_a, b.conv_b)]

    def forward_trace(self, x, trace: bool = True, taps=None):
        """(logits, feats, trace); the trace (inputs and ReLU masks that
        `layer_input_grads` needs) is only recorded when `trace` is true. `taps`
        (see parl_core.features) collects another feature space."""
        f1 = self.conv1((x - self.mean) / self.std)
        pre = self.bn1(f1)
        h = F.relu(pre)
        if taps is not None:
            taps.add(f1, pre, h, pre)
        feats = [f1]
        rec = {"x": x, "ins": [], "masks": [_on(h)]} if trace else None
        for b in self.blocks:
            if trace:
                rec["ins"].append(h)
            h, masks = b(h, feats, trace, taps)
            if trace:
                rec["masks"].append(masks)
        logits = self.fc(h.mean((2, 3)))
        return logits, feats, rec

    def layer_input_grads(self, feats, trace, k: int) -> torch.Tensor:
        """(k, N, C, H, W): g_1..g_k, from the trace of one forward (see module doc).

        Each source layer gets its own chain at batch N. Stacking the chains into one
        larger batch has the same FLOPs but ran ~25 % slower on CPU (cache misses).
        """
        return torch.stack([self._layer_grad(feats, trace, j) for j in range(1, k + 1)])

    def _layer_grad(self, feats, trace, k: int) -> torch.Tensor:
        x, n = trace["x"], trace["x"].shape[0]
        f1 = feats[0]
        if k == 1:  # the stem is linear in x: the same gradient for every example
            ones = f1.new_ones((1,) + f1.shape[1:])
            return self._to_pixels(_conv_t(ones, self.conv1, x.shape[-2:])).expand(n, -1, -1, -1)
        b = (k - 2) // 2  # block holding layer k: its a-conv (k even) or b-conv (k odd)
        blk, h = self.blocks[b], trace["ins"][b]
        fa, fb = feats[1 + 2 * b], feats[2 + 2 * b]
        if k % 2 == 0:
            g = _conv_t(fa.new_ones((1,) + fa.shape[1:]), blk.conv_a, h.shape[-2:])
        else:
            gu = _conv_t(fb.new_ones((1,) + fb.shape[1:]), blk.conv_b, fa.shape[-2:])
            g = blk.back_a(gu, trace["masks"][b + 1][0], fa, h.shape[-2:])
        for bb in range(b - 1, -1, -1):  # back through the earlier blocks
            g = self.blocks[bb].back(g, trace["ins"][bb], feats[1 + 2 * bb], feats[2 + 2 * bb],
                                     trace["masks"][bb + 1])
        g = _conv_t(_gate(g, trace["masks"][0]), self.conv1, x.shape[-2:], self.bn1.scale(f1))
        return self._to_pixels(g)

    def _to_pixels(self, g):
        return g / self.std  # d x_norm / d x = 1/std


# --------------------------------------------------------------------------- SmallCNN
class SmallCNN(_Normalized):
    """A small all-conv network for 8x8 digits: 4 conv layers (3x3; strides 1, 2, 1, 2;
    channels w, 2w, 2w, 4w), each followed by batch norm and ReLU, then global average
    pool and linear. Strided convs instead of pooling keep every layer a plain chain."""

    def __init__(self, num_classes=10, in_channels=1, mean=None, std=None, width=8):
        super().__init__({"arch": "smallcnn", "num_classes": num_classes,
                          "in_channels": in_channels, "width": width},
                         mean, std, (1, in_channels, 1, 1))
        w = width
        chans = [in_channels, w, 2 * w, 2 * w, 4 * w]
        strides = [1, 2, 1, 2]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, strides[i], 1, bias=False)
                                   for i in range(4))
        self.bns = nn.ModuleList(BatchNorm2d(c) for c in chans[1:])
        self.fc = nn.Linear(chans[-1], num_classes)

    def layer_modules(self):
        return list(self.convs)

    def forward_trace(self, x, trace: bool = True, taps=None):
        h = (x - self.mean) / self.std
        feats, ins, masks = [], [], []
        for conv, bn in zip(self.convs, self.bns):
            ins.append(h)
            f = conv(h)
            pre = bn(f)
            h = F.relu(pre)
            if taps is not None:
                taps.add(f, pre, h, pre)
            feats.append(f)
            if trace:
                masks.append(_on(h))
        rec = {"x": x, "ins": ins, "masks": masks} if trace else None
        return self.fc(h.mean((2, 3))), feats, rec

    def layer_input_grads(self, feats, trace, k: int) -> torch.Tensor:
        n = trace["x"].shape[0]
        out = []
        for src in range(k):  # one chain per source layer, as in ResNet20
            ins = trace["ins"]
            g = _conv_t(feats[src].new_ones((1,) + feats[src].shape[1:]), self.convs[src],
                        ins[src].shape[-2:])
            for j in range(src - 1, -1, -1):  # through relu(bn(F_j)) then conv_j^T
                g = _conv_t(_gate(g, trace["masks"][j]), self.convs[j], ins[j].shape[-2:],
                            self.bns[j].scale(feats[j]))
            out.append(g.expand(n, -1, -1, -1))
        return torch.stack(out) / self.std


# --------------------------------------------------------------------------- MLP
class MLP(_Normalized):
    """Fully connected ReLU network for 2-D sets: `depth` hidden layers of `width` units.
    Layer outputs are the hidden pre-activations (the output layer is not counted)."""

    def __init__(self, num_classes=2, in_channels=2, mean=None, std=None, width=32, depth=3):
        if depth < 1 or width < 1:
            raise ValueError(f"mlp needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        super().__init__({"arch": "mlp", "num_classes": num_classes, "in_channels": in_channels,
                          "width": width, "depth": depth}, mean, std, (1, in_channels))
        dims = [in_channels] + [width] * depth
        self.linears = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(depth))
        self.fc = nn.Linear(width, num_classes)

    def layer_modules(self):
        return list(self.linears)

    def forward_trace(self, x, trace: bool = True, taps=None):
        h = (x - self.mean) / self.std
        feats, masks = [], []
        for lin in self.linears:
            f = lin(h)
            h = F.relu(f)
            if taps is not None:
                taps.add(f, f, h, f)
            feats.append(f)
            if trace:
                masks.append(_on(h))
        return self.fc(h), feats, ({"x": x, "masks": masks} if trace else None)

    def layer_input_grads(self, feats, trace, k: int) -> torch.Tensor:
        n = trace["x"].shape[0]
        out = []
        for j in range(k):
            g = self.linears[j].weight.sum(0).expand(n, -1)  # ∇ Σ_f F^j_f wrt its input
            for i in range(j - 1, -1, -1):
                g = (g * trace["masks"][i]) @ self.linears[i].weight
            out.append(g)
        return torch.stack(out) / self.std


# --------------------------------------------------------------------------- factory
def build_model(arch: str, num_classes: int, in_channels: int = 3, *, mean=None, std=None,
                seed: int | None = None, **kwargs) -> nn.Module:
    """Build a model by name.

    arch: "resnet20" | "smallcnn" | "mlp"; in_channels is the input dimension for mlp.
    mean/std: per-channel normalisation stored as buffers (and in the checkpoint).
    seed: when given, the initial weights are drawn from torch.manual_seed(seed).
    kwargs: width (all), depth (mlp).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
    allowed = {"resnet20": {"width"}, "smallcnn": {"width"}, "mlp": {"width", "depth"}}[arch]
    bad = set(kwargs) - allowed
    if bad:
        raise ValueError(f"{arch} does not take {sorted(bad)}; it takes {sorted(allowed)}")
    for k in ("width", "depth"):
        v = kwargs.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{k} must be an int >= 1, got {v!r}")
    cls = {"resnet20": ResNet20, "smallcnn": SmallCNN, "mlp": MLP}[arch]
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(num_classes, in_channels, mean, std, **kwargs)
    return cls(num_classes, in_channels, mean, std, **kwargs)
