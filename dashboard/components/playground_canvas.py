"""The Playground's live view as a Streamlit component (st.components.v2, no iframe): a
canvas drawn by playground_canvas.js from one binary message per epoch.

Why not plotly charts: Streamlit draws a plotly chart from scratch (Plotly.newPlot)
whenever its figure changes, ~0.3-0.9 s per frame for the member plots in a browser
without a GPU; the canvas repaints a frame in a few milliseconds, so the frame rate is
set by training. Why binary: a frame is ~40 KB of uint8/float32 arrays (regions in
1/255 steps, boundaries, arrows, the attack path, the curves so far) instead of
~400 KB of JSON numbers.

    payload = view_payload(view)               # bytes (parl_core.playground_live.LiveView)
    payload = frames_payload(views, playing=True, frame_ms=100)   # several epochs at once
    playground_canvas(payload, key="pg_canvas", on_click=callback)
    header, arrays = unpack(payload)           # what the browser draws last, for tests

Play mode sends every epoch trained since the page last asked, in one message; the
browser queues them and draws one every `frame_ms` (its own timer), so the frame rate is
set by training and the canvas, not by how often Streamlit reruns the page. A message
with "playing" false is drawn at once and empties the queue (Pause, Step, Reset).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import streamlit as st

import parl_core as pc

__all__ = ["pack", "unpack", "unpack_frames", "view_payload", "frames_payload", "titles",
           "playground_canvas", "summary", "FRAMES_MAGIC"]

_JS = (Path(__file__).with_name("playground_canvas.js")).read_text()
_CSS = """
.parl-playground { display: block; max-width: 100%; cursor: crosshair; }
"""
_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.uint8): "uint8"}


def pack(header: dict, arrays: dict) -> bytes:
    """uint32 header length, the JSON header (with "arrays": {name: [offset, dtype,
    shape]}), then every array, each at a 4-byte aligned offset. float32 and uint8 only."""
    body, index, off = [], {}, 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in _DTYPES:
            raise ValueError(f"arrays[{name!r}] must be float32 or uint8, got {a.dtype}")
        raw = a.tobytes()
        index[name] = [off, _DTYPES[a.dtype], list(a.shape)]
        pad = (-len(raw)) % 4
        body.append(raw + b"\0" * pad)
        off += len(raw) + pad
    head = json.dumps({**header, "arrays": index}, allow_nan=False).encode()
    head += b" " * ((-(4 + len(head))) % 4)  # arrays start 4-byte aligned
    return struct.pack("<I", len(head)) + head + b"".join(body)


FRAMES_MAGIC = b"PGF1"  # a message of several frames: magic, uint32 count, (uint32 length, frame)*


def frames_payload(views, *, playing: bool, frame_ms: int = 100) -> bytes:
    """Several LiveViews (oldest first) in one message the canvas plays one per
    `frame_ms` milliseconds."""
    views = list(views)
    if not views:
        raise ValueError("views: give at least one LiveView")
    if not isinstance(frame_ms, int) or not 10 <= frame_ms <= 5000:
        raise ValueError(f"frame_ms must be an int in 10..5000, got {frame_ms!r}")
    blobs = [view_payload(v, playing=playing, frame_ms=frame_ms) for v in views]
    return FRAMES_MAGIC + struct.pack("<I", len(blobs)) + b"".join(
        struct.pack("<I", len(b)) + b for b in blobs)


def unpack_frames(data: bytes) -> list:
    """[(header, arrays)] of a `frames_payload` (or one `pack`ed frame)."""
    data = bytes(data)
    if data[:4] != FRAMES_MAGIC:
        return [unpack(data)]
    (count,), at, out = struct.unpack_from("<I", data, 4), 8, []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, at)
        out.append(unpack(data[at + 4:at + 4 + n]))
        at += 4 + n
    return out


def unpack(data: bytes) -> tuple[dict, dict]:
    """The inverse of `pack`: (header, {name: array}); of a `frames_payload`, its last frame
    (what the browser shows once it has played them)."""
    if bytes(data[:4]) == FRAMES_MAGIC:
        return unpack_frames(data)[-1]
    (n,) = struct.unpack_from("<I", data, 0)
    head = json.loads(data[4:4 + n])
    base, arrays = 4 + n, {}
    for name, (off, dtype, shape) in head.pop("arrays").items():
        count = int(np.prod(shape)) if shape else 1
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=base + off).reshape(shape)
    return head, arrays


def titles(run) -> list[list[str]]:
    """Two title lines per plot (members, then the vote): name and test accuracy; the
    attack's verdict (and which member it was crafted on)."""
    h = run.frame.history[-1] if run.frame.history else None
    accs = (h["member_acc"] + [h["test_acc"]]) if h else [None] * (len(run.verdicts))
    m = len(run.verdicts) - 1
    out = []
    for i, (v, acc) in enumerate(zip(run.verdicts, accs)):
        name = f"M{i + 1}" if i < m else "vote"
        first = name + (f" · {acc:.0%}" if acc is not None else "")
        out.append([first, v + (" · attacked" if i == run.attack["member"] else "")])
    return out


def summary(view) -> str:
    """One sentence per run of what the canvas shows (its accessible label)."""
    from parl_core.playground_live import fooled_text
    return f"Epoch {view.epoch}. " + " ".join(
        f"{r.name}: {fooled_text(r.verdicts)}" for r in view.runs)


def _region(probs: np.ndarray, classes: int):
    """(n, n, C) probabilities -> uint8 planes: p(class 1) for two classes, else the
    winning class and its probability."""
    if classes == 2:
        return np.rint(probs[..., 1] * 255).astype(np.uint8), None
    return probs.argmax(-1).astype(np.uint8), np.rint(probs.max(-1) * 255).astype(np.uint8)


def _xy(px, py) -> np.ndarray:
    return np.stack([np.asarray(px, np.float32), np.asarray(py, np.float32)], 1)


def view_payload(view, *, playing: bool = False, frame_ms: int = 100) -> bytes:
    """The bytes the canvas draws for a LiveView (parl_core.playground_live)."""
    first = view.runs[0].frame
    arrays = {"train.x": first.train_x.astype(np.float32), "train.y": first.train_y.astype(np.uint8),
              "arrows": first.arrow_points.astype(np.float32)}
    runs = []
    for k, run in enumerate(view.runs):
        f, m = run.frame, run.frame.member_probs.shape[0]
        planes = [f.member_probs[i] for i in range(m)] + [f.vote_probs]
        lines = list(f.boundaries) + [f.vote_boundary]
        for i, (probs, (bx, by)) in enumerate(zip(planes, lines)):
            z, conf = _region(probs, f.num_classes)
            arrays[f"{k}.r{i}"] = z
            if conf is not None:
                arrays[f"{k}.c{i}"] = conf
            arrays[f"{k}.b{i}"] = _xy(bx, by)
            if i < m:
                arrays[f"{k}.g{i}"] = f.arrow_grads[i].astype(np.float32)
        arrays[f"{k}.path"] = np.asarray(run.attack["path"], np.float32)
        hist = [(r["epoch"], r.get("test_acc"), r.get("r_mean")) for r in f.history]
        arrays[f"{k}.hist"] = np.asarray([[e, np.nan if a is None else a, np.nan if r is None else r]
                                          for e, a, r in hist], np.float32).reshape(-1, 3)
        runs.append({"name": run.name, "label": f"{run.name}: {pc.method_label(run.config.method)}"
                     if run.name != pc.method_label(run.config.method) else run.name,
                     "members": m, "classes": int(f.num_classes), "grid": int(len(f.xs)),
                     "bounds": [float(f.xs[0]), float(f.xs[-1]), float(f.ys[0]), float(f.ys[-1])],
                     "titles": titles(run), "verdicts": list(run.verdicts),
                     "attacked": int(run.attack["member"]), "floor": float(f.floor)})
    header = {"epoch": int(view.epoch), "playing": bool(playing), "frame_ms": int(frame_ms), "runs": runs,
              "summary": summary(view)}
    return pack(header, arrays)


_mount = st.components.v2.component("parl_playground_canvas", js=_JS, css=_CSS, isolate_styles=False)


def playground_canvas(payload: bytes, *, key: str, on_click=None):
    """Mount (or update in place) the canvas; `on_click()` runs when a plot is clicked,
    the click's data coordinates then in st.session_state[key]["click"] ({"x", "y"})."""
    return _mount(key=key, data=payload, on_click_change=on_click or (lambda: None))
