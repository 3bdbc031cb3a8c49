"""`editbench rescore RUN_DIR scoring=MODE [step=N]`: score a run's kept checkpoints under another
scoring mode, without editing again.

The run's own config (`RUN_DIR/.hydra/config.yaml`) is rebuilt with `protocol.scoring=MODE` (the
model, the stream, the unedited references under that scoring, the editor set up as the run set it
up); each kept checkpoint (`RUN_DIR/ckpt/step_NNNNNN`, or only `step=N`) restores the editor's
state, and the cases that checkpoint evaluates (every edit so far, or the protocol's seeded
retention sample) are scored, in the parts of 1,000 cases a run scores them in (kept as they
finish: a stopped rescore run again continues after them). The result is a run directory of its own, `RUN_DIR/rescore/<MODE>/`:
`metrics.jsonl` (rows with `scoring: MODE` and `rescored_from`: the run's id), `records/`,
`summary.json` and `.hydra/config.yaml`, so tables and plots keep its rows apart by scoring. A rescore
of one checkpoint (`step=N`) replaces that N's row and keeps the rows of the others; the stream is
built up to the last checkpoint scored, and the unedited references under MODE are kept in that
directory (`references.json.gz`) for the next rescore.
Which checkpoints a run keeps is `keep_checkpoints` (the newest two by default; `grid` keeps every
grid checkpoint). Exit status 0, or 2 with one line on bad input.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from editbench.errors import EditbenchError

USAGE = "usage: editbench rescore RUN_DIR scoring=greedy|teacher_forced|free [step=N]"


def parse(argv: list[str]) -> tuple[Path, str, int | None]:
    if not argv or argv[0] in ("-h", "--help"):
        raise EditbenchError(f"rescore needs a run directory and a scoring — {USAGE}")
    run_dir, opts = Path(argv[0]), {}
    for a in argv[1:]:
        key, eq, value = a.partition("=")
        if not eq or key not in ("scoring", "step"):
            raise EditbenchError(f"rescore: '{a}' is not scoring=... or step=... — {USAGE}")
        opts[key] = value
    if "scoring" not in opts:
        raise EditbenchError(f"rescore: say which scoring — {USAGE}")
    from editbench.evaluate import SCORINGS

    if opts["scoring"] not in SCORINGS:
        raise EditbenchError(f"rescore: scoring={opts['scoring']!r} is not one of {SCORINGS} — pick one of them")
    step = opts.get("step")
    if step is not None and not step.isdigit():
        raise EditbenchError(f"rescore: step={step!r} is not a whole number — give a checkpoint's N")
    return run_dir, opts["scoring"], int(step) if step is not None else None


def checkpoints(run_dir: Path, step: int | None) -> list[Path]:
    """The kept checkpoints to score (oldest first)."""
    kept = sorted(p for p in (run_dir / "ckpt").glob("step_*") if (p / "meta.json").is_file())
    if step is not None:
        kept = [p for p in kept if int(p.name.removeprefix("step_")) == step]
        if not kept:
            raise EditbenchError(f"{run_dir} keeps no checkpoint at step {step} — pick one of its ckpt/step_* "
                                 f"(re-run with keep_checkpoints=grid to keep every grid checkpoint)")
    if not kept:
        raise EditbenchError(f"{run_dir} keeps no checkpoint — re-run it with keep_checkpoints=grid (or rescore a run "
                             f"that kept its checkpoints)")
    return kept


def rescore(run_dir: Path, scoring: str, step: int | None = None, log=print) -> list[dict]:
    """Score `run_dir`'s kept checkpoints (or the one at `step`) under `scoring`; returns the rows
    written to `run_dir/rescore/<scoring>/metrics.jsonl`."""
    from editbench.build import build
    from editbench.checkpoint import RunStore
    from editbench.provenance import code_version, config_hash, git_hash, hardware, versions
    from editbench.run import eval_indices, score_in_parts

    run_dir = Path(run_dir)
    cfg_file, rows_file = run_dir / ".hydra" / "config.yaml", run_dir / "metrics.jsonl"
    if not cfg_file.is_file() or not rows_file.is_file():
        raise EditbenchError(f"{run_dir} is not a run directory (no .hydra/config.yaml or metrics.jsonl) — pass a "
                             f"directory a run wrote")
    cfg = OmegaConf.load(cfg_file)
    if cfg.protocol.scoring == scoring:
        raise EditbenchError(f"{run_dir} was scored {scoring} already — its own rows are that scoring")
    todo = checkpoints(run_dir, step)
    base = [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()]
    if not base:
        raise EditbenchError(f"{run_dir} has no result row yet — rescore a run that evaluated a checkpoint")
    cfg.protocol.scoring = scoring
    steps = [int(json.loads((c / "meta.json").read_text())["cursor"]) for c in todo]
    out = RunStore(run_dir / "rescore" / scoring)
    out.dir.mkdir(parents=True, exist_ok=True)
    # the stream up to the last checkpoint scored, not the run's whole stream (its references are the cost)
    r = build(cfg, n_cases=max(steps), references_file=out.references_path, log=log)
    out.write_config(OmegaConf.to_yaml(cfg, resolve=True), [f"rescore {run_dir} scoring={scoring}"])
    reuse = min((s.layer for s in r.editor.touches()), default=r.model.site.layer)
    static = {**{k: v for k, v in base[-1].items() if k in STATIC}, "scoring": scoring,
              "config_hash": config_hash(cfg), "run_id": f"{base[-1]['run_id']}-rescore-{scoring}",
              "rescored_from": base[-1]["run_id"],
              # what scored these rows: this process's code, libraries and machine (the edits' are the run's)
              "git_hash": git_hash(), "code_version": code_version(), "versions": versions(),
              "hardware": hardware(r.model.device)}
    kept = out.dir / "metrics.jsonl"  # rows an earlier rescore (e.g. step=N) wrote for other checkpoints
    rows = [json.loads(x) for x in kept.read_text().splitlines() if x.strip()] if kept.is_file() else []
    rows = [x for x in rows if x["N"] not in steps]
    for ckpt in todo:
        state = torch.load(ckpt / "state.pt", map_location=r.model.device, weights_only=False)
        r.editor.load_state_dict(state["editor"])
        n = int(state["cursor"])
        idx = eval_indices(n, cfg.protocol.retention, n)
        t0 = time.perf_counter()
        cases = [r.cases[i] for i in idx]
        sha = json.loads((ckpt / "meta.json").read_text()).get("state_sha256")
        records, earlier_s = score_in_parts(r.evaluator, r.editor.module(), cases, [r.refs[i] for i in idx], reuse,
                                            out, n, sha)
        scores = r.evaluator.aggregate(cases, records, overall=r.data.overall)
        same_n = next((b for b in base if b["N"] == n), {})
        row = {**static, "N": n, **scores.metrics, "metric_names": scores.names,
               **{k: same_n[k] for k in COSTS if k in same_n}, "eval_s": time.perf_counter() - t0 + earlier_s,
               "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        rows = sorted([*rows, row], key=lambda x: x["N"])
        out.write_records(n, scores.records)
        out.write_rows(rows)
        out.drop_eval_parts()
        shown = " ".join(f"{k}={row[k]:.3f}" for k in scores.names)
        log(f"[editbench] rescored N={n} ({scoring}): {shown}")
    out.write_summary({"status": "complete", "run_id": static["run_id"], "rescored_from": static["rescored_from"],
                       "scoring": scoring, "done": rows[-1]["N"], "n_edits": base[-1]["n_edits"]})
    return rows


#: the fields a rescored row keeps from the run's own rows: identity and config (scoring replaced; the
#: code, library versions and hardware are the rescoring process's own)
STATIC = ("schema", "tag", "method", "editor", "model", "data", "protocol", "protocol_version", "max_new_tokens",
          "seed", "n_edits", "hparams", "edit_layer", "edit_module", "chat_template", "touched", "model_revision",
          "data_info")
#: ... and, at the same N, what the edits cost (the edits are the run's)
COSTS = ("edit_s_mean", "edit_s_total", "editor_params", "resident_mem_gb", "peak_mem_gb", "mem_device",
         "mem_growth_gb", "editor_info", "ckpt_mb")


def main(argv: list[str]) -> int:
    run_dir, scoring, step = parse(argv)
    rows = rescore(run_dir, scoring, step)
    from editbench.run import format_table

    print(f"\n{rows[-1]['method']} | {rows[-1]['model']} | {rows[-1]['data']} | {scoring} scoring (rescored) | "
          f"{run_dir / 'rescore' / scoring}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
