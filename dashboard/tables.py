"""Tables built from checkpoint metadata (no computation beyond reading headers)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import parl_core as pc

from . import cache


def _params(meta: dict) -> str:
    p = {k: v for k, v in (meta.get("params") or {}).items() if k != "grad_method" and v is not None}
    return ", ".join(f"{k}={v}" for k, v in p.items()) or "—"


def checkpoint_table() -> pd.DataFrame:
    """One row per readable checkpoint: name, method, dataset, members, hyperparameters,
    clean accuracy, mean R/K, epochs and training images (the scale its numbers come from),
    created."""
    rows = []
    for name, path in cache.checkpoints().items():
        m = cache.metadata(path)
        rows.append({"checkpoint": name, "method": pc.method_label(m.get("method", "?")),
                     "dataset": m.get("dataset"), "members": m.get("members"),
                     "arch": (m.get("model") or {}).get("arch"), "hyperparameters": _params(m),
                     "clean_acc": m.get("clean_acc"), "mean_R_per_layer": m.get("r_mean"),
                     "epochs": m.get("epochs_done", m.get("epochs")), "train_images": m.get("train_size"),
                     "seed": m.get("seed"),
                     "created": m.get("created"), "size_kB": round(path.stat().st_size / 1024, 1)})
    return pd.DataFrame(rows)


def column_config() -> dict:
    """Percent for accuracies, three decimals for similarities (st.dataframe's column_config)."""
    pct, num = st.column_config.NumberColumn, st.column_config.NumberColumn
    return {"clean_acc": pct("clean acc", format="percent"), "robust_acc": pct("robust acc", format="percent"),
            "mean_R_per_layer": num("mean R/K", format="%.3f"), "mean_R": num("mean R/K", format="%.3f"),
            "avg_cka": num("avg CKA", format="%.3f")}

