"""`editbench diff RUN_A RUN_B`: where two runs disagree, checkpoint by checkpoint, record by record.

Reads each run directory's `metrics.jsonl` and `records/step_NNNNNN.jsonl.gz` (one line per scored
probe: case id, probe set, probe index, score, output). For every checkpoint N both runs have, it
prints the metrics that differ and the records whose score or output ids differ (the first
`--show` of them, with both outputs). Exit status 0 when the runs agree on every shared
checkpoint, 1 when they differ (as `diff`), 2 on bad input, which includes two runs whose records
are not comparable (another dataset, protocol, protocol version, scoring, generation cap or
stream order).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from editbench import runrecords
from editbench.errors import EditbenchError


def _rows(run: Path) -> dict[int, dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise EditbenchError(f"{run} is not a run directory (no metrics.jsonl) — pass the directories two runs wrote")
    return {r["N"]: r for r in map(json.loads, path.read_text().splitlines())}


def _records(run: Path, n: int) -> dict[tuple, dict] | None:
    path = runrecords.path(run, n)
    if not path.is_file():
        return None
    return {(r["case"], r["set"], r["i"]): r for r in runrecords.read(path)}


#: what two runs must share for their records to be the same probes scored the same way
STREAM = {"data": "datasets", "protocol": "protocols", "protocol_version": "protocol versions",
          "scoring": "scoring modes", "max_new_tokens": "generation caps"}


def _same_stream(ra: dict, rb: dict) -> None:
    """Refuse two runs whose records are not comparable: another dataset, protocol (version),
    scoring, generation cap, or stream order."""
    for key, what in STREAM.items():
        if ra.get(key) != rb.get(key):
            raise EditbenchError(f"the runs are of different {what} ({key} {ra.get(key)} vs {rb.get(key)}): their "
                                 f"records are not the same probes scored the same way — compare runs of one stream")
    order = [(r.get("data_info") or {}).get(k) for r in (ra, rb) for k in ("order_seed", "skip")]
    if order[:2] != order[2:]:
        raise EditbenchError(f"the runs stream the records in different orders (order_seed, skip: {tuple(order[:2])} "
                             f"vs {tuple(order[2:])}), so their checkpoints hold different records — compare runs "
                             f"of one stream")


def diff(a: Path, b: Path, show: int = 5, out=None) -> bool:
    """Print the differences (to `out`, default the current sys.stdout); True when the runs agree
    on every checkpoint both have."""
    out = out if out is not None else sys.stdout
    rows_a, rows_b = _rows(a), _rows(b)
    if rows_a and rows_b:
        _same_stream(next(iter(rows_a.values())), next(iter(rows_b.values())))
    shared = sorted(rows_a.keys() & rows_b.keys())
    if not shared:
        raise EditbenchError(f"the runs share no checkpoint (N: {sorted(rows_a)} vs {sorted(rows_b)}) — compare runs of one stream")
    same = True
    for n in shared:
        ra, rb = rows_a[n], rows_b[n]
        names = list(dict.fromkeys([*ra.get("metric_names", ()), *rb.get("metric_names", ())]))
        moved = [f"{k} {ra.get(k, float('nan')):.4f} vs {rb.get(k, float('nan')):.4f}" for k in names if ra.get(k) != rb.get(k)]
        rec_a, rec_b = _records(a, n), _records(b, n)
        if rec_a is None or rec_b is None:
            print(f"N={n}: {'; '.join(moved) or 'metrics equal'} (no per-record file in "
                  f"{a if rec_a is None else b}: records not compared)", file=out)
            same &= not moved
            continue
        only = sorted(rec_a.keys() ^ rec_b.keys())
        differ = [k for k in sorted(rec_a.keys() & rec_b.keys())
                  if rec_a[k]["score"] != rec_b[k]["score"] or rec_a[k]["ids"] != rec_b[k]["ids"]]
        same &= not (moved or only or differ)
        print(f"N={n}: {'; '.join(moved) or 'metrics equal'}; {len(differ)} of {len(rec_a.keys() & rec_b.keys())} "
              f"records differ{f', {len(only)} in one run only' if only else ''}", file=out)
        for case, name, i in differ[:show]:
            x, y = rec_a[(case, name, i)], rec_b[(case, name, i)]
            print(f"  {case} {name}[{i}]: {x['score']:.3f} {x['out']!r}  vs  {y['score']:.3f} {y['out']!r}", file=out)
    return same


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="editbench diff", description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--show", type=int, default=5, help="records shown per checkpoint (default 5)")
    args = ap.parse_args(argv)
    try:
        return 0 if diff(args.run_a, args.run_b, args.show) else 1
    except EditbenchError as e:
        print(f"editbench: error: {e}", file=sys.stderr)
        return 2
