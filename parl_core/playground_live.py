"""The Playground while it plays: one run, or ENS_U and PARL side by side on the same seed,
trained epoch by epoch by a background thread a little ahead of what the screen shows.

    live = LiveRun({"ENS_U": cfg_a, "PARL": cfg_b})
    live.play()                 # returns at once; a thread steps both runs
    view = live.next_view()     # the next epoch's views (frame + attack + verdicts), in order
    live.pause()                # returns at once; the thread ends after its current epoch
    live.step()                 # one epoch now (pauses first)

Choices made here:
  * Every run of a LiveRun trains in lockstep: a view holds the same epoch of each, so a
    split screen never shows ENS_U at epoch 9 beside PARL at epoch 7.
  * The thread keeps at most `ahead` views nobody has taken yet, then waits: training
    runs at the pace the screen draws (no epoch is skipped on screen), and Pause stops
    it at most `ahead` + 1 epochs beyond what was shown (the page then shows the last).
  * A run nobody asks views of for `idle_s` seconds (a closed tab) stops by itself.
  * A view's attack is crafted on the weights of that same epoch, so the titles, the
    path and the caption always agree (`attack_verdicts`).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .playground import ATTACKS_2D, MAX_EPOCHS, PlaygroundConfig, PlaygroundFrame, PlaygroundSession

__all__ = ["LiveRun", "LiveView", "RunView", "attack_verdicts", "fooled_text", "VERDICTS", "warm_up"]

VERDICTS = ("holds", "fooled", "already wrong")
_WARMING = threading.Lock()
_WARM = {"started": False}


def warm_up() -> None:
    """torch's first optimizer step imports torch._dynamo (about 800 modules, 1-2 s of CPU
    under the import lock): a Playground's first epoch after Play took 1.5 s instead of
    0.05 s (7 s on a busy machine). The first LiveRun of a process starts that import in a
    background thread, so it is done by the time someone presses Play."""
    with _WARMING:
        if _WARM["started"]:
            return
        _WARM["started"] = True
    import importlib
    threading.Thread(target=importlib.import_module, args=("torch._dynamo",), daemon=True,
                     name="parl-playground-warm-up").start()


def attack_verdicts(attack: dict) -> list[str]:
    """What the attack did to each member, then to the vote (M + 1 strings):
    "already wrong" — it misclassified the clean point (the attack is moot for it);
    "fooled" — right on the clean point, wrong at the end of the path;
    "holds" — right before and after."""
    label = int(attack["label"])
    pairs = list(zip(attack["start_pred"], attack["end_pred"])) + [(attack["vote_start"], attack["vote_end"])]
    return ["already wrong" if int(s) != label else "fooled" if int(e) != label else "holds"
            for s, e in pairs]


def fooled_text(verdicts: list[str]) -> str:
    """'Fooled: M2 and the vote; already wrong before the attack: M1.' from attack_verdicts."""
    names = [f"M{i + 1}" for i in range(len(verdicts) - 1)] + ["the vote"]

    def listing(which):
        got = [n for n, v in zip(names, verdicts) if v == which]
        return got[0] if len(got) == 1 else ", ".join(got[:-1]) + " and " + got[-1] if got else ""
    text = f"Fooled: {listing('fooled') or 'none'}"
    wrong = listing("already wrong")
    return text + (f"; already wrong before the attack: {wrong}." if wrong else ".")


@dataclass
class RunView:
    """One run at one epoch: what its part of the screen shows."""
    name: str
    config: PlaygroundConfig
    frame: PlaygroundFrame
    attack: dict
    verdicts: list


@dataclass
class LiveView:
    epoch: int
    runs: list
    settings: tuple            # the attack settings it was made with
    made: float = field(default_factory=time.monotonic)


class LiveRun:
    """Runs (name -> PlaygroundConfig) trained together by a background thread."""

    def __init__(self, configs: dict, *, grid: int = 60, arrows: int = 15, ahead: int = 2,
                 idle_s: float = 20.0):
        if not isinstance(configs, dict) or not configs:
            raise ValueError(f"configs must be a non-empty dict name -> PlaygroundConfig, got {configs!r}")
        for name, c in configs.items():
            if not isinstance(c, PlaygroundConfig):
                raise ValueError(f"configs[{name!r}] must be a PlaygroundConfig, got {type(c).__name__}")
        sizes = {(c.dataset, c.n_samples, c.noise, c.seed) for c in configs.values()}
        if len(sizes) > 1:
            raise ValueError(f"configs must share dataset, n_samples, noise and seed (one data set "
                             f"on screen), got {sorted(sizes, key=str)}")
        if not isinstance(ahead, int) or ahead < 1:
            raise ValueError(f"ahead must be an int >= 1, got {ahead!r}")
        self.configs = dict(configs)
        self.grid, self.arrows, self.ahead, self.idle_s = grid, arrows, ahead, float(idle_s)
        self._lock = threading.RLock()      # the sessions (training, frames, attacks)
        self._cond = threading.Condition()  # the queue and the flags below
        self._queue: deque = deque()
        self._playing = False
        self._thread: threading.Thread | None = None
        self._last_seen = time.monotonic()
        self.error: str | None = None
        self._attack = (0, 0, "pgd", 0.3)
        self._new_sessions()
        warm_up()

    # ------------------------------------------------------------------ state
    def _new_sessions(self):
        with self._lock:
            self.sessions = {n: PlaygroundSession(c) for n, c in self.configs.items()}
            self._latest = self._shown = None

    @property
    def epoch(self) -> int:
        return next(iter(self.sessions.values())).epoch

    @property
    def playing(self) -> bool:
        with self._cond:
            return self._playing

    @property
    def train_points(self):
        return next(iter(self.sessions.values())).train_ds.images

    def set_attack(self, point: int, member: int, attack: str = "pgd", eps: float = 0.3) -> None:
        """The attack every view shows: training point `point`, crafted on `member`
        (0-based; capped at each run's last member)."""
        n = len(self.train_points)
        m = min(c.members for c in self.configs.values())
        if not (isinstance(point, int) and 0 <= point < n):
            raise ValueError(f"point must be an int in 0..{n - 1}, got {point!r}")
        if not (isinstance(member, int) and 0 <= member < m):
            raise ValueError(f"member must be an int in 0..{m - 1}, got {member!r}")
        if attack not in ATTACKS_2D:
            raise ValueError(f"attack must be one of {ATTACKS_2D}, got {attack!r}")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self._attack = (point, member, attack, float(eps))

    # ------------------------------------------------------------------ views
    def _make_view(self) -> LiveView:
        point, member, attack, eps = settings = self._attack
        runs = []
        for name, s in self.sessions.items():
            frame = s.frame(grid=self.grid, arrows=self.arrows)
            atk = s.attack_path(point, member=min(member, s.config.members - 1), attack=attack, eps=eps)
            runs.append(RunView(name, s.config, frame, atk, attack_verdicts(atk)))
        return LiveView(self.epoch, runs, settings)

    def current(self) -> LiveView:
        """The view of the latest epoch trained, with the current attack (for a paused
        screen: always what the sessions hold now). Drops views not shown yet."""
        with self._lock:
            with self._cond:
                self._queue.clear()
                self._last_seen = time.monotonic()
                v = self._latest
            if v is None or v.epoch != self.epoch or v.settings != self._attack:
                v = self._make_view()
            with self._cond:
                self._latest = self._shown = v
                self._cond.notify_all()
            return v

    def shown(self) -> LiveView:
        """The view last handed out (the current one if none yet); never trains."""
        with self._cond:
            v = self._shown
        return v if v is not None else self.current()

    def next_view(self) -> LiveView:
        """While playing: the oldest view not shown yet (else the last shown); never waits
        for training. Paused: `current()`."""
        return self.next_views(1)[0]

    def next_views(self, limit: int | None = None) -> list:
        """While playing: every view not handed out yet, oldest first (at most `limit`),
        else [the last one handed out]; never waits for training. Paused: [`current()`].
        A screen that animates the views itself (the Playground's canvas plays them at its
        own frame rate) takes them all at once, so the frame rate does not depend on how
        often the page asks."""
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be None or an int >= 1, got {limit!r}")
        with self._cond:
            self._last_seen = time.monotonic()
            if self._queue:
                n = len(self._queue) if limit is None else min(limit, len(self._queue))
                out = [self._queue.popleft() for _ in range(n)]
                self._shown = out[-1]
                self._cond.notify_all()
                return out
            if self._playing and self._shown is not None:
                return [self._shown]
        return [self.current()]

    # ------------------------------------------------------------------ controls
    def play(self) -> None:
        """Start (or keep) training in the background; returns at once."""
        with self._cond:
            if self._playing or self.epoch >= MAX_EPOCHS:
                return
            self._playing, self.error = True, None
            self._last_seen = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="parl-playground", daemon=True)
                self._thread.start()

    def pause(self) -> None:
        """Stop training; returns at once (the thread finishes the epoch it is in)."""
        with self._cond:
            self._playing = False
            self._cond.notify_all()

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until the thread has finished (at most `timeout` s); whether it has."""
        with self._cond:
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        return t is None or not t.is_alive()

    def step(self, epochs: int = 1) -> LiveView:
        """Pause, then train `epochs` epochs now; returns the new view."""
        self.pause()
        self.settle()
        with self._lock:
            if self.epoch + epochs <= MAX_EPOCHS:
                for s in self.sessions.values():
                    s.step(epochs)
            return self.current()

    def reset(self) -> LiveView:
        """Pause, then start again from the same seeded initial weights (epoch 0)."""
        self.pause()
        self.settle()
        self._new_sessions()
        return self.current()

    def transfer(self, name: str, **kw) -> dict:
        """`PlaygroundSession.transfer` of run `name` (with the training paused: the
        weights must not change under the attack)."""
        if name not in self.sessions:
            raise ValueError(f"name must be one of {list(self.sessions)}, got {name!r}")
        with self._lock:
            return self.sessions[name].transfer(**kw)

    # ------------------------------------------------------------------ the thread
    def _wait_for_room(self) -> bool:
        """Under _cond: wait while `ahead` views are queued; False when play should stop."""
        while self._playing and len(self._queue) >= self.ahead:
            if time.monotonic() - self._last_seen > self.idle_s:
                self._playing = False  # nobody is watching
            else:
                self._cond.wait(0.25)
        return self._playing

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._wait_for_room():
                        self._thread = None  # under _cond: a play() from now on starts a new one
                        return
                with self._lock:
                    if self.epoch >= MAX_EPOCHS:
                        with self._cond:
                            self._playing, self._thread = False, None
                        return
                    for s in self.sessions.values():
                        s.step()
                    v = self._make_view()
                with self._cond:
                    self._queue.append(v)
                    self._latest = v
                    self._cond.notify_all()
        except Exception as e:  # shown by the page; the run stays paused and usable
            with self._cond:
                self._playing, self._thread = False, None
                self.error = f"{type(e).__name__}: {e}"
