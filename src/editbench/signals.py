"""Stop signals: a run asked to stop (a user, a lost terminal, a scheduler) stops at a safe point.

The runner installs `StopSignals` for the length of a run and polls `signum` between edits; at a
safe point it saves a checkpoint, writes summary.json (`stopped` or `requeued`) and raises
`RunStopped`, which the command line turns into one line and exit status 128 + the signal.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable


class RunStopped(Exception):
    """A stop signal: the run stopped at a safe point, its checkpoints intact. `requeue`: the signal
    asked for a requeue (SIGUSR2)."""

    def __init__(self, signum: int, done: int, n_edits: int, status: str | None = None):
        self.signum, self.requeue = signum, signum in StopSignals.REQUEUE
        name = signal.Signals(signum).name
        if self.requeue:
            msg = (f"requeue asked ({name}) at edit {done} of {n_edits}: checkpoint saved, "
                   f"summary.json says requeued; the scheduler's requeue or re-running the same command resumes it")
        elif status == "requeued":  # SLURM requeued the job (scontrol requeue, a pre-emption) and stops it
            msg = (f"requeued by SLURM ({name}) at edit {done} of {n_edits}: checkpoint saved, summary.json says "
                   f"requeued; the job resumes from it when SLURM starts it again")
        else:
            msg = f"stopped at edit {done} of {n_edits}; re-run the same command to resume"
        super().__init__(msg)
        self.exit_code = 128 + signum


class StopSignals:
    """Stop signals ask the run to stop at its next safe point: between edits, after a checkpoint of
    the edits so far; or at once while the run is being built (model, unedited references,
    statistics: kept or cached once complete, redone otherwise) and during a checkpoint's evaluation
    (its edits were saved before it began; resuming redoes it). A second signal stops at once (the files stay consistent either
    way: every write is atomic).

    SIGTERM, SIGINT and SIGHUP (the terminal hung up, e.g. a lost ssh session) leave the run
    `stopped`. SIGUSR2 (what SLURM / submitit send before a time limit or a pre-emption) leaves it
    `requeued`; then `hand_over` runs the handler that was there before the run's (submitit's
    requeues the job). A SIGTERM to a SLURM job that SLURM has requeued (`scontrol requeue`, a
    pre-emption that requeues) leaves it `requeued` too (`requeued` asks SLURM, once, at the stop).
    A SIGHUP ignored when the run started (nohup) stays ignored. Installed only in the main thread,
    and restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
    REQUEUE = (signal.SIGUSR2,)

    def __init__(self, requeued: Callable[[], bool] | None = None):
        self.signum: int | None = None
        self.previous: dict = {}
        self.interruptible = False  # inside `interrupting()`
        self.tty_fds: list[int] = []
        self.requeued = requeued or slurm_requeued
        self._status: str | None = None

    @property
    def status(self) -> str:
        """What summary.json says after the stop: `requeued` for SIGUSR2 or a SIGTERM from a SLURM
        requeue, else `stopped`."""
        if self._status is None and self.signum is not None:
            requeued = self.signum in self.REQUEUE or (self.signum == signal.SIGTERM and self.requeued())
            self._status = "requeued" if requeued else "stopped"
        return self._status or "stopped"

    def _handle(self, signum, frame):
        if signum == signal.SIGHUP:
            self._detach_terminal()
        first = self.signum is None
        if first:
            self.signum = signum
        if not first or self.interruptible:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def _detach_terminal(self) -> None:
        """After a hang-up, writing to the terminal fails (EIO) and would end the run before its
        checkpoint: what went to the terminal goes to /dev/null."""
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            for fd in self.tty_fds:
                os.dup2(null, fd)
            os.close(null)
        except OSError:
            pass

    @contextlib.contextmanager
    def interrupting(self):
        """Work that a stop signal interrupts at once (it is redone on resume)."""
        if self.signum is not None:
            raise KeyboardInterrupt(signal.Signals(self.signum).name)
        self.interruptible = True
        try:
            yield
        finally:
            self.interruptible = False

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.tty_fds = [fd for fd in (1, 2) if os.isatty(fd)]
            for s in self.SIGNALS:
                if s == signal.SIGHUP and signal.getsignal(s) == signal.SIG_IGN:
                    continue  # nohup
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def slurm_requeued(timeout_s: float = 5.0) -> bool:
    """Whether the SLURM job this process runs in has been requeued since it started: SLURM counts
    restarts (`Restarts=` in `scontrol show job`, `SLURM_RESTART_COUNT` in the job's environment),
    and a requeued job's processes get SIGTERM, then SIGKILL after the cluster's KillWait. False
    outside SLURM or when slurmctld does not answer in `timeout_s`."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                             timeout=timeout_s).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    restarts, state = re.search(r"\bRestarts=(\d+)", out), re.search(r"\bJobState=(\S+)", out)
    started_as = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return bool(restarts and int(restarts.group(1)) > started_as) or bool(
        state and state.group(1) in ("REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "PREEMPTED"))


def hand_over(signum: int, run_dir: Path | None = None) -> None:
    """After a requeue stop, with the run's handlers restored: run the handler that was installed
    before them, if it is a function (submitit's requeues the job and exits); else nothing. A
    handler that refuses by raising (submitit: the job timed out `max_num_timeout` times) leaves
    `run_dir`'s summary.json `stopped`, with the reason, instead of `requeued`."""
    handler = signal.getsignal(signum)
    if not callable(handler):
        return
    try:
        handler(signum, None)
    except Exception as e:
        if run_dir is not None:
            _not_requeued(Path(run_dir) / "summary.json", " ".join(str(e).split())[:300] or type(e).__name__)
        raise


def _not_requeued(path: Path, why: str) -> None:
    from editbench.checkpoint import atomic_write_text

    try:
        summary = json.loads(path.read_text())
        if summary.get("status") == "requeued":
            atomic_write_text(path, json.dumps({**summary, "status": "stopped", "error": f"not requeued: {why}"},
                                               indent=2) + "\n")
    except (OSError, ValueError):
        pass
