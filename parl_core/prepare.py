"""`python -m parl_core prepare CKPT...`: compute, ahead of a lecture, every result the
dashboard's analysis pages open on, and store it beside the checkpoints, so each page
shows its figure on first paint instead of a "Compute" button.

For each checkpoint, at the settings the pages open with (DEFAULTS, ANALYSIS_N and
`evaluation_defaults`; tests/test_prepare.py checks they match the pages):

  cka        layer-wise CKA of every member pair (Diversity, Lesson, Checkpoints):
             the first min(450, N) test images of the evaluation order, the unbiased
             minibatch estimator with batches of 128
  cosdist    the members' loss-gradient cosines over the same images (Gradients, Lesson)
  layercos   per layer, the members' mean pairwise layer-gradient cosine over the same
             images with F^k read before batch norm, PARL's default (Gradients, "What R
             measures"); skipped for a single-member checkpoint (no pair)
  eval       black-box robustness from the surrogate the Robustness page picks by default
             (a checkpoint of the same dataset whose name contains "surrogate", else the
             first other one by name), crafted once for every target that shares it;
             white-box too with --white-box
  transfer   the member-to-member transfer matrix (Robustness): the first attack, the
             largest ε, min(n, 200) examples

Results go where the pages look: `<folder>/.cache/` in the format of
parl_core.stored_results (cka, cosdist, layercos, transfer) and parl_core.checkpoint_eval (eval).
A result already there is not computed again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .progress import Progress, format_seconds

__all__ = ["prepare", "evaluation_defaults", "default_surrogate", "analysis_settings",
           "WHAT", "ANALYSIS_N", "DEFAULTS"]

WHAT = ("cka", "cosdist", "layercos", "eval", "transfer")
ANALYSIS_N = 450  # test images for CKA and the cosine distributions (capped by the test set)
# feature: the Gradients page's default reading of F^k in "What R measures" (PARL's own)
DEFAULTS = {"cka_batch": 128, "estimator": "minibatch", "layer": None, "transfer_n": 200,
            "feature": "pre_bn"}
# The Robustness page's opening settings (dashboard/robust.py): CIFAR's are those of the
# shipped results; elsewhere a few seconds on a CPU, the paper's attacks on a GPU.
EVAL_BY_DATASET = {"cifar10": {"attacks": ["fgsm", "bim", "mim", "pgd"], "steps": 20, "restarts": 1, "n": 1000},
                   "cifar100": {"attacks": ["fgsm", "bim", "mim", "pgd"], "steps": 20, "restarts": 1, "n": 1000}}
EVAL_CPU = {"attacks": ["fgsm", "pgd"], "steps": 10, "restarts": 1, "n": 200}
EVAL_GPU = {"attacks": ["fgsm", "bim", "mim", "pgd"], "steps": 50, "restarts": 1, "n": 1000}


def evaluation_defaults(dataset: str, n_test: int, on_cpu: bool) -> dict:
    """The Robustness page's opening evaluation for a dataset: attacks, steps, restarts,
    n (capped by the test-set size) and the dataset's ε grid."""
    from .data import default_eps_grid
    d = dict(EVAL_BY_DATASET.get(dataset) or (EVAL_CPU if on_cpu else EVAL_GPU))
    return {**d, "attacks": list(d["attacks"]), "n": min(int(d["n"]), int(n_test)),
            "eps": [float(e) for e in default_eps_grid(dataset)]}


def analysis_settings(dataset: str, n_test: int) -> dict:
    """The store-key settings of the Diversity and Gradients pages' opening views:
    {"cka": [dataset, n, batch, estimator], "cosdist": [dataset, n, layer],
    "layercos": [dataset, n, feature]}."""
    n = min(ANALYSIS_N, int(n_test))
    return {"cka": [dataset, n, DEFAULTS["cka_batch"], DEFAULTS["estimator"]],
            "cosdist": [dataset, n, DEFAULTS["layer"]],
            "layercos": [dataset, n, DEFAULTS["feature"]]}


def default_surrogate(path, folder=None) -> Path | None:
    """The surrogate the Robustness page picks for `path`: among the other checkpoints of
    its dataset in `folder` (default: its own), by file name, the first whose name contains
    "surrogate", else the first; None when it is alone."""
    from .checkpoints import list_checkpoints, read_metadata
    path = Path(path)
    dataset = read_metadata(path).get("dataset")
    others = []
    for p in list_checkpoints(folder or path.parent):
        if p.resolve() == path.resolve():
            continue
        try:
            if read_metadata(p).get("dataset") == dataset:
                others.append(p)
        except (OSError, ValueError):
            continue  # a broken file is not a candidate (the pages skip it too)
    return next((p for p in others if "surrogate" in p.stem), others[0] if others else None)


@dataclass
class Prepared:
    """One line of the report: what was asked for a checkpoint and what happened."""
    checkpoint: str
    what: str
    status: str          # "computed" | "already there" | "skipped"
    detail: str = ""
    seconds: float = 0.0


def _images(dataset: str, n: int, data_root):
    from .data import evaluation_subset, load_dataset
    return evaluation_subset(load_dataset(dataset, "test", data_root), n)


def _fingerprint(ds) -> str:
    """sha256 of the images and labels, as the dashboard computes it (dashboard/compute.py)."""
    import hashlib
    h = hashlib.sha256(ds.images.numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
    return h.hexdigest()[:20]


def _check_paths(paths) -> list[Path]:
    from .checkpoints import read_metadata
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ValueError("checkpoints: give at least one checkpoint file")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {p}: no such file")
        read_metadata(p)  # a file that is not a valid checkpoint fails here, naming itself
    return paths


def _analysis(path: Path, what: str, data_root, device, report, progress) -> None:
    """CKA, cosdist, layercos or transfer of one checkpoint, unless stored already."""
    from .checkpoints import file_hash, load_checkpoint, read_metadata
    from .data import load_dataset
    from .stored_results import load_result, save_result
    meta = read_metadata(path)
    dataset = meta["dataset"]
    n_test = len(load_dataset(dataset, "test", data_root))
    if what == "transfer":
        ev = evaluation_defaults(dataset, n_test, device.type == "cpu")
        n = min(ev["n"], DEFAULTS["transfer_n"])
        settings = [dataset, n, ev["attacks"][0], ev["eps"][-1], int(ev["steps"])]
    else:
        settings = analysis_settings(dataset, n_test)[what]
        n = settings[1]
    ds = _images(dataset, n, data_root)
    sha, fp = file_hash(path), _fingerprint(ds)
    if load_result(what, path, sha, fp, settings) is not None:
        report.append(Prepared(path.stem, what, "already there"))
        return
    t0 = time.perf_counter()
    ens = load_checkpoint(path, device=device)[0]
    if what == "layercos" and len(ens.members) < 2:
        report.append(Prepared(path.stem, what, "skipped", "a single member has no pair, so no pairwise cosine"))
        progress.note(f"{path.stem}: {what} skipped ({report[-1].detail})")
        return
    if what == "cka":
        from .cka import ensemble_cka
        value = ensemble_cka(ens, ds.images, batch_size=settings[2], estimator=settings[3])
    elif what == "cosdist":
        from .gradients import cosine_distribution
        value = cosine_distribution(ens, ds.images, ds.labels, layer=settings[2])
    elif what == "layercos":
        from .stored_results import layercos_value
        value = layercos_value(ens, ds.images, settings[2])
    else:
        from .evaluate import transferability_matrix
        value = transferability_matrix(ens, ds.images, ds.labels, attack=settings[2], eps=settings[3],
                                       steps=settings[4])
    file = save_result(what, path, sha, fp, settings, value)
    dt = time.perf_counter() - t0
    if file is None:
        report.append(Prepared(path.stem, what, "skipped", f"{path.parent} is not writable", dt))
    else:
        report.append(Prepared(path.stem, what, "computed", f"{n} images -> {file.name}", dt))
    progress.note(f"{path.stem}: {what} {report[-1].status} in {format_seconds(dt)} ({report[-1].detail})")


def _evaluations(paths, surrogate, white_box, data_root, device, report, progress, quiet) -> None:
    """Black-box evaluations grouped by surrogate (crafted once per group), then white-box."""
    from .checkpoint_eval import cached_evaluation, evaluate_checkpoints
    from .checkpoints import read_metadata
    from .data import load_dataset
    groups: dict = {}
    for p in paths:
        sur = default_surrogate(p) if surrogate == "auto" else (Path(surrogate) if surrogate else None)
        if sur is not None and sur.resolve() == p.resolve():
            sur = None
        modes = ([sur] if sur is not None else []) + ([None] if white_box else [])
        if sur is None and not white_box:
            report.append(Prepared(p.stem, "eval", "skipped",
                                   "no other checkpoint of its dataset to act as the black-box surrogate"))
        for s in modes:
            groups.setdefault((str(s) if s else None, read_metadata(p)["dataset"]), []).append(p)
    for (sur, dataset), group in groups.items():
        ev = evaluation_defaults(dataset, len(load_dataset(dataset, "test", data_root)),
                                 device.type == "cpu")
        kw = dict(n_examples=ev["n"], seed=0, attacks=ev["attacks"], eps=ev["eps"], steps=ev["steps"],
                  restarts=ev["restarts"], surrogate=sur, data_root=data_root)
        mode = f"black-box from {Path(sur).stem}" if sur else "white-box"
        todo = [p for p in group if cached_evaluation(str(p), **kw) is None]
        for p in group:
            if p not in todo:
                report.append(Prepared(p.stem, "eval", "already there", mode))
        if not todo:
            continue
        bar = Progress(f"eval {mode}: {', '.join(p.stem for p in todo)}", unit="step", quiet=quiet)

        def tick(e, bar=bar):
            if e.get("total"):
                bar.update_to(int(e.get("done", 0)), attack=(e.get("attack") or "").upper())
        t0 = time.perf_counter()
        evaluate_checkpoints([str(p) for p in todo], on_progress=tick, device=device, **kw)
        bar.close()
        dt = time.perf_counter() - t0
        detail = (f"{mode}, {'/'.join(a.upper() for a in ev['attacks'])}, {len(ev['eps'])} ε, "
                  f"{ev['steps']} steps, {ev['n']} images")
        for p in todo:
            report.append(Prepared(p.stem, "eval", "computed", detail, dt))
        progress.note(f"{', '.join(p.stem for p in todo)}: eval computed in {format_seconds(dt)} ({detail})")


def prepare(paths, *, what=WHAT, surrogate="auto", white_box: bool = False, data_root=None,
            device=None, quiet: bool = False, file=None) -> list[Prepared]:
    """Compute and store the dashboard's opening results for every checkpoint in `paths`.

    what: a subset of WHAT. surrogate: "auto" (the Robustness page's default for each
    checkpoint), a checkpoint path, or None (no black-box evaluation). white_box: also the
    white-box evaluation. Progress goes to `file` (stderr by default). Returns one
    `Prepared` line per checkpoint and result."""
    import torch

    from .train import default_device
    paths = _check_paths(paths)
    what = [what] if isinstance(what, str) else list(what)
    bad = [w for w in what if w not in WHAT]
    if bad or not what:
        raise ValueError(f"what must be a non-empty subset of {WHAT}, got {what!r}")
    if surrogate not in ("auto", None):
        surrogate = _check_paths([surrogate])[0]
    device = torch.device(device) if device is not None else default_device()
    progress = Progress("prepare", quiet=quiet, file=file)
    report: list[Prepared] = []
    analyses = [w for w in what if w != "eval"]
    total = len(paths) * len(analyses)
    if total:
        progress.start(total)
    for i, p in enumerate(paths):
        for j, w in enumerate(analyses):
            _analysis(p, w, data_root, device, report, progress)
            progress.update_to(i * len(analyses) + j + 1, last=f"{p.stem} {w}")
    progress.close()
    if "eval" in what:
        _evaluations(paths, surrogate, white_box, data_root, device, report, progress, quiet)
    return report


# --------------------------------------------------------------------------- command line
def add_prepare_command(sub, common) -> None:
    p = sub.add_parser(
        "prepare", parents=[common], help="compute the dashboard's results ahead of time",
        description="Compute, for each checkpoint, the results the dashboard's analysis pages "
                    "open on (layer-wise CKA, gradient-cosine distributions, per-layer layer-gradient "
                    "cosines, black-box robustness from the default surrogate, the member transfer "
                    "matrix) at the pages' default settings, and store them beside the checkpoint "
                    "(its folder's .cache/), so "
                    "every page shows its figure at once. Results already there are kept.")
    p.add_argument("checkpoint", nargs="+", help="checkpoint file(s)")
    p.add_argument("--only", default=",".join(WHAT),
                   help=f"comma-separated subset of {','.join(WHAT)} (default: all)")
    p.add_argument("--surrogate", default="auto", metavar="CKPT",
                   help="black-box surrogate: 'auto' (the Robustness page's default: a checkpoint "
                        "of the same dataset named *surrogate*), a checkpoint, or 'none'")
    p.add_argument("--white-box", action="store_true", help="also the white-box evaluation")
    p.add_argument("--data-root", default=None, help="folder holding the CIFAR folders "
                   "(default: $PARL_DATA, else ./data; CIFAR-10 falls back on the embedded sample)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    import os
    import sys
    what = [w.strip() for w in args.only.split(",") if w.strip()]
    surrogate = None if str(args.surrogate).lower() == "none" else args.surrogate
    root = args.data_root or os.environ.get("PARL_DATA") or None
    report = prepare(args.checkpoint, what=what, surrogate=surrogate, white_box=args.white_box,
                     data_root=root, device=args.device, quiet=args.quiet)
    for r in report:
        print(f"{r.checkpoint:<28} {r.what:<9} {r.status:<14} {r.detail}", file=sys.stdout)
    return 0
