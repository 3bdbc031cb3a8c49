"""What a run prints while it works: live bars on a terminal, plain lines in a job log.

On a terminal (stdout and stderr both) the runner draws tqdm bars. Anywhere else (a SLURM job
log, a pipe, `> run.log`) a bar would be a stream of carriage returns, so instead a `Bar` prints
one plain line each time it passes another `every_pct` percent of its total (at most one per
`min_s` seconds) or `every_s` seconds after its last line, and when it ends: what is done, the
rate, and an ETA. The edit loop's ETA also counts the evaluations still
ahead (`eta_extra`), estimated from the checkpoints already evaluated. The command line also
switches off other libraries' bars when it is not on a terminal (`quiet_library_bars`), e.g.
transformers' GGUF de-quantisation bar.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable


def on_terminal() -> bool:
    """Live bars only when both stdout and stderr are terminals."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def quiet_library_bars() -> None:
    """Not on a terminal: no progress bars from tqdm users (transformers' GGUF loading, datasets,
    the hub). tqdm reads `TQDM_DISABLE` when it is first imported, so the command line calls this
    before anything imports it; a value the user set is kept."""
    if not on_terminal():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def duration(s: float) -> str:
    """4s, 12m05s, 3h20m."""
    s = int(round(max(s, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Bar:
    """A progress bar: tqdm on a terminal, plain lines otherwise.

    `update(n)` advances it, `write(line)` prints a line above a live bar (or plainly),
    `close()` ends it. `eta_extra()` (optional) returns (seconds, words) of work still ahead that
    the rate of this bar does not cover (evaluations), added to the ETA and named in the line."""

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, *, live: bool | None = None,
                 every_pct: float = 5.0, min_s: float = 30.0, every_s: float = 300.0,
                 eta_extra: Callable[[], tuple[float, str] | None] | None = None, out=None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.live = on_terminal() if live is None else live
        self.every_pct, self.min_s, self.every_s, self.eta_extra = every_pct, min_s, every_s, eta_extra
        self.out = out
        self.start_n, self.start_t = initial, time.monotonic()
        self.paused_s = 0.0  # time inside `paused()` (e.g. evaluations): not part of this bar's rate
        self.last_t, self.last_pct = self.start_t, self._pct(initial)
        self.tqdm = None
        if self.live:
            from tqdm import tqdm

            self.tqdm = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def _pct(self, n: int) -> float:
        return 100.0 * n / self.total if self.total else 100.0

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def write(self, line: str) -> None:
        if self.tqdm is not None:
            self.tqdm.write(line, file=self.out or sys.stdout)
        else:
            self._print(line)

    def rate(self) -> float | None:
        """Seconds per unit in this process so far (None before the first unit)."""
        done = self.n - self.start_n
        if done <= 0:
            return None
        return (time.monotonic() - self.start_t - self.paused_s) / done

    def eta(self) -> tuple[float, str] | None:
        """(seconds left, how it splits) or None before the rate is known."""
        rate = self.rate()
        if rate is None:
            return None
        own = rate * (self.total - self.n)
        extra = self.eta_extra() if self.eta_extra else None
        if extra is None:
            return own, ""
        seconds, words = extra
        return own + seconds, f" ({duration(own)} for the {self.unit}s, {words})"

    def update(self, n: int = 1) -> None:
        self.n += n
        now, pct = time.monotonic(), self._pct(self.n)
        if self.tqdm is not None:
            self.tqdm.update(n)
            eta = self.eta() if self.eta_extra else None
            if eta is not None:
                self.tqdm.set_postfix_str(f"ETA with evaluations {duration(eta[0])}", refresh=False)
            return
        step, since = self.every_pct, now - self.last_t
        if (self.n >= self.total or since >= self.every_s
                or (pct // step > self.last_pct // step and since >= self.min_s)):
            self.last_t, self.last_pct = now, pct
            self._print(self.line())

    def line(self) -> str:
        rate = self.rate()
        speed = "" if rate is None else (f", {rate:.2f} s/{self.unit}" if rate >= 1 else
                                         f", {1 / rate:.1f} {self.unit}s/s" if rate > 0 else "")
        eta = self.eta()
        left = "" if eta is None or self.n >= self.total else f", ETA {duration(eta[0])}{eta[1]}"
        return (f"[editbench] {self.desc}: {self.n}/{self.total} {self.unit}s ({self._pct(self.n):.0f}%) in "
                f"{duration(time.monotonic() - self.start_t)}{speed}{left}")

    @contextlib.contextmanager
    def paused(self):
        """A stretch of work that is not this bar's (its time stays out of the rate)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.paused_s += time.monotonic() - t0

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
