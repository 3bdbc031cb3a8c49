"""The unedited-model state cache: what every run on one model shares and never needs twice.

Two tables in one SQLite file (standard library; safe for several runs writing at once):
`site` maps a token sequence to the hidden states entering the edit-site block (the evaluator's
exact shortcut runs only the blocks above; a prompt's states are also read from a stored sequence
that starts with it), `outputs` maps (prompt ids, decode length) to the
unedited model's greedy output. One row per entry: entries are added, never rewritten, and only
the entries a batch needs are read, so memory stays flat however long the stream. The file stops
growing at `max_gb`; past it new entries are computed and not stored (said once). A file SQLite
finds corrupt (on opening or on any later read or write) is moved aside to `<name>.corrupt` and
a fresh one created, said in one line: its entries are recomputed when needed.
"""
from __future__ import annotations

import contextlib
import json
import os
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


def _corrupt(e: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (not a busy or locked database, which are also DatabaseErrors)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)
    return any(m in str(e) for m in ("malformed", "not a database"))


class StateCache:
    def __init__(self, path: Path | None, max_gb: float = 20.0):
        """`path`: the SQLite file (created with its folder); None keeps the cache in memory."""
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_gb * 2**30)
        self.full = False
        self._guarded(self._open)

    def _open(self) -> None:
        self.db = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=120)
        self.inode = os.stat(self.path).st_ino if self.path else None
        if self.path:
            self.db.execute("PRAGMA journal_mode=WAL")
        for stmt in _SCHEMA:
            self.db.execute(stmt)
        self.db.commit()

    def _guarded(self, fn, *args):
        """`fn(*args)`; on a corrupt file: move it aside, start a fresh one, and run `fn` again."""
        try:
            return fn(*args)
        except sqlite3.DatabaseError as e:
            if not self.path or not _corrupt(e):
                raise
            self._recreate(e)
            return fn(*args)

    def _recreate(self, e: sqlite3.DatabaseError) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
        try:  # another run may have replaced the file already: move it only if it is the one we opened
            same = self.inode is None or os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            same = False
        if same:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", f"{self.path}.corrupt{suffix}")
        print(f"[editbench] state cache {self.path} is corrupt ({e}); moved aside to {self.path.name}.corrupt and "
              f"recreated (its entries are recomputed when needed)", file=sys.stderr)
        self._open()

    # ------------------------------------------------------------------ reads
    def _select(self, table: str, cols: str, keys: list[bytes]) -> dict[bytes, tuple]:
        return self._guarded(self._select_now, table, cols, keys)

    def _select_now(self, table: str, cols: str, keys: list[bytes]) -> dict[bytes, tuple]:
        out = {}
        for k in range(0, len(keys), _CHUNK):
            part = keys[k:k + _CHUNK]
            q = f"SELECT key, {cols} FROM {table} WHERE key IN ({','.join('?' * len(part))})"
            out.update({row[0]: row[1:] for row in self.db.execute(q, part)})
        return out

    def get_site(self, seqs: list[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        found = self._select("site", "dtype, shape, value", [_key(s) for s in seqs])
        return {s: _from_blob(*found[_key(s)]) for s in seqs if _key(s) in found}

    def get_site_extending(self, seqs: list[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        """For each `seqs[i]` (the layer, then token ids) that some stored sequence starts with (itself
        included): the states of the first such sequence in key order, cut to `seqs[i]`'s positions
        (the unedited states at a position depend only on the tokens up to it)."""
        return self._guarded(self._extending, seqs)

    def _extending(self, seqs: list[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        out = {}
        q = "SELECT dtype, shape, value FROM site WHERE key >= ? AND key < ? ORDER BY key LIMIT 1"
        for s in dict.fromkeys(seqs):
            k = _key(s)  # keys are int64 arrays: a sequence's extensions sort in [k, k + 0xff * 9)
            row = self.db.execute(q, (k, k + b"\xff" * 9)).fetchone()
            if row is not None:
                out[s] = _from_blob(*row)[: len(s) - 1].clone()
        return out

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
            self._guarded(self._insert, "INSERT OR IGNORE INTO site VALUES (?, ?, ?, ?)",
                          [(_key(s), *_to_blob(t)) for s, t in items.items()])

    def put_outputs(self, items: dict[tuple[int, ...], list[int]]) -> None:
        if items and self._room():
            self._guarded(self._insert, "INSERT OR IGNORE INTO outputs VALUES (?, ?)",
                          [(_key(k), json.dumps(list(v))) for k, v in items.items()])

    def _insert(self, stmt: str, rows: list[tuple]) -> None:
        with self.db:
            self.db.executemany(stmt, rows)

    def size_gb(self) -> float:
        return self._guarded(self._size_gb)

    def _size_gb(self) -> float:
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        return pages * self.db.execute("PRAGMA page_size").fetchone()[0] / 2**30
