"""Resume as a contract: durable, atomic checkpoints of everything a run has computed, in a run
directory that one process at a time holds.

Layout of a run directory:
  .lock             held (flock) by the one process running here; names it (pid, host, start)
  .hydra/           the composed config and the command-line overrides (written once the run starts)
  metrics.jsonl     one row per completed checkpoint (rewritten atomically at each checkpoint)
  summary.json      {"status": "running" | "stopped" | "requeued" | "failed" | "complete", "done": edits so far, ...}
  records/step_NNNNNN.jsonl.gz   per-probe scores and outputs at each checkpoint (audit, `editbench diff`)
  references.json.gz  the unedited model's outputs the scorers compare with, under a key of what they
                    depend on (computed once, before the first edit; a resume reads them back)
  ckpt/step_NNNNNN/ state.pt (editor state, stream cursor, RNG states, per-edit costs) + meta.json
  eval_parts/step_NNNNNN/part_KKKKK.pt  the finished parts of an evaluation under way (records, time,
                    RNG state after the part, the checkpoint state they scored); removed once the
                    checkpoint's records are written
Every file is written under a temporary name, fsync'd, renamed into place and its directory
fsync'd, so a name that exists is complete and survives a power cut; a kill at any moment loses at
most the edits since the last checkpoint, or the evaluation part under way. The two newest checkpoints are kept: meta.json holds
the SHA-256 of state.pt, and a newest checkpoint that fails it (or fails to load) falls back to
the previous one.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import torch

from editbench import runrecords
from editbench.errors import EditbenchError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def rng_equal(a: dict, b: dict) -> bool:
    """Whether two `rng_state()`s are the same state."""
    if a.keys() != b.keys() or a["python"] != b["python"] or not torch.equal(a["torch"], b["torch"]):
        return False
    na, nb = a["numpy"], b["numpy"]
    if len(na) != len(nb) or any(not np.array_equal(x, y) for x, y in zip(na, nb)):
        return False
    return all(torch.equal(x, y) for x, y in zip(a.get("cuda", ()), b.get("cuda", ())))


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def write_references(path: Path, key: str, refs: list) -> None:
    """The unedited model's reference outputs (`Evaluator.reference`) under `key`, atomically."""
    data = json.dumps({"key": key, "refs": refs}, separators=(",", ":")).encode()
    atomic_write_bytes(path, gzip.compress(data, mtime=0))


def read_references(path: Path, key: str) -> list | None:
    """The reference outputs `write_references` kept under `key`; None where the file is absent,
    unreadable or holds another key (then they are computed again)."""
    try:
        kept = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, ValueError):
        return None
    return kept["refs"] if isinstance(kept, dict) and kept.get("key") == key else None


class RunLock:
    """One process per run directory: an exclusive flock on `run_dir/.lock`, which names its holder.
    The kernel drops the lock when its process dies (kill -9 included), so a lock file left behind
    is stale exactly when it can be taken; taking it over is said in one line."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = self._holder()
            raise EditbenchError(f"{self.path.parent} is in use by another run ({holder}) — wait for it to end or "
                                 f"stop it, or give this run another out_dir") from None
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:
            print(f"[editbench] taking over the lock of a run that ended without releasing it ({previous})")
        info = f"pid {os.getpid()} on {socket.gethostname()} since {dt.datetime.now().isoformat(timespec='seconds')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self.fd = fd

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "holder unknown"
        except OSError:
            return "holder unknown"

    def release(self) -> None:
        """Empty the file, then let go. The file stays (unlinking a lock file races with a process
        that opened it just before); an empty one is a lock released cleanly."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RunStore:
    def __init__(self, run_dir: Path, keep_last: int = 2, keep_steps: frozenset[int] = frozenset()):
        """`keep_last`: how many of the newest checkpoints stay; `keep_steps`: steps that stay too."""
        self.dir = Path(run_dir)
        self.ckpt_dir = self.dir / "ckpt"
        self.keep_last, self.keep_steps = keep_last, keep_steps

    # ------------------------------------------------------------------ metrics and summary
    def write_rows(self, rows: list[dict]) -> None:
        atomic_write_text(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def mark_stopped(self, done: int, status: str = "stopped", **extra) -> None:
        """After a run ended without writing its own summary (an immediate stop, an error): a
        summary that still says "running" says `status` ("stopped", "requeued", "failed") at `done`
        (the newest complete checkpoint), so no reader takes the run for a live one."""
        path = self.dir / "summary.json"
        try:
            summary = json.loads(path.read_text())
            if summary.get("status") == "running":
                self.write_summary({**summary, "status": status, "done": done, **extra})
        except (OSError, ValueError):  # no summary yet, or no room to write one
            return

    @property
    def references_path(self) -> Path:
        return self.dir / "references.json.gz"

    def write_records(self, step: int, records: list[dict]) -> None:
        """One gzipped JSON line per scored probe at checkpoint `step` (written atomically)."""
        atomic_write_bytes(runrecords.path(self.dir, step), runrecords.encode(records))

    def write_config(self, config_yaml: str, overrides: list[str]) -> None:
        """The run's config record (the full overrides, whatever the directory's name says)."""
        atomic_write_text(self.dir / ".hydra" / "config.yaml", config_yaml)
        atomic_write_text(self.dir / ".hydra" / "overrides.yaml", "".join(f"- {o}\n" for o in overrides))

    def clear(self) -> None:
        """Forget a previous run in this directory (resume=never)."""
        shutil.rmtree(self.dir / "records", ignore_errors=True)
        shutil.rmtree(self.dir / "eval_parts", ignore_errors=True)
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        for name in ("metrics.jsonl", "summary.json", "references.json.gz"):
            (self.dir / name).unlink(missing_ok=True)

    def sweep_temporaries(self) -> None:
        """Remove temporary files a killed run left (call with the run's lock held: no one else
        is writing here)."""
        for junk in [*self.ckpt_dir.glob(".tmp_step_*"), *self.dir.glob(".*.json*"), *self.dir.glob("records/.*"),
                     *self.dir.glob("eval_parts/*/.*")]:
            if junk.is_dir():
                shutil.rmtree(junk, ignore_errors=True)
            else:
                junk.unlink(missing_ok=True)

    # ------------------------------------------------------------------ evaluation parts
    def _parts_dir(self, step: int) -> Path:
        return self.dir / "eval_parts" / f"step_{step:06d}"

    def write_eval_part(self, step: int, k: int, part: dict) -> None:
        """Part `k` of checkpoint `step`'s evaluation (written atomically): kept until the
        checkpoint's records are written, so a stop loses at most the part under way."""
        buf = io.BytesIO()
        torch.save(part, buf)
        atomic_write_bytes(self._parts_dir(step) / f"part_{k:05d}.pt", buf.getvalue())

    def eval_parts(self, step: int) -> dict[int, dict]:
        """The kept parts of checkpoint `step`'s evaluation, by number; one that does not read is
        removed (it is computed again)."""
        out = {}
        for f in sorted(self._parts_dir(step).glob("part_*.pt")):
            try:
                out[int(f.stem.removeprefix("part_"))] = torch.load(f, weights_only=False)
            except Exception:  # truncated or corrupt: the part is computed again
                f.unlink(missing_ok=True)
        return out

    def drop_eval_parts(self, keep: int | None = None) -> None:
        """Remove the kept evaluation parts (of every checkpoint but `keep`)."""
        root = self.dir / "eval_parts"
        if not root.is_dir():
            return
        for d in root.glob("step_*"):
            if keep is None or d.name != f"step_{keep:06d}":
                shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty

    # ------------------------------------------------------------------ checkpoints
    def state_sha256(self, step: int) -> str | None:
        """The SHA-256 of checkpoint `step`'s state as its meta.json records it (None: no such checkpoint)."""
        try:
            return json.loads((self.ckpt_dir / f"step_{step:06d}" / "meta.json").read_text()).get("state_sha256")
        except (OSError, ValueError):
            return None

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Write checkpoint `step`; on failure (disk full, I/O error) the previous checkpoints
        stay as they were and only this call's temporary directory is removed."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.ckpt_dir, prefix=".tmp_step_"))
        try:
            with open(tmp / "state.pt", "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            meta = {**meta, "state_sha256": sha256_file(tmp / "state.pt")}
            with open(tmp / "meta.json", "w") as f:
                f.write(json.dumps(meta, indent=2))
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            final = self.ckpt_dir / f"step_{step:06d}"
            old = None
            if final.exists():  # a checkpoint at this step already (saved before its evaluation)
                old = Path(tempfile.mkdtemp(dir=self.ckpt_dir, prefix=".tmp_step_"))
                os.replace(final, old / final.name)  # set aside, never half deleted in place
            os.replace(tmp, final)
            _fsync_dir(self.ckpt_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self._complete()[:-self.keep_last]:
            if int(old.name.removeprefix("step_")) not in self.keep_steps:
                shutil.rmtree(old, ignore_errors=True)

    def state_mb(self, step: int) -> float | None:
        """Size of checkpoint `step`'s editor state on disk (MB), None when there is none."""
        try:
            return (self.ckpt_dir / f"step_{step:06d}" / "state.pt").stat().st_size / 2**20
        except FileNotFoundError:
            return None

    def update_meta(self, step: int, **fields) -> None:
        """Add `fields` to checkpoint `step`'s meta.json (its state unchanged; written atomically)."""
        path = self.ckpt_dir / f"step_{step:06d}" / "meta.json"
        atomic_write_text(path, json.dumps({**json.loads(path.read_text()), **fields}, indent=2))

    def _complete(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.glob("step_*") if (p / "meta.json").is_file())

    def latest_meta(self) -> dict | None:
        """meta.json of the newest checkpoint that reads (no state loaded): enough to refuse a
        resume before the model loads."""
        for ckpt in reversed(self._complete()):
            try:
                return json.loads((ckpt / "meta.json").read_text())
            except (OSError, ValueError):
                continue
        return None

    def latest(self) -> tuple[dict, dict] | None:
        """(state, meta) of the newest intact checkpoint; a corrupt newer one is reported in one
        line and skipped."""
        done = self._complete()
        for i, ckpt in enumerate(reversed(done)):
            try:
                meta = json.loads((ckpt / "meta.json").read_text())
                want = meta.get("state_sha256")
                if want is not None and sha256_file(ckpt / "state.pt") != want:
                    raise ValueError("state.pt does not match the SHA-256 in meta.json")
                state = torch.load(ckpt / "state.pt", weights_only=False)
            except Exception as e:  # truncated zip, bad pickle, bad JSON, missing file
                older = done[-2 - i].name if i + 1 < len(done) else None
                reason = " ".join(str(e).split())[:120] or type(e).__name__
                if older is None:
                    raise EditbenchError(f"checkpoint {ckpt} is corrupt ({reason}) and there is no older one — start "
                                         f"over with resume=never") from None
                print(f"[editbench] checkpoint {ckpt.name} is corrupt ({reason}); resuming from {older}")
                continue
            return state, meta
        return None
