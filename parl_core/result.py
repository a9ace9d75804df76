"""RobustnessResult: one evaluation's table, checks, settings and per-example verdicts
(`parl_core.evaluate.robustness_curve` makes them; `parl_core.evaluate` re-exports it)."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

__all__ = ["RobustnessResult", "verdict_key"]


@dataclass
class RobustnessResult:
    """One evaluation: `table` (one row per attack × ε, plus the clean row), the sanity
    `checks` ({"check", "ok", "detail"}), `warnings` (details of failed checks and notes),
    `settings` (every setting and library version), `cancelled` (partial table),
    `verdicts` (per row "attack@eps": which examples the scored model got right, packed;
    see `verdict`), for paired comparisons of two ensembles on the same examples."""
    table: pd.DataFrame
    warnings: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    cancelled: bool = False
    verdicts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict(orient="records"),  # exact floats (to_json rounds)
                "columns": list(self.table.columns), "warnings": list(self.warnings),
                "settings": self.settings, "checks": self.checks, "cancelled": self.cancelled,
                "verdicts": self.verdicts}

    def verdict(self, attack: str, eps: float) -> np.ndarray | None:
        """Per-example correctness (bool, evaluation order) of the row (attack, eps), or None
        when it was not kept (restart rule "mean" gives shares, not verdicts)."""
        packed = self.verdicts.get(verdict_key(attack, eps))
        if packed is None:
            return None
        n = int(self.table.n.iloc[0])
        return np.unpackbits(np.frombuffer(bytes.fromhex(packed), np.uint8))[:n].astype(bool)

    def to_json(self, path=None) -> str:
        """JSON text (written to `path` too, when given)."""
        text = json.dumps(self.to_dict(), indent=1, default=_plain)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source) -> "RobustnessResult":
        """From JSON text or a path to a JSON file written by `to_json`."""
        text = source
        if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
            text = Path(source).read_text()
        d = json.loads(text)
        table = pd.DataFrame(d["table"], columns=d.get("columns"))
        return cls(table, d.get("warnings", []), d.get("settings", {}), d.get("checks", []),
                   bool(d.get("cancelled", False)), d.get("verdicts", {}))

    def summary(self) -> str:
        """The table and the checks as text a person reads (the CLI prints it)."""
        s = self.settings
        head = (f"{s.get('checkpoint', 'ensemble')}: {s.get('mode')}"
                + (f" from {s['surrogate']}" if s.get("surrogate") else "")
                + f", {s.get('n')} examples, {s.get('steps')} steps, restarts {s.get('restarts')}"
                + (f" (restart rule: {s['restart_select']})" if s.get("restart_select") else ""))
        cols = ["attack", "eps", "acc", "ci_low", "ci_high"] + \
            [c for c in self.table.columns if c.startswith("member_acc_")] + ["source_acc"]
        body = self.table[[c for c in cols if c in self.table]].to_string(
            index=False, float_format=lambda v: f"{v:.3f}")
        lines = [head, body] + [f"  [{'ok' if c['ok'] else 'WARN'}] {c['detail']}" for c in self.checks]
        details = {c["detail"] for c in self.checks}
        lines += [f"  [note] {w}" for w in self.warnings if w not in details]
        return "\n".join(lines)

    def to_csv(self, path=None) -> str:
        """The table as CSV text (written to `path` too, when given)."""
        buf = io.StringIO()
        self.table.to_csv(buf, index=False)
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()


# --------------------------------------------------------------------------- verdicts
def verdict_key(attack: str, eps: float) -> str:
    return f"{attack}@{float(eps)!r}"


def _pack(correct: torch.Tensor) -> str | None:
    if correct.dtype != torch.bool:
        return None
    return np.packbits(correct.numpy()).tobytes().hex()


def _plain(v):
    """numpy scalars -> Python numbers for json.dumps."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")
