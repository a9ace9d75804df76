"""Views shared by the Gradients, Diversity and Lesson pages: ENS_U and PARL side by side
(one example's gradient maps in two rows on one colour scale; CKA heatmaps next to each
other on one scale), with captions computed from what they show (dashboard/findings.py).

Streamlit app layer: the figures come from parl_core.plots, the numbers from the caches
in dashboard/compute.py.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

import parl_core as pc
import parl_core.plots as pp
from parl_core.plots.analysis import ESTIMATOR_TEXT
from parl_core.plots.gradient_rows import gradient_rows_figure

from . import cache, compute, findings, findings_r, ui


def ckpt_label(name: str) -> str:
    """'ENS_U (cifar10_ens_u)'."""
    return f"{pc.method_label(cache.metadata(cache.checkpoints()[name])['method'])} ({name})"


def method_of(name: str) -> str:
    return cache.metadata(cache.checkpoints()[name])["method"]


def parl_layers(names) -> int | None:
    """The K of the first PARL checkpoint among `names` (what its regulariser covered)."""
    for n in names:
        meta = cache.metadata(cache.checkpoints()[n])
        if meta.get("method") == "parl":
            k = (meta.get("params") or {}).get("layers")
            return int(k) if k else None
    return None


def member_labels(options) -> dict:
    """{"ckpt:i": "ENS_U M1"} for member options; the checkpoint's name instead of its method
    where two of the checkpoints share a method."""
    ckpts = list(dict.fromkeys(o.rsplit(":", 1)[0] for o in options))
    method = {c: pc.method_label(method_of(c)) for c in ckpts}
    clash = {m for m in method.values() if list(method.values()).count(m) > 1}
    return {o: f"{method[c] if method[c] not in clash else c} M{int(i) + 1}"
            for o in options for c, i in [o.rsplit(":", 1)]}


def members_of(name: str) -> list[str]:
    return [f"{name}:{i}" for i in range(cache.metadata(cache.checkpoints()[name])["members"])]


def example_gradients(options, dataset: str, example: int, layer: int | None) -> dict:
    """Gradients, cosines and predictions of the member options ("ckpt:i") at one test
    example (cached), plus {"labels": {option: label}}."""
    paths = cache.checkpoints()
    refs = tuple((compute.ref(paths[o.rsplit(":", 1)[0]]), int(o.rsplit(":", 1)[1])) for o in options)
    res = dict(compute.example_gradients(refs, dataset, example, layer))
    res["labels"] = member_labels(options)
    res["options"], res["index"] = list(options), int(example)
    return res


def layer_one_note(layer: int | None) -> None:
    """Layer 1's PARL gradient does not depend on the input: say so where it is shown."""
    if layer == 1:
        st.info("Under PARL's definition (the layer's outputs before batch norm, summed), layer 1's "
                "output is a linear function of the pixels, so its gradient is **the same for every "
                "input**: these maps are the members' first-layer filters summed over positions, and "
                "each member pair has one cosine for all examples.", icon=":material/info:")


def gradient_rows(rows: list[str], res: dict, test, *, layer: int | None, key: str, prov=None) -> None:
    """One example's gradient in every member of each checkpoint in `rows` (one row each,
    one colour scale), its caption and the mean angle within each row."""
    words = findings.gradient_words(layer)
    idx = {o: k for k, o in enumerate(res["options"])}
    fig_rows = {}
    for name in rows:
        opts = members_of(name)
        label = pc.method_label(method_of(name)) if len(rows) == len({method_of(r) for r in rows}) else name
        fig_rows[label] = (res["grads"][[idx[o] for o in opts]], [f"M{int(o.rsplit(':', 1)[1]) + 1}"
                                                                  for o in opts])
    if test.is_image:
        fig = gradient_rows_figure(res["x"], fig_rows, input_label=f"input: {test.classes[res['y']]}",
                                   value_label=words["bar"],
                                   title=f"Input gradients ({words['short']}), one row per ensemble")
        ui.show_figure(fig, f"The input (true class {test.classes[res['y']]}) and the {words['what']} of "
                       f"every member of {findings._fmt_list([ckpt_label(r) for r in rows])}, one colour scale "
                       f"for all maps ({words['sign']}). Maps that look alike within a row mean an attack "
                       "on one member also works on the others.", key=key, prov=prov,
                       title=f"gradient_rows_example{res.get('index', '')}")
    else:
        st.info("2-D data: gradient maps need images; the angles below still apply (see the Playground).")
    groups = {ckpt_label(r): [idx[o] for o in members_of(r)] for r in rows}
    text = findings.angle_finding(res["cos"], groups, {ckpt_label(r): method_of(r) for r in rows})
    if text:
        st.markdown(text.replace("the chosen members'", "the members'"))


def distribution_view(have: dict, dataset: str, n: int, layer: int | None, *, key: str, prov=None) -> None:
    """Cosine distributions over the test set of each checkpoint in `have` ({name: result}):
    a histogram, except for distributions that are one spike per pair (said in words), and
    the computed finding."""
    words = findings.gradient_words(layer)
    dists = {ckpt_label(nm): v for nm, v in have.items()}
    methods = {ckpt_label(nm): method_of(nm) for nm in have}
    spikes = {lab: findings.constant_pairs(d) for lab, d in dists.items()}
    for lab, values in spikes.items():
        if values is not None:
            st.markdown(findings.constant_text(lab, dists[lab], values))
    spread = {lab: d for lab, d in dists.items() if spikes[lab] is None}
    if spread:
        ui.show_figure(pp.cosine_histogram_figure(spread, title=words["title"]),
                       f"How aligned the members' gradients ({words['what']}) are, example by example, for "
                       "every member pair: 1 = the same direction, 0 = perpendicular, −1 = opposite. "
                       + ("" if len(spread) == len(dists) else
                          "Distributions that are a single value per pair are stated above, not drawn. ")
                       + f"Test images: {compute.data_caption(dataset, n)}.", key=key, prov=prov,
                       title="cosine_distribution")
    st.markdown(findings.cosine_finding(dists, methods, layer, parl_layers(list(have))))


# --------------------------------------------------------------------------- CKA
def pair_options(results: dict) -> list[str]:
    """"mean" and the member pairs (1-based, "1-2") every result has."""
    common = None
    for r in results.values():
        keys = [f"{i + 1}-{j + 1}" for i, j in r["pairs"]]
        common = keys if common is None else [p for p in common if p in keys]
    return ["mean", *(common or [])]


def _pair(p: str) -> tuple[int, int]:
    i, j = (int(v) - 1 for v in p.split("-"))
    return i, j


def pair_text(p: str, results: dict) -> str:
    """'the mean of the 3 member pairs' or 'members 1 and 2'."""
    if p == "mean":
        n = {len(r["pairs"]) for r in results.values()}
        return f"the mean of the {n.pop()} member pairs" if len(n) == 1 else "the mean of the member pairs"
    i, j = _pair(p)
    return f"members {i + 1} and {j + 1}"


def pair_matrix(result: dict, p: str) -> np.ndarray:
    """The (L, L) CKA matrix of pair p ("1-2"), or the mean over the pairs ("mean")."""
    if p == "mean":
        return np.mean([np.asarray(q["matrix"], dtype=float) for q in result["pairs"].values()], axis=0)
    return np.asarray(result["pairs"][_pair(p)]["matrix"], dtype=float)


def ordered(names) -> list[str]:
    """ENS_U first, then PARL, then the rest (stable): the side-by-side order everywhere."""
    return sorted(names, key=lambda nm: (method_of(nm) != "ce_only", method_of(nm) != "parl"))


def cka_heatmaps(results: dict, p, k: int, estimator: str, *, key: str, prov=None) -> None:
    """The CKA heatmaps of `p` (a member pair or "mean") for each checkpoint in `results`
    ({name: ensemble_cka result}), side by side on one colour scale (0-1), ENS_U first,
    with one caption computed from all of them."""
    names = ordered(results)
    what = pair_text(p, results)
    cols = st.columns(len(names))
    for col, nm in zip(cols, names):
        m = pair_matrix(results[nm], p)
        fig = pp.cka_heatmap_figure(m, estimator=estimator, names=("one member", "the other") if p == "mean"
                                    else tuple(f"member {i + 1}" for i in _pair(p)), title=ckpt_label(nm))
        fig.update_layout(title={"text": f"{ckpt_label(nm)}<br><sup>{what}</sup>"}, height=430,
                          margin={"t": 80, "l": 10, "r": 10, "b": 10})
        if len(m) > 8:  # a number per cell does not fit at 14 px: the values are in the hover
            fig.update_traces(texttemplate=None, text=None)
        else:  # plotly shrinks cell text to fit unless told its size
            fig.update_traces(textfont={"size": ui.MIN_FONT_PX})
        _sparse_ticks(fig, len(m))
        with col:
            ui.show_figure(fig, f"{ckpt_label(nm)}: layer-by-layer CKA of {what}.", key=f"{key}_{nm}",
                           prov=prov, title=f"cka_{nm}_{p}")
    st.caption(findings.cka_heatmap_caption({ckpt_label(nm): pair_matrix(results[nm], p) for nm in names},
                                            {ckpt_label(nm): method_of(nm) for nm in names}, k, what)
               + f" {ESTIMATOR_TEXT.get(estimator, estimator).capitalize()}.")


def regularised_k(names, results: dict) -> int:
    """The first K layers the comparison is about: PARL's K among `names` (7 when none), at
    most the layers every result has."""
    k = parl_layers(names) or 7
    return min([k] + [len(p["diagonal"]) for r in results.values() for p in r["pairs"].values()])


def _sparse_ticks(fig, n_layers: int) -> None:
    """Every layer labelled up to 10 layers, every other one beyond (14-px labels overlap)."""
    if n_layers > 10:
        fig.update_xaxes(dtick=2, tickangle=0)
        fig.update_yaxes(dtick=2)


def compact_curves(fig, results: dict, estimator: str):
    """The CKA curves figure for a narrow screen: its subtitle one line per ensemble (one
    long line is cut off at 1024 px), the legend below the plot, sparser layer ticks."""
    lines = [f"{lab}: mean {r['overall']:.3f}" for lab, r in results.items()]
    fig.update_layout(title={"text": "Layer-wise linear CKA per member pair<br><sup>" + "<br>".join(lines)
                                     + f"<br>{ESTIMATOR_TEXT.get(estimator, estimator)}</sup>"},
                      legend={"orientation": "h", "y": -0.22, "x": 0, "yanchor": "top"},
                      margin={"t": 70 + 22 * (len(lines) + 1)}, height=520 + 22 * len(results))
    n = max(len(p["diagonal"]) for r in results.values() for p in r["pairs"].values())
    if n > 10:
        fig.update_xaxes(dtick=2)
    return fig


# --------------------------------------------------------------------------- what R measures
def parl_feature(names) -> str | None:
    """The definition of F^k the first PARL checkpoint among `names` was trained with
    (its params' "feature", "pre_bn" when it has none), or None when none is PARL."""
    for n in names:
        meta = cache.metadata(cache.checkpoints()[n])
        if meta.get("method") == "parl":
            return (meta.get("params") or {}).get("feature") or "pre_bn"
    return None


def r_measure_figure(results: dict, k: int | None, feature: str):
    """Per layer, each ensemble's mean pairwise layer-gradient cosine (one line each), the
    floor −1/(M−1) as a dashed line and the first K layers (R's) shaded."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for lab, res in results.items():
        y = np.asarray(res["per_layer"], dtype=float).tolist()
        fig.add_trace(go.Scatter(x=list(range(1, len(y) + 1)), y=y, mode="lines+markers", name=lab,
                                 hovertemplate=f"{lab}<br>layer %{{x}}: %{{y:+.3f}}<extra></extra>"))
    for m in sorted({int(res["members"]) for res in results.values()}):
        fig.add_hline(y=findings_r.floor(m), line={"dash": "dash", "color": "#d62728"},
                      annotation_text=f"floor −1/(M−1) = {findings_r.floor(m):+.2f} (M = {m})",
                      annotation_position="bottom right")
    if k is not None:
        fig.add_vrect(x0=0.5, x1=k + 0.5, fillcolor="#888", opacity=0.12, line_width=0,
                      annotation_text=f"R's first K = {k} layers", annotation_position="top left")
    words = findings_r.FEATURE_WORDS[feature]
    fig.update_layout(title={"text": f"Layer-gradient cosine per layer<br><sup>F^k = layer outputs {words}</sup>"},
                      xaxis={"title": "layer k", "dtick": 1 if max(len(r["per_layer"]) for r in results.values()) <= 10
                             else 2},
                      yaxis={"title": "mean pairwise cosine", "range": [-1.05, 1.05]},
                      legend={"orientation": "h", "y": -0.25, "x": 0, "yanchor": "top"},
                      height=460, margin={"t": 80, "l": 10, "r": 10, "b": 10})
    return fig


def r_measure_view(results: dict, loss_cos: dict, feature: str, dataset: str, *, key: str) -> None:
    """"What R measures" for the checkpoints in `results` ({name: compute.layer_cosines
    result}; loss_cos {name: mean pairwise loss-gradient cosine}, both on the same n test
    examples): the per-layer figure, R/K at PARL's K beside the loss-gradient cosine, the
    computed finding, and the provenance, which names the definition of F^k."""
    names = list(results)
    k = parl_layers(names)
    labelled = {ckpt_label(nm): results[nm] for nm in names}
    loss = {ckpt_label(nm): float(loss_cos[nm]) for nm in names}
    n = next(iter(results.values()))["n"]
    paths = [cache.checkpoints()[nm] for nm in names]
    prov = ui.provenance(paths, {"n": n, "order": "evaluation order", "feature": feature,
                                 "F^k": f"layer outputs {findings_r.FEATURE_WORDS[feature]}", "K": k},
                         command=f"python -c \"import parl_core as pc; ens, _ = pc.load_checkpoint('{paths[0]}'); "
                                 f"ds = pc.evaluation_subset(pc.load_dataset('{dataset}', 'test'), {n}); "
                                 f"print(pc.layer_cosines(ens, ds.images, feature='{feature}'))\"")
    ui.show_figure(r_measure_figure(labelled, k, feature),
                   f"Per layer k, the cosine between members' gradients of layer k's summed outputs, read "
                   f"{findings_r.FEATURE_WORDS[feature]}, averaged over member pairs and examples; "
                   f"R/K is its mean over the first K layers"
                   + (f" (K = {k}, the PARL checkpoint's)" if k else " (all layers: no PARL checkpoint's K)")
                   + f". Test images: {compute.data_caption(dataset, n)}.", key=key, prov=prov,
                   title=f"r_per_layer_{feature}")
    st.markdown(findings_r.r_table(labelled, loss, k))
    st.markdown(findings_r.r_measure_finding(labelled, loss, k, feature,
                                             {ckpt_label(nm): method_of(nm) for nm in names},
                                             parl_feature(names)))


def r_unavailable(names, feature: str) -> str | None:
    """Why "What R measures" cannot be computed for the checkpoints `names` under `feature`,
    or None: a pairwise cosine needs 2 members; and only the models of parl_core.models
    expose their layers after batch norm or ReLU (user-defined modules under
    parl_core.hooked offer "pre_bn" alone)."""
    ens = {n: cache._ensemble(*compute.ref(cache.checkpoints()[n]))[0] for n in names}
    single = [n for n, e in ens.items() if len(e.members) < 2]
    if single:
        return (f"{findings._fmt_list([ckpt_label(n) for n in single])}: a single member has no pair, so it has "
                "no pairwise cosine (R). Choose ensembles of 2 or more members.")
    lacking = [n for n, e in ens.items() if feature != "pre_bn"
               and not all(hasattr(m, "forward_trace") for m in e.members)]
    if lacking:
        return (f"{findings._fmt_list([ckpt_label(n) for n in lacking])}: its models expose their layer outputs "
                f"before batch norm only, so R cannot be read {findings_r.FEATURE_WORDS[feature]} there. Choose "
                f"“{findings_r.FEATURE_WORDS['pre_bn']}”.")
    return None
