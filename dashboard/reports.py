"""Reproduction reports for the dashboard: the folders `python -m parl_core reproduce`
writes (report.md, report.html, CSV tables, units/ markers, checkpoints/), found where the
lab keeps them, read defensively, and their ensembles opened in the other pages.

Where reports are looked for, in this order (a name found twice is shown once, the first):
  docs/reproduction/*/   committed reports (shipped with the repository, no checkpoints)
  reports/*/             runs on this machine (the command's default --out)
  PARL_REPORTS           more folders, separated by the OS path separator; each is a report
                         folder or a folder of report folders.
A folder counts as a report when it holds report.md or a units/ folder (a run in progress).
No Streamlit here: the page (pages/reproduction.py) draws.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import config

# Each CSV the page reads, with the columns it needs (a file without them is reported,
# never drawn from).
TABLES = {
    "verdicts": ("verdicts.csv", {"claim", "verdict", "rule", "numbers"}),
    "table1": ("table1.csv", {"dataset", "role", "label", "column", "eps", "seeds", "n", "mean", "std",
                              "ci_low", "ci_high", "paper"}),
    "table2": ("table2.csv", {"dataset", "role", "label", "column", "eps", "seeds", "n", "mean", "std",
                              "ci_low", "ci_high", "paper"}),
    "curves": ("accuracy_vs_eps.csv", {"attack", "eps", "n", "correct", "acc", "ci_low", "ci_high",
                                       "dataset", "seed", "mode", "role"}),
    "cka": ("cka_layers.csv", {"dataset", "seed", "role", "pair", "layer", "cka"}),
    "sanity": ("sanity_checks.csv", {"unit", "target", "seed", "checks passed", "failed checks and notes"}),
    "units": ("units.csv", {"unit", "kind", "roles", "seed", "checkpoint sha256"}),
}
MAX_CSV_BYTES = 50 * 2**20  # a report's tables are kilobytes; anything this large is not one


@dataclass(frozen=True)
class ReportInfo:
    name: str      # folder name, unique in the listing
    path: Path
    origin: str    # "committed" | "this machine" | "PARL_REPORTS"
    finished: bool  # report.md written (every unit done)
    units_done: int
    written: float  # mtime of report.md (or of the newest marker while in progress)

    @property
    def label(self) -> str:
        state = "report" if self.finished else f"in progress, {self.units_done} units finished"
        return f"{self.name} ({self.origin}: {state})"


def _roots() -> list[tuple[Path, str]]:
    roots = [(config.REPO / "docs" / "reproduction", "committed"), (config.REPO / "reports", "this machine")]
    for part in filter(None, os.environ.get("PARL_REPORTS", "").split(os.pathsep)):
        roots.append((Path(part).expanduser(), "PARL_REPORTS"))
    return roots


def _is_report(d: Path) -> bool:
    return d.is_dir() and ((d / "report.md").is_file() or (d / "units").is_dir())


def _info(d: Path, origin: str) -> ReportInfo:
    units = [p for p in (d / "units").glob("*.json")] if (d / "units").is_dir() else []
    done = (d / "report.md").is_file()
    stamps = [(d / "report.md").stat().st_mtime] if done else [p.stat().st_mtime for p in units] or [0.0]
    n = len(units) if units else _count_units(d)
    return ReportInfo(d.name, d.resolve(), origin, done, n, max(stamps))


def _count_units(d: Path) -> int:
    try:
        return sum(1 for _ in (d / "units.csv").open(encoding="utf-8")) - 1
    except OSError:
        return 0


def find_reports() -> list[ReportInfo]:
    """Every report folder in the places listed in the module docstring."""
    seen, out = set(), []
    for root, origin in _roots():
        try:
            candidates = [root] if _is_report(root) else sorted(p for p in root.iterdir() if _is_report(p))
        except OSError:  # absent or unreadable: nothing there
            continue
        for d in candidates:
            if d.name not in seen:
                seen.add(d.name)
                out.append(_info(d, origin))
    return out


def load_tables(path) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """({table: DataFrame} of the report's CSVs that could be read, {file: what is wrong}
    for the rest — missing, unreadable, too large or without the expected columns)."""
    path, got, problems = Path(path), {}, {}
    for key, (name, needed) in TABLES.items():
        f = path / name
        try:
            if f.stat().st_size > MAX_CSV_BYTES:
                raise ValueError(f"{f.stat().st_size / 2**20:.0f} MB, more than a report's table can be")
            df = pd.read_csv(f, keep_default_na=False, na_values=[""])
        except FileNotFoundError:
            problems[name] = "missing"
            continue
        except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
            problems[name] = f"unreadable ({type(e).__name__}: {e})"
            continue
        missing = needed - set(df.columns)
        if missing and len(df):
            problems[name] = f"lacks the columns {sorted(missing)}"
            continue
        got[key] = df
    return got, problems


def command(path) -> str | None:
    """The command that wrote the report (from report.md's first paragraph), if stated."""
    try:
        head = (Path(path) / "report.md").read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return None
    m = re.search(r"Command: (.+)", head)
    return m.group(1).strip() if m and not m.group(1).startswith("(") else None


@dataclass(frozen=True)
class Ensemble:
    unit: str
    roles: str
    seed: int
    sha256: str
    path: Path | None  # None: the checkpoint is not in the report folder (e.g. a committed report)


def ensembles(path, units: pd.DataFrame | None) -> list[Ensemble]:
    """The report's trained ensembles (units.csv's training units), with their checkpoint
    file where the report folder still holds it."""
    if units is None or not len(units):
        return []
    out = []
    for r in units[units["kind"] == "train"].to_dict("records"):
        f = Path(path) / "checkpoints" / f"{r['unit']}.safetensors"
        out.append(Ensemble(str(r["unit"]), str(r["roles"]), int(r["seed"]), str(r["checkpoint sha256"] or ""),
                            f if f.is_file() else None))
    return out


def lab_name(report: str, unit: str) -> str:
    """The name an opened ensemble takes in the checkpoint folder: report and unit, e.g.
    'cpu-small-cifar10-parl-s0-4cd48a139b'."""
    from parl_core.checkpoints import sanitize_name
    return sanitize_name(f"{report}-{unit.removeprefix('train-')}")


def open_in_lab(report: str, ens: Ensemble) -> str:
    """Copy a report's ensemble into the checkpoint folder (checked first: its sha256 must
    be the one units.csv records, and it must load as a checkpoint) and return its name
    there. An identical file already there is reused; a different one is never
    overwritten (PermissionError in classroom mode, FileExistsError on a clash, ValueError
    when the file is not the one the report made)."""
    from parl_core.checkpoints import file_hash, load_checkpoint
    if config.readonly():
        raise PermissionError("this server is read-only (PARL_READONLY): ensembles cannot be added to "
                              "its checkpoint folder")
    if ens.path is None or not ens.path.is_file():
        raise FileNotFoundError(f"the report folder does not hold {ens.unit}.safetensors (committed "
                                "reports carry no checkpoints: rerun the report's command to make them)")
    digest = file_hash(ens.path)
    if ens.sha256 and digest != ens.sha256:
        raise ValueError(f"{ens.path.name} is not the checkpoint the report made (sha256 {digest[:12]}…, "
                         f"the report says {ens.sha256[:12]}…)")
    load_checkpoint(ens.path)  # the loader's full validation, before it enters the folder
    name = lab_name(report, ens.unit)
    dest = config.checkpoint_dir() / f"{name}.safetensors"
    if dest.exists():
        if file_hash(dest) == digest:
            return name
        raise FileExistsError(f"{dest.name} already exists in the checkpoint folder with other weights; "
                              "rename or delete it on the Checkpoints page first")
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    try:
        shutil.copyfile(ens.path, tmp)
        os.link(tmp, dest)  # never replaces a file that appeared meanwhile (FileExistsError)
    finally:
        tmp.unlink(missing_ok=True)
    return name
