"""Progress for the command line: a tqdm bar on a terminal, plain lines in a log file.

A log file (stderr not a TTY) gets one line at most every `every` seconds and one at the
end, never carriage returns; `note` lines (an epoch's summary, a finished attack) are
printed in every mode, --quiet included, which hides only the bar and periodic lines.
"""
from __future__ import annotations

import sys
import time

__all__ = ["Progress", "format_seconds"]


def format_seconds(s) -> str:
    """12.3 -> '12s', 754 -> '12m34s', 4000 -> '1h06m'."""
    if s is None or s != s:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    def __init__(self, desc: str, unit: str = "step", *, quiet: bool = False, file=None,
                 every: float = 30.0, tty: bool | None = None):
        self.desc, self.unit, self.quiet, self.every = desc, unit, quiet, every
        self.file = file if file is not None else sys.stderr
        self.tty = self.file.isatty() if tty is None and hasattr(self.file, "isatty") else bool(tty)
        self.bar, self.total, self.n, self.t0, self.last = None, None, 0, time.perf_counter(), 0.0

    def start(self, total: int, initial: int = 0):
        self.total, self.n = max(1, int(total)), int(initial)
        self.t0 = self.last = time.perf_counter()
        if self.tty and not self.quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=self.n, unit=self.unit, desc=self.desc,
                            dynamic_ncols=True, file=self.file)

    def update_to(self, n: int, **postfix):
        if self.total is None:
            self.start(max(n, 1))
        start_n = getattr(self, "_n0", None)
        if start_n is None:
            self._n0 = start_n = self.n
        self.n = min(int(n), self.total)
        if self.bar is not None:
            self.bar.update(self.n - self.bar.n)
            if postfix:
                self.bar.set_postfix(**postfix)
            return
        now = time.perf_counter()
        if self.quiet or (now - self.last < self.every and self.n < self.total):
            return
        self.last = now
        el = now - self.t0
        rate = (self.n - start_n) / el if el > 0 else 0
        eta = (self.total - self.n) / rate if rate > 0 else None
        extra = "".join(f", {k} {v}" for k, v in postfix.items())
        print(f"{self.desc}: {100 * self.n / self.total:.0f}% ({self.n:,}/{self.total:,} {self.unit}s)"
              f", {format_seconds(el)} elapsed, eta {format_seconds(eta)}{extra}",
              file=self.file, flush=True)

    def note(self, line: str):
        """A line printed in every mode (the bar stays intact on a terminal)."""
        if self.bar is not None:
            self.bar.write(line, file=self.file)
        else:
            print(line, file=self.file, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
