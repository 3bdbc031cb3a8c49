"""Resume as a contract: atomic checkpoints of everything a run has computed.

Layout of a run directory:
  metrics.jsonl     one row per completed checkpoint (rewritten atomically at each checkpoint)
  summary.json      {"status": "running" | "complete", ...}; "complete" only after the last checkpoint
  records/step_NNNNNN.jsonl.gz   per-probe scores and outputs at each checkpoint (audit, `editbench diff`)
  ckpt/step_NNNNNN/ state.pt (editor state, stream cursor, RNG states, per-edit costs) + meta.json
A checkpoint directory is written under a temporary name and renamed into place, so a directory
named step_* is always complete; a kill at any moment loses at most the edits since the last one.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class RunStore:
    def __init__(self, run_dir: Path, keep_last: int = 1):
        self.dir = Path(run_dir)
        self.ckpt_dir = self.dir / "ckpt"
        self.keep_last = keep_last

    # ------------------------------------------------------------------ metrics and summary
    def write_rows(self, rows: list[dict]) -> None:
        atomic_write_text(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def write_records(self, step: int, records: list[dict]) -> None:
        """One gzipped JSON line per scored probe at checkpoint `step` (written atomically)."""
        path = self.dir / "records" / f"step_{step:06d}.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
        os.replace(tmp, path)

    def clear(self) -> None:
        """Forget a previous run in this directory (resume=never)."""
        shutil.rmtree(self.dir / "records", ignore_errors=True)
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        for name in ("metrics.jsonl", "summary.json"):
            (self.dir / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int, state: dict, meta: dict) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.ckpt_dir, prefix=".tmp_step_"))
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        final = self.ckpt_dir / f"step_{step:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self._complete()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for junk in self.ckpt_dir.glob(".tmp_step_*"):  # left by a kill mid-save
            shutil.rmtree(junk, ignore_errors=True)

    def _complete(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.glob("step_*") if (p / "meta.json").is_file())

    def latest(self) -> tuple[dict, dict] | None:
        done = self._complete()
        if not done:
            return None
        last = done[-1]
        return torch.load(last / "state.pt", weights_only=False), json.loads((last / "meta.json").read_text())
