"""The Playground's science: small 2-D ensembles trained one epoch at a time, and
everything the page draws, evaluated on a grid over the plane.

    cfg = PlaygroundConfig(dataset="moons", members=3, method="parl")
    sess = PlaygroundSession(cfg)
    sess.step()                       # one epoch, through parl_core.train (resumed)
    frame = sess.frame(grid=60)       # numpy arrays for parl_core.plots.playground
    path = sess.attack_path(i, member=0, eps=0.3)

Choices made here (the paper is about images; the plane makes them visible):
  * An epoch is one call of `pc.train(..., resume=state)` with a constant learning
    rate: the same loop, loss objects and per-epoch seeding as every other training
    run, so a Playground run equals `pc.train(epochs=E)` with the same settings.
  * The "loss gradient" at a grid point is ∇x CE(member(x), ŷ) with ŷ the ensemble's
    majority vote there: the direction in which an attacker pushes that point to make
    a member leave the ensemble's answer. The local alignment is the mean pairwise
    cosine of these M vectors (near 1: an attack on one member transfers).
  * Per-layer alignment is the mean over member pairs and training points of the
    cosine of PARL's layer gradients g_k (all L layers), against its floor −1/(M−1).
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .data import TOY_2D, load_dataset
from .attacks import attack as _pc_attack
from .ensemble import Ensemble
from .gradients import gradient_cosines, input_gradients
from .layergrad import layer_gradients
from .losses import LABELS, METHODS, pairwise_cosines
from .train import build_ensemble, train

__all__ = ["PlaygroundConfig", "PlaygroundSession", "PlaygroundFrame", "playground_methods",
           "plane_grid", "zero_contour", "class_margins", "loss_gradients",
           "mean_pairwise_cosine", "layer_alignment", "transfer_matrix", "ATTACKS_2D"]

ATTACKS_2D = ("fgsm", "pgd")
MAX_EPOCHS = 2000  # a forgotten Play tab stops here


def playground_methods() -> list[str]:
    """Registered training methods, ENS_U and PARL first, then the baselines."""
    first = [m for m in LABELS if m in METHODS]
    return first + sorted(m for m in METHODS if m not in first)


@dataclass(frozen=True)
class PlaygroundConfig:
    """Everything that defines a Playground run (the page keeps it in the URL)."""
    dataset: str = "moons"      # one of TOY_2D
    n_samples: int = 500        # training points (the test split has as many)
    noise: float | None = None  # None: the dataset's default noise
    members: int = 3            # 2..5
    method: str = "parl"        # a registered method (playground_methods())
    gamma2: float = 0.5         # regulariser weight, for methods that take `gamma2`
    layers: int | None = None   # PARL's K (None: min(7, depth))
    width: int = 32             # hidden units per layer
    depth: int = 3              # hidden layers (= L, the layers PARL can use)
    seed: int = 0               # data, initialisation and shuffling
    lr: float = 0.01            # Adam, constant (the paper's 1e-3 is slow to watch)
    batch_size: int = 64

    def __post_init__(self):
        _check(self.dataset in TOY_2D, "dataset", f"one of {TOY_2D}", self.dataset)
        _check_int(self.n_samples, "n_samples", 20, 5000)
        _check(self.noise is None or 0 <= self.noise <= 5, "noise", "None or in [0, 5]", self.noise)
        _check_int(self.members, "members", 2, 5)
        methods = playground_methods()
        _check(self.method in methods, "method", f"one of {methods}", self.method)
        _check(0 <= self.gamma2 <= 100, "gamma2", "a float in [0, 100]", self.gamma2)
        _check_int(self.width, "width", 1, 256)
        _check_int(self.depth, "depth", 1, 8)
        _check(self.layers is None or (isinstance(self.layers, int) and 1 <= self.layers <= self.depth),
               "layers", f"None or an int in 1..depth={self.depth}", self.layers)
        _check_int(self.seed, "seed", 0, 2**31 - 1)
        _check(0 < self.lr <= 1, "lr", "a float in (0, 1]", self.lr)
        _check_int(self.batch_size, "batch_size", 2, 5000)

    def method_params(self) -> dict:
        """The method's hyperparameters set here (those its constructor takes): `gamma2`
        is the weight of the diversity term, PARL's γ2 and GAL's λ; `layers` is PARL's K.
        Other methods keep their defaults."""
        takes = inspect.signature(METHODS[self.method].__init__).parameters
        mine = {"gamma2": self.gamma2, "lam": self.gamma2, "layers": self.layers}
        return {k: v for k, v in mine.items() if k in takes}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PlaygroundConfig":
        """From a dict, ignoring unknown keys (values are validated)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check(ok, name, expected, got):
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {got!r}")


def _check_int(v, name, lo, hi):
    _check(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, name,
           f"an int in {lo}..{hi}", v)


# --------------------------------------------------------------------------- grid maths
def plane_grid(bounds, n: int):
    """xs (n,), ys (n,) and the (n*n, 2) points, row-major in y (row i is ys[i])."""
    x0, x1, y0, y1 = bounds
    xs = np.linspace(x0, x1, n, dtype=np.float32)
    ys = np.linspace(y0, y1, n, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    return xs, ys, torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))


def class_margins(scores: torch.Tensor) -> torch.Tensor:
    """(N, C) scores -> (C', N) margins s_c − max_{c'≠c} s_c' (> 0 where c wins).
    With two classes one margin says everything, so C' = 1 (class 1's)."""
    n, c = scores.shape
    if c == 2:
        return (scores[:, 1] - scores[:, 0])[None]
    top2 = scores.topk(2, dim=1).values  # (N, 2)
    other = torch.where(scores == top2[:, :1], top2[:, 1:], top2[:, :1])  # max over c' != c
    return (scores - other).T


def zero_contour(xs: np.ndarray, ys: np.ndarray, f: np.ndarray):
    """Marching squares: the zero level of f (ny, nx) sampled at (xs, ys), as two
    arrays (px, py) of segment ends with NaN between segments (one plotly line)."""
    f = np.asarray(f, dtype=np.float64)
    a, b, c, d = f[:-1, :-1], f[:-1, 1:], f[1:, 1:], f[1:, :-1]  # corners: bl, br, tr, tl
    x0, x1 = xs[None, :-1], xs[None, 1:]
    y0, y1 = ys[:-1, None], ys[1:, None]
    edges = [(a, b, x0, y0, x1, y0), (b, c, x1, y0, x1, y1),  # bottom, right,
             (d, c, x0, y1, x1, y1), (a, d, x0, y0, x0, y1)]  # top, left
    cross, px, py = [], [], []
    for p, q, xa, ya, xb, yb in edges:
        hit = (p > 0) != (q > 0)
        t = np.where(hit, p / np.where(hit, p - q, 1.0), 0.0)
        cross.append(hit)
        px.append(np.broadcast_to(xa + t * (xb - xa), hit.shape))
        py.append(np.broadcast_to(ya + t * (yb - ya), hit.shape))
    cross, px, py = np.stack(cross), np.stack(px), np.stack(py)  # (4, ny-1, nx-1)
    count = cross.sum(0)
    pairs = []
    two = count == 2
    first = np.argmax(cross, 0)
    second = 3 - np.argmax(cross[::-1], 0)
    pairs.append((first[two], second[two], np.nonzero(two)))
    # A saddle (4 crossings): the cell centre decides which corners are cut off.
    sad = np.nonzero(count == 4)
    centre_like_a = ((a + b + c + d)[sad] > 0) == (a[sad] > 0)
    for (e1, e2), (g1, g2) in (((0, 1), (0, 3)), ((2, 3), (1, 2))):
        pairs.append((np.where(centre_like_a, e1, g1), np.where(centre_like_a, e2, g2), sad))
    sx, sy = [], []
    for e1, e2, (r, col) in pairs:
        seg_x = np.stack([px[e1, r, col], px[e2, r, col], np.full(len(r), np.nan)], 1)
        seg_y = np.stack([py[e1, r, col], py[e2, r, col], np.full(len(r), np.nan)], 1)
        sx.append(seg_x.ravel())
        sy.append(seg_y.ravel())
    return np.concatenate(sx), np.concatenate(sy)


def boundary_lines(xs, ys, scores: torch.Tensor):
    """The decision boundary of (n*n, C) scores on the grid: (px, py) with NaN breaks."""
    n = len(xs)
    parts = [zero_contour(xs, ys, m.reshape(n, n).numpy()) for m in class_margins(scores)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def loss_gradients(models, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, N, 2): ∇x CE(model_i(x), y) for every model, per example (pc.input_gradients)."""
    return input_gradients(models, x, y)


def mean_pairwise_cosine(vecs: torch.Tensor) -> torch.Tensor:
    """(M, N, D) -> (N,): mean over member pairs i<j of cos(v_i, v_j); zero vectors give 0."""
    cos = gradient_cosines(vecs).float()  # (N, M, M)
    m = vecs.shape[0]
    iu = torch.triu_indices(m, m, 1)
    return cos[:, iu[0], iu[1]].mean(-1)


@torch.no_grad()
def layer_alignment(ens: Ensemble, x: torch.Tensor) -> np.ndarray:
    """(L,): per layer k, the mean over member pairs and points of cos(g^k_i, g^k_j)."""
    L = min(m.num_layers for m in ens.members)
    grads = torch.stack([layer_gradients(m, x, L) for m in ens.members])  # (M, L, N, 2)
    cos = pairwise_cosines(grads)  # (M, M, L, N)
    m = len(ens.members)
    iu = torch.triu_indices(m, m, 1)
    return cos[iu[0], iu[1]].mean((0, 2)).numpy()


def _vote_scores(member_logits: torch.Tensor) -> torch.Tensor:
    """(M, N, C) -> (N, C) the scores whose argmax is `Ensemble.vote` (votes, then mean p)."""
    c = member_logits.shape[-1]
    votes = F.one_hot(member_logits.argmax(-1), c).sum(0).float()
    return 2.0 * votes + F.softmax(member_logits.float(), -1).mean(0)


def _attack(name, model, x, y, eps, steps, seed):
    """(x_adv, path (steps+1, N, 2)) from the project's one attack loop, pc.attack."""
    return _pc_attack(name, model, x, y, eps, steps=steps, seed=seed, bounds=None, return_path=True)


@torch.no_grad()
def transfer_matrix(ens: Ensemble, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                    eps: float = 0.3, steps: int = 10, seed: int = 0) -> dict:
    """Attacks crafted on each member, scored on every member and on the vote.

    Returns {"rates": (M, M) fraction of the points member j classifies correctly that
    the attack crafted on member i makes it misclassify (the diagonal is the white-box
    success), "vote": (M,) the same for the ensemble's vote, "transfer": mean of the
    off-diagonal rates}.
    """
    m = len(ens.members)
    was = ens.training
    ens.eval()
    clean = ens.member_logits(x).argmax(-1) == y  # (M, N)
    clean_vote = ens.predict(x) == y
    rates, vote = np.zeros((m, m)), np.zeros(m)
    for i, member in enumerate(ens.members):
        with torch.enable_grad():
            x_adv, _ = _attack(attack, member, x, y, eps, steps, seed)
        wrong = ens.member_logits(x_adv).argmax(-1) != y  # (M, N)
        rates[i] = ((wrong & clean).sum(1).float() / clean.sum(1).clamp(min=1)).numpy()
        fooled = (ens.predict(x_adv) != y) & clean_vote
        vote[i] = fooled.sum().item() / max(1, clean_vote.sum().item())
    ens.train(was)
    off = rates[~np.eye(m, dtype=bool)]
    return {"rates": rates, "vote": vote, "transfer": float(off.mean())}


# --------------------------------------------------------------------------- the session
@contextmanager
def one_thread():
    """Run torch on one CPU thread inside the block. The Playground's tensors are tiny:
    a second intra-op thread only adds synchronisation, and on a busy machine it made a
    grid gradient 10-40x slower (bench/bench_playground.py measures it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class PlaygroundFrame:
    """Everything one redraw of the Playground shows, as numpy arrays."""
    xs: np.ndarray              # (n,) grid x coordinates
    ys: np.ndarray              # (n,) grid y coordinates
    member_probs: np.ndarray    # (M, n, n, C) softmax of every member, row i at ys[i]
    vote: np.ndarray            # (n, n) the ensemble's majority vote
    vote_probs: np.ndarray      # (n, n, C) mean of the members' softmax
    boundaries: list            # M x (px, py): each member's boundary, NaN between segments
    vote_boundary: tuple        # (px, py) of the vote's regions
    arrow_points: np.ndarray    # (A, 2) coarse grid
    arrow_grads: np.ndarray     # (M, A, 2) ∇x CE(member, vote label) at those points
    alignment: np.ndarray       # (n, n) mean pairwise cosine of the members' loss gradients
    layer_cos: np.ndarray       # (L,) mean pairwise layer-gradient cosine per layer
    floor: float                # −1/(M−1), the least a mean pairwise cosine can be
    train_x: np.ndarray         # (N, 2)
    train_y: np.ndarray         # (N,)
    num_classes: int
    epoch: int
    method: str
    history: list


class PlaygroundSession:
    """A Playground run: data, ensemble and optimiser state, trained epoch by epoch."""

    def __init__(self, config: PlaygroundConfig | None = None):
        self.config = c = config or PlaygroundConfig()
        kw = dict(n_samples=c.n_samples, noise=c.noise, seed=c.seed)
        self.train_ds = load_dataset(c.dataset, "train", **kw)
        self.test_ds = load_dataset(c.dataset, "test", **kw)
        self.ens = build_ensemble("mlp", c.members, self.train_ds, seed=c.seed,
                                  width=c.width, depth=c.depth)
        self.history: list[dict] = []
        self._state = None  # pc.train's resume state after the last epoch
        lo, hi = self.train_ds.images.min(0).values, self.train_ds.images.max(0).values
        pad = 0.1 * (hi - lo)
        self.bounds = (float(lo[0] - pad[0]), float(hi[0] + pad[0]),
                       float(lo[1] - pad[1]), float(hi[1] + pad[1]))

    @property
    def epoch(self) -> int:
        return len(self.history)

    def step(self, epochs: int = 1) -> list[dict]:
        """Train `epochs` more epochs; returns their history records."""
        _check_int(epochs, "epochs", 1, MAX_EPOCHS)
        c = self.config
        # CPU on purpose: for a 32-unit MLP, kernel launches would dominate on a GPU.
        with one_thread():
            hist = train(self.ens, self.train_ds, self.test_ds, method=c.method,
                         epochs=self.epoch + epochs, batch_size=c.batch_size, lr=c.lr,
                         schedule="constant", seed=c.seed, device="cpu", probe_size=256,
                         eval_size=None, resume=self._state, **c.method_params())
        self._state = hist.state
        new = list(hist[self.epoch:])
        self.history = list(hist)
        return new

    def frame(self, grid: int = 60, arrows: int = 15) -> PlaygroundFrame:
        """Evaluate every view on an n x n grid (`grid`) and an arrows x arrows grid."""
        _check_int(grid, "grid", 4, 400)
        _check_int(arrows, "arrows", 2, 60)
        with one_thread(), torch.no_grad():
            return self._frame(grid, arrows)

    def _frame(self, grid, arrows):
        ens, m = self.ens, len(self.ens.members)
        ens.eval()
        xs, ys, pts = plane_grid(self.bounds, grid)
        logits = ens.member_logits(pts)  # (M, G, C)
        scores = _vote_scores(logits)
        vote = scores.argmax(-1)
        grads = loss_gradients(ens, pts, vote)  # (M, G, 2)
        x0, x1, y0, y1 = self.bounds
        dx, dy = (x1 - x0) / (2 * arrows), (y1 - y0) / (2 * arrows)  # arrows at cell centres
        _, _, apts = plane_grid((x0 + dx, x1 - dx, y0 + dy, y1 - dy), arrows)
        agrads = loss_gradients(ens, apts, ens.predict(apts))
        probs = F.softmax(logits, -1)
        c = logits.shape[-1]
        return PlaygroundFrame(
            xs=xs, ys=ys, member_probs=probs.reshape(m, grid, grid, c).numpy(),
            vote=vote.reshape(grid, grid).numpy(),
            vote_probs=probs.mean(0).reshape(grid, grid, c).numpy(),
            boundaries=[boundary_lines(xs, ys, lg) for lg in logits],
            vote_boundary=boundary_lines(xs, ys, scores),
            arrow_points=apts.numpy(), arrow_grads=agrads.numpy(),
            alignment=mean_pairwise_cosine(grads).reshape(grid, grid).numpy(),
            layer_cos=layer_alignment(ens, self.train_ds.images), floor=-1.0 / (m - 1),
            train_x=self.train_ds.images.numpy(), train_y=self.train_ds.labels.numpy(),
            num_classes=c, epoch=self.epoch, method=self.config.method,
            history=[dict(r) for r in self.history])

    def attack_path(self, point, *, label: int | None = None, member: int = 0,
                    attack: str = "pgd", eps: float = 0.3, steps: int = 10, seed: int = 0) -> dict:
        """The attack on one point crafted on `member`, judged by every member.

        point: a training-set index (its label is used) or an (x, y) pair with `label`.
        Returns {"path": (S+1, 2), "label", "member", "start_pred" (M,), "end_pred" (M,),
        "crossed" (M,) bool (the member's answer at the end differs from the label and
        was right at the start: the path crossed its boundary), "vote_start", "vote_end",
        "attack", "eps"}. `playground_live.attack_verdicts` names each answer.
        """
        x, y = self._point(point, label)
        m = len(self.ens.members)
        _check_int(member, "member", 0, m - 1)
        _check(attack in ATTACKS_2D, "attack", f"one of {ATTACKS_2D}", attack)
        _check(isinstance(eps, (int, float)) and eps > 0, "eps", "a number > 0", eps)
        _check_int(steps, "steps", 1, 1000)
        steps = 1 if attack == "fgsm" else steps
        self.ens.eval()
        with one_thread():
            _, path = _attack(attack, self.ens.members[member], x, y, float(eps), steps, seed)
        with torch.no_grad():
            start = self.ens.member_logits(x).argmax(-1)[:, 0]
            end_x = path[-1]
            end = self.ens.member_logits(end_x).argmax(-1)[:, 0]
            vote_start, vote_end = int(self.ens.predict(x)[0]), int(self.ens.predict(end_x)[0])
        yv = int(y[0])
        # PGD's path starts at its random start: draw it from the clean point.
        path = torch.cat([x[None], path]) if attack == "pgd" else path
        return {"path": path[:, 0].detach().numpy(), "label": yv, "member": member,
                "start_pred": start.numpy(), "end_pred": end.numpy(),
                "crossed": ((start == yv) & (end != yv)).numpy(), "vote_start": vote_start, "vote_end": vote_end,
                "attack": attack, "eps": float(eps)}

    def _point(self, point, label):
        if isinstance(point, (int, np.integer)) and not isinstance(point, bool):
            _check(0 <= point < len(self.train_ds), "point", f"an index in 0..{len(self.train_ds) - 1}",
                   point)
            return self.train_ds.images[point:point + 1], self.train_ds.labels[point:point + 1]
        _check(len(point) == 2 and label is not None, "point",
               "a training index, or an (x, y) pair with label=", point)
        _check(isinstance(label, (int, np.integer)) and 0 <= label < self.train_ds.num_classes,
               "label", f"an int in 0..{self.train_ds.num_classes - 1}", label)
        return (torch.tensor([[float(point[0]), float(point[1])]]),
                torch.tensor([int(label)]))

    def transfer(self, *, attack: str = "pgd", eps: float = 0.3, steps: int = 10,
                 seed: int = 0) -> dict:
        """`transfer_matrix` on the test split."""
        with one_thread():
            return transfer_matrix(self.ens, self.test_ds.images, self.test_ds.labels,
                                   attack=attack, eps=eps, steps=steps, seed=seed)
