"""Synthetic results trees for the report tests: rows shaped like the runner's metrics.jsonl.

``make_tree(root)`` writes 2 methods x 2 seeds x N = 10, 100 (model qwen25_7b, data zsre,
protocol lifelong_v1 v1, greedy) with the numbers in ``VALUES``; GRACE seed 1 has no
summary.json (a partial run); no run has records/.  ``write_run`` and ``row`` build anything
else a test needs; ``write_recorded_run`` a run with records/ and the rows they give.
"""

from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

from editbench.metrics import OP

# (method, seed, N) -> (rel, gen, loc, op); chosen so means/stds are easy to check by hand.
VALUES = {
    ("HoReN", 0, 10): (1.00, 0.90, 1.00, 0.96),
    ("HoReN", 1, 10): (0.98, 0.86, 1.00, 0.94),
    ("HoReN", 0, 100): (0.96, 0.80, 0.98, 0.90),
    ("HoReN", 1, 100): (0.98, 0.84, 0.96, 0.92),
    ("GRACE", 0, 10): (1.00, 0.10, 1.00, 0.40),
    ("GRACE", 1, 10): (1.00, 0.06, 1.00, 0.30),
    ("GRACE", 0, 100): (0.99, 0.05, 1.00, 0.30),
    ("GRACE", 1, 100): (0.97, 0.03, 1.00, 0.20),
}
EDITORS = {"HoReN": "horen", "GRACE": "grace"}


def row(method="HoReN", seed=0, N=10, rel=1.0, gen=1.0, loc=1.0, op=1.0, **overrides) -> dict:
    """One schema-1 metrics row with plausible defaults; keyword overrides win."""
    data = {
        "schema": 1, "run_id": f"{method}-s{seed}", "tag": "main",
        "method": method, "editor": EDITORS.get(method, method.lower()),
        "model": "qwen25_7b", "data": "zsre",
        "protocol": "lifelong_v1", "protocol_version": 1, "scoring": "greedy",
        "seed": seed, "n_edits": 100, "N": N, "n_eval": N,
        "rel": rel, "gen": gen, "loc": loc, "op": op,
        "edit_s_mean": 0.01 * (seed + 1), "edit_s_total": 0.01 * (seed + 1) * N,
        "eval_s": 0.5, "peak_mem_gb": 1.0 + 0.1 * seed, "resident_mem_gb": 0.5 + N / 1000,
        "editor_params": 4096 * N,
        "hparams": {"threshold": 0.7, "pooling_ratio": 0.6, "hopfield_steps": 1, "seed": seed},
        "edit_layer": 20, "chat_template": False, "config_hash": "abc123", "git_hash": "deadbeef",
        "versions": {"torch": "2.4"}, "time": f"2025-01-01T00:00:{seed:02d}",
    }
    data.update(overrides)
    return data


def write_run(root: Path, name: str, rows: list[dict], complete: bool | None = True) -> Path:
    """Write ``root/name/metrics.jsonl`` (+ summary.json unless ``complete`` is None)."""
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if complete is not None:
        summary = {"status": "complete" if complete else "running",
                   "run_id": rows[-1]["run_id"] if rows else name, "final": rows[-1] if rows else None}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def make_tree(root: Path) -> Path:
    """The standard tree: 2 methods x 2 seeds x N = 10, 100; GRACE seed 1 is partial."""
    root = Path(root)
    for method in ("HoReN", "GRACE"):
        for seed in (0, 1):
            rows = [row(method, seed, N, *VALUES[(method, seed, N)]) for N in (10, 100)]
            partial = method == "GRACE" and seed == 1
            write_run(root / method.lower(), f"seed{seed}", rows, complete=None if partial else True)
    return root


def add_calibration(root: Path) -> Path:
    """A HoReN threshold x pooling_ratio sweep (tag calibration), one seed, N = 10."""
    for threshold in (0.6, 0.7, 0.8):
        for ratio in (0.4, 0.6):
            gen = round(0.5 + threshold / 2 - ratio / 4, 3)
            loc = round(1.2 - threshold / 2 - ratio / 4, 3)
            r = row("HoReN", 0, 10, 1.0, gen, loc, round((gen + loc) / 2, 3), tag="calibration",
                    hparams={"threshold": threshold, "pooling_ratio": ratio, "hopfield_steps": 1})
            write_run(root / "calibration", f"t{threshold}_p{ratio}", [r])
    return root


# ------------------------------------------------------------------------------------- records/

def write_records(run_dir: Path, N: int, cases: dict[str, dict[str, list]]) -> Path:
    """``run_dir/records/step_NNNNNN.jsonl.gz`` as the runner writes it: one line per probe;
    ``cases``: case id -> probe set -> the scores of its probes (numbers, or dicts for free text)."""
    path = Path(run_dir) / "records" / f"step_{N:06d}.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"case": case, "set": name, "i": i, "score": score, "out": "", "ids": []}
             for case, sets in cases.items() for name, scores in sets.items() for i, score in enumerate(scores)]
    path.write_bytes(gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode(), mtime=0))
    return path


def case_means(cases: dict[str, dict[str, list]]) -> dict[str, float]:
    """The runner's metrics of some cases (docs/protocol.md#metrics): per set, the mean over the
    cases that have it of the mean over the case's probes; OP from editbench.metrics."""
    names = list(dict.fromkeys(name for sets in cases.values() for name in sets))
    values = {name: statistics.mean(statistics.mean(sets[name]) for sets in cases.values() if name in sets)
              for name in names}
    if all(part in values for part in OP.parts):
        values[OP.name] = OP(values)
    return values


def write_recorded_run(root: Path, name: str, method: str, cases_by_n: dict[int, dict[str, dict[str, list]]],
                       seed: int = 0, **overrides) -> Path:
    """A run whose metrics.jsonl rows are computed from its records (:func:`case_means`) and whose
    records/ hold them; ``overrides`` go into every row."""
    rows = []
    for N, cases in cases_by_n.items():
        values = case_means(cases)
        rows.append(row(method, seed, N, **{**values, "metric_names": list(values), **overrides}))
    run_dir = write_run(root, name, rows)
    for N, cases in cases_by_n.items():
        write_records(run_dir, N, cases)
    return run_dir
