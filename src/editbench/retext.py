"""`editbench retext RUN_DIR`: add the free-text metrics a run lacks (a metric `textmetrics` gained
after the run was scored) from the texts the run kept, without editing or generating again.

A free-text probe set's record keeps the generated ids; the text scored is those ids decoded as
the evaluator decodes them, the reference answer comes from the run's own stream (rebuilt from
`RUN_DIR/.hydra/config.yaml`). For every kept `records/step_N.jsonl.gz`:

1. every metric the records already hold is computed again and must equal the kept value, and
   the row at that N must equal the mean of the kept values (over a case's probes, then over
   cases, as the evaluator averages): a run whose texts do not reproduce its scores is refused
   (rescore or re-run it instead) and nothing is written;
2. the metrics it lacks (the encoder metrics aside: they are not recomputed here) are added to
   each record's `score`, and to the row as `<set>_<metric>`, in `metric_names` after the set's
   other metrics, with `retexted: {"added": [...], "time": ...}` on the row.

A row without records (none kept at its N) is left as it is. Running it again adds nothing.
Exit status 0, or 2 with one line on bad input.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import sys
from pathlib import Path

from omegaconf import OmegaConf

from editbench import runrecords
from editbench.errors import EditbenchError

USAGE = "usage: editbench retext RUN_DIR"
#: how far a recomputed score may sit from the kept one (same code, same library: equal in practice)
TOLERANCE = 1e-9


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE


def retext_step(records: list[dict], row: dict | None, cases: dict, evaluator) -> tuple[list[str], dict[str, float]]:
    """Check and complete one checkpoint's records in place; returns the metric names added to
    them and the row values `<set>_<metric>` the row lacks (computed from the completed records)."""
    from editbench.evaluate import text_means

    by_set: dict[str, list[dict]] = {}
    for r in records:
        if isinstance(r["score"], dict):
            by_set.setdefault(r["set"], []).append(r)
    added, row_values = [], {}
    for name, recs in by_set.items():
        scorers = {cases[r["case"]].probes[name].scorer for r in recs}
        (scorer,) = scorers
        answers = [cases[r["case"]].probes[name].probes[r["i"]].answer for r in recs]
        fresh = evaluator.text_scores([r["ids"] for r in recs], answers, evaluator.TEXT_SCORERS[scorer],
                                      embeddings=False)
        for r, f in zip(recs, fresh):
            for k in f.keys() & r["score"].keys():
                if not _same(f[k], r["score"][k]):
                    raise EditbenchError(f"record {r['case']} {name}[{r['i']}]: {k} = {f[k]!r} from its kept text, "
                                         f"{r['score'][k]!r} kept — the texts do not reproduce the run's scores; "
                                         f"rescore or re-run it instead")
            added += [k for k in f if k not in r["score"]]
            # in the order scoring writes them: the recomputed metrics, then the encoder ones kept
            r["score"] = {**{k: r["score"].get(k, v) for k, v in f.items()}, **r["score"]}
        if row is None:
            continue
        per_case: dict[str, list[dict]] = {}
        for r in recs:
            per_case.setdefault(r["case"], []).append(r["score"])
        for k, v in text_means(per_case).items():
            key = f"{name}_{k}"
            if key in row and not _same(row[key], v):
                raise EditbenchError(f"row N={row['N']}: {key} = {row[key]!r} kept, {v!r} from its records — the "
                                     f"records are not the ones this row was computed from; rescore or re-run it")
            if key not in row:
                row_values[key] = v
    return sorted(set(added)), row_values


def _with_names(names: list[str], records: list[dict]) -> list[str]:
    """`names` with each free-text set's names in the order of its records' (completed) scores,
    as scoring lists them."""
    order = {}
    for r in records:
        if isinstance(r["score"], dict):
            order.setdefault(r["set"], [f"{r['set']}_{k}" for k in r["score"]])
    out, done = [], set()
    for n in names:
        split = next((s for s in order if n.startswith(s + "_")), None)
        if split is None:
            out.append(n)
        elif split not in done:
            out += order[split]
            done.add(split)
    return out


def retext(run_dir: Path, log=print) -> list[dict]:
    """Complete `run_dir`'s free-text metrics (module docstring); returns its rows."""
    from editbench.build import stream_and_evaluator
    from editbench.checkpoint import RunStore

    run_dir = Path(run_dir)
    cfg_file, rows_file = run_dir / ".hydra" / "config.yaml", run_dir / "metrics.jsonl"
    if not cfg_file.is_file() or not rows_file.is_file():
        raise EditbenchError(f"{run_dir} is not a run directory (no .hydra/config.yaml or metrics.jsonl) — pass a "
                             f"directory a run wrote")
    rows = [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()]
    steps = runrecords.steps(run_dir)
    if not steps:
        raise EditbenchError(f"{run_dir} keeps no records/ — only a run's kept texts can be scored again")
    cfg = OmegaConf.load(cfg_file)
    _, cases, evaluator = stream_and_evaluator(cfg, max(steps))
    by_id = {c.id: c for c in cases}
    store, when = RunStore(run_dir), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    todo = []
    for n in sorted(steps):  # check every step before writing any
        records = runrecords.read(steps[n])
        row = next((r for r in rows if r["N"] == n), None)
        added, values = retext_step(records, row, by_id, evaluator)
        todo.append((n, records, row, added, values))
    if not any(isinstance(r["score"], dict) for _, records, *_ in todo for r in records):
        raise EditbenchError(f"{run_dir} has no free-text probe set — retext completes free-text metrics only")
    for n, records, row, added, values in todo:
        if added:
            store.write_records(n, records)
        if values:
            row.update(values)
            row["metric_names"] = _with_names(row.get("metric_names", []), records)
            row["retexted"] = {"added": list(values), "time": when}
        log(f"[editbench] retext N={n}: {len(added)} metric(s) added to the records, {len(values)} to the row"
            + ("" if row is not None else " (no row at this N)"))
    if any(values for *_, values in todo):
        store.write_rows(rows)
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        raise EditbenchError(f"retext needs one run directory — {USAGE}")
    retext(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
