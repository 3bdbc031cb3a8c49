"""A run's per-probe records: the one place that knows their file names and format.

At every checkpoint N a run writes ``records/step_NNNNNN.jsonl.gz`` in its run directory: one JSON
line per scored probe (``case``, ``set``, ``i``, ``score``, ``ids``, ``out``; docs/protocol.md),
gzipped with a zero timestamp so equal records give equal bytes.  The run store writes them
(atomically, :meth:`editbench.checkpoint.RunStore.write_records`); ``editbench diff``, ``editbench
retext``, the report's intervals and the scripts read them through here.  No torch import: the
readers run where no model is loaded.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

DIR = "records"


def path(run_dir, step: int) -> Path:
    """Where `run_dir` keeps the records of checkpoint `step`."""
    return Path(run_dir) / DIR / f"step_{int(step):06d}.jsonl.gz"


def steps(run_dir) -> dict[int, Path]:
    """The checkpoints whose records `run_dir` keeps: {N: path}, in increasing N."""
    found = {int(p.name.removeprefix("step_").split(".")[0]): p for p in (Path(run_dir) / DIR).glob("step_*.jsonl.gz")}
    return dict(sorted(found.items()))


def read(file: Path) -> list[dict]:
    """Every record of one file, in the order they were written."""
    with gzip.open(file, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def encode(records: list[dict]) -> bytes:
    """The bytes of a records file (gzip without a timestamp: the same records, the same bytes)."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    return gzip.compress(data, mtime=0)
