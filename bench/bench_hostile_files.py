"""Hostile checkpoint files (issue 16): what loading each one does, how long the refusal
takes and how much memory it costs.

Every case is built from the shipped digits ENS_U checkpoint by changing its header (or
its bytes), then loaded with `parl_core.load_checkpoint` in a fresh Python process that
reports the outcome, the wall time of the load and the process's peak resident memory
above its baseline after importing parl_core (ru_maxrss before and after the load).

    python -m bench.bench_hostile_files [--case NAME]

Prints one row per case: outcome (refused: the first words of the CheckpointError, or
LOADED / the unexpected exception), milliseconds, extra peak MB.
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOOD = (REPO / "checkpoints" / "digits_ens_u.safetensors").read_bytes()
N = int.from_bytes(GOOD[:8], "little")
HEADER = json.loads(GOOD[8:8 + N])
META = json.loads(HEADER["__metadata__"]["parl"])
DATA = GOOD[8 + N:]


def _file(header: dict | bytes, data: bytes = DATA) -> bytes:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(hb).to_bytes(8, "little") + hb + data


def _meta(**changes) -> bytes:
    m = json.loads(json.dumps(META))
    for k, v in changes.items():
        if k.startswith("model."):
            m["model"][k[6:]] = v
        else:
            m[k] = v
    return _file({**HEADER, "__metadata__": {"parl": json.dumps(m)}})


def _dtype(dtype: str, nan: bool = False) -> bytes:
    """The checkpoint with one weight tensor stored as `dtype` (values converted), and a NaN
    in it when asked: a well-formed file whose weights are wrong."""
    import torch
    from safetensors.torch import load, save
    tensors = load(GOOD)
    name = next(k for k, v in tensors.items() if v.dtype == torch.float32 and v.numel() > 1)
    t = tensors[name].to(getattr(torch, dtype))
    if nan:
        t.view(-1)[0] = float("nan")
    tensors[name] = t
    return save(tensors, metadata=HEADER["__metadata__"])


class _Payload:
    def __reduce__(self):
        return (print, ("pickle payload ran",))


CASES = {
    "valid (reference)": lambda: GOOD,
    'metadata "method": 5': lambda: _meta(method=5),
    "params of the wrong type": lambda: _meta(params=[1, 2]),
    "header JSON not an object": lambda: _file(b"[1, 2, 3]"),
    "header nested 100,000 deep": lambda: _file(b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "non-string __metadata__ value": lambda: _file({**HEADER, "__metadata__": {"parl": 5}}),
    "width 20,000 declared": lambda: _meta(**{"model.width": 20_000}),
    "10^9 classes declared": lambda: _meta(num_classes=10**9, **{"model.num_classes": 10**9}),
    "MLP depth 100,000 declared": lambda: _meta(**{"model.arch": "mlp", "model.depth": 100_000}),
    "bool weights": lambda: _dtype("bool"),
    "int8 weights": lambda: _dtype("int8"),
    "float16 weights with NaN": lambda: _dtype("float16", nan=True),
    "gamma2 = NaN in params": lambda: _meta(params={**META.get("params", {}), "gamma2": float("nan")}),
    "pickle with a code payload": lambda: pickle.dumps(_Payload(), protocol=4),
    "truncated to half": lambda: GOOD[:len(GOOD) // 2],
    "random bytes": lambda: bytes(range(256)) * 64,
}

_CHILD = r"""
import resource, sys, time
import parl_core as pc
from parl_core.checkpoints import CheckpointError
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    pc.load_checkpoint(sys.argv[1])
    out = "LOADED"
except CheckpointError as e:
    out = "refused: " + " ".join(str(e).split(": ", 1)[-1].split()[:9])
except BaseException as e:
    out = f"UNEXPECTED {type(e).__name__}: {str(e)[:60]}"
ms = 1000 * (time.perf_counter() - t0)
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(f"{out}\t{ms:.1f}\t{peak:.1f}")
"""


def run(name: str, folder: Path) -> tuple[str, str, str]:
    path = folder / "case.safetensors"
    path.write_bytes(CASES[name]())
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    line = (r.stdout.strip().splitlines() or [f"CRASHED (exit {r.returncode}): {r.stderr[-80:]}\t-\t-"])[-1]
    if "pickle payload ran" in r.stdout:
        line = "PAYLOAD RAN\t-\t-"
    return tuple(line.split("\t"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=list(CASES), action="append")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        rows = [(n, *run(n, Path(d))) for n in (args.case or CASES)]
    w = max(len(n) for n, *_ in rows)
    print(f"{'case':<{w}}  {'ms':>7}  {'+MB':>6}  outcome")
    for n, out, ms, mb in rows:
        print(f"{n:<{w}}  {ms:>7}  {mb:>6}  {out}")


if __name__ == "__main__":
    main()
