"""The unedited-model state cache: what every run on one model shares and never needs twice.

Two tables in one SQLite file (standard library; safe for several runs writing at once):
`site` maps a token sequence to the hidden states entering the edit-site block (the evaluator's
exact shortcut runs only the blocks above), `outputs` maps (prompt ids, decode length) to the
unedited model's greedy output. One row per entry: entries are added, never rewritten, and only
the entries a batch needs are read, so memory stays flat however long the stream. The file stops
growing at `max_gb`; past it new entries are computed and not stored (said once).
"""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

_SCHEMA = ("CREATE TABLE IF NOT EXISTS site (key BLOB PRIMARY KEY, dtype TEXT, shape TEXT, value BLOB)",
           "CREATE TABLE IF NOT EXISTS outputs (key BLOB PRIMARY KEY, value TEXT)")
_CHUNK = 500  # keys per SELECT (SQLite's variable limit is 999 on old builds)


def _key(ids: Iterable[int]) -> bytes:
    return np.asarray(list(ids), dtype=np.int64).tobytes()


def _to_blob(t: torch.Tensor) -> tuple[str, str, bytes]:
    t = t.detach().cpu().contiguous()
    return str(t.dtype).removeprefix("torch."), json.dumps(list(t.shape)), t.view(torch.uint8).numpy().tobytes()


def _from_blob(dtype: str, shape: str, blob: bytes) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(json.loads(shape))


class StateCache:
    def __init__(self, path: Path | None, max_gb: float = 20.0):
        """`path`: the SQLite file (created with its folder); None keeps the cache in memory."""
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=120)
        if self.path:
            self.db.execute("PRAGMA journal_mode=WAL")
        for stmt in _SCHEMA:
            self.db.execute(stmt)
        self.db.commit()
        self.max_bytes = int(max_gb * 2**30)
        self.full = False

    # ------------------------------------------------------------------ reads
    def _select(self, table: str, cols: str, keys: list[bytes]) -> dict[bytes, tuple]:
        out = {}
        for k in range(0, len(keys), _CHUNK):
            part = keys[k:k + _CHUNK]
            q = f"SELECT key, {cols} FROM {table} WHERE key IN ({','.join('?' * len(part))})"
            out.update({row[0]: row[1:] for row in self.db.execute(q, part)})
        return out

    def get_site(self, seqs: list[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        found = self._select("site", "dtype, shape, value", [_key(s) for s in seqs])
        return {s: _from_blob(*found[_key(s)]) for s in seqs if _key(s) in found}

    def get_outputs(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
        found = self._select("outputs", "value", [_key(k) for k in keys])
        return {k: json.loads(found[_key(k)][0]) for k in keys if _key(k) in found}

    # ------------------------------------------------------------------ writes
    def _room(self) -> bool:
        if not self.full and self.path and self.size_gb() * 2**30 >= self.max_bytes:
            self.full = True
            print(f"[editbench] state cache {self.path} reached cache_max_gb={self.max_bytes / 2**30:g}: new "
                  f"entries are computed, not stored", file=sys.stderr)
        return not self.full

    def put_site(self, items: dict[tuple[int, ...], torch.Tensor]) -> None:
        if items and self._room():
            with self.db:
                self.db.executemany("INSERT OR IGNORE INTO site VALUES (?, ?, ?, ?)",
                                    [(_key(s), *_to_blob(t)) for s, t in items.items()])

    def put_outputs(self, items: dict[tuple[int, ...], list[int]]) -> None:
        if items and self._room():
            with self.db:
                self.db.executemany("INSERT OR IGNORE INTO outputs VALUES (?, ?)",
                                    [(_key(k), json.dumps(list(v))) for k, v in items.items()])

    def size_gb(self) -> float:
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        return pages * self.db.execute("PRAGMA page_size").fetchone()[0] / 2**30
