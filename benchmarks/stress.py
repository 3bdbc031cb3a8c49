"""`make stress`: the 50,000-edit mechanics rehearsal (not part of CI; about an hour per editor on
one core).

Runs `python -m editbench` on the tiny random model over a stream of generated facts
(`data=synthetic`, `editbench.data.synthetic`) through the protocol's whole grid to `--n` edits
(default 50,000), for HoReN, GRACE+Norm and FT-L (a weight editor), one after the other, each with
a seeded retention sample of `--max-eval` cases per checkpoint (recorded as `n_eval`), resume on:
interrupted, the same command continues where each run stopped. Each editor's steps per edit are
capped at `--n-iter` (the rehearsal measures how costs grow with N, not how well the tiny random
model learns the facts). Each run gets a state cache of its own, emptied when the run starts from
nothing, so the cache sizes are the run's.

Then it reads every run's rows, builds the per-N cost table (`editbench.report.stress`), applies
the growth checks, writes ``<results>/stress/stress.json`` (plotted and tabled by `make figures`)
and exits 1 if a check fails. `--check-only` redoes that last part from the committed rows.

    python benchmarks/stress.py                    # all three editors, 50,000 edits
    python benchmarks/stress.py --editors horen --n 20000
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from editbench.checkpoint import atomic_write_text
from editbench.report.stress import STRESS_FILE, growth_checks, stress_table
from editbench.run import checkpoint_grid, eval_indices

ROOT = Path(__file__).resolve().parents[1]
# label -> (editor group name in the run directory, overrides)
EDITORS = {
    "horen": ("HoReN", "horen", ["editor=horen"]),
    "grace_norm": ("GRACE+Norm", "horen", ["editor=horen", "experiment=grace_norm"]),
    "ft": ("FT-L", "ft", ["editor=ft"]),
}
MODEL, DATA = "tiny_llama", "synthetic"
GRID = OmegaConf.load(ROOT / "src/editbench/conf/protocol/lifelong_v1.yaml").checkpoints


def overrides(key: str, args) -> list[str]:
    return [*EDITORS[key][2], f"editor.n_iter={args.n_iter}", f"protocol.retention.max_eval={args.max_eval}"]


def command(key: str, args, cache: Path) -> list[str]:
    size = [f"data.size={args.n}"] if args.n > 50_000 else []  # the generator's default: 50,000 records
    return [sys.executable, "-m", "editbench", *overrides(key, args), f"model={MODEL}", f"data={DATA}", *size,
            f"n_edits={args.n}", f"out_dir={args.results / 'stress'}", "tag=stress", "threads=1", f"cache_dir={cache}"]


def _shown(arg: str) -> str:
    """A command-line argument as recorded: paths inside the repository relative to it."""
    key, _, value = arg.partition("=")
    if value.startswith(str(ROOT) + os.sep):
        return f"{key}={os.path.relpath(value, ROOT)}"
    return arg


def new_cases(n: int, max_eval: int) -> dict[int, int]:
    """Per grid checkpoint: how many cases it scores that no earlier checkpoint scored."""
    retention = OmegaConf.create({"mode": "all_so_far", "max_eval": max_eval, "sample_seed": 0})
    seen: set[int] = set()
    out = {}
    for g in checkpoint_grid(GRID, n):
        idx = set(eval_indices(g, retention, g))
        out[g] = len(idx - seen)
        seen |= idx
    return out


def find_run(key: str, args) -> Path | None:
    """The run directory of `key` (found by its recorded command, whatever Hydra named it)."""
    base = args.results / "stress" / DATA / MODEL / EDITORS[key][1]
    want = sorted(overrides(key, args))
    for d in sorted(base.glob(f"n{args.n}_s0*")) if base.is_dir() else []:
        ov = d / ".hydra" / "overrides.yaml"
        if ov.is_file():
            have = [line.removeprefix("- ").strip() for line in ov.read_text().splitlines() if line.strip()]
            if all(o in have for o in want) and len([o for o in have if o.startswith("experiment=")]) == \
                    len([o for o in want if o.startswith("experiment=")]):
                return d
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="edits per stream (default 50,000)")
    ap.add_argument("--editors", default=",".join(EDITORS), help=f"comma-separated subset of {','.join(EDITORS)}")
    ap.add_argument("--max-eval", type=int, default=2_000, help="retention sample per checkpoint (default 2,000)")
    ap.add_argument("--n-iter", type=int, default=10, help="steps per edit, every editor (default 10)")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--cache-root", type=Path, default=Path(os.environ.get("EDITBENCH_CACHE", "~/.cache/editbench"))
                    .expanduser() / "stress")
    ap.add_argument("--check-only", action="store_true", help="only rebuild stress.json from the runs' rows")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.editors.split(",") if k.strip()]
    if bad := [k for k in keys if k not in EDITORS]:
        print(f"stress: unknown editor(s) {bad} — use a subset of {','.join(EDITORS)}", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not args.check_only:
        for key in keys:
            cache = args.cache_root / key
            found = find_run(key, args)
            if found is None or not (found / "metrics.jsonl").is_file():
                shutil.rmtree(cache, ignore_errors=True)  # a run from nothing: its cache from nothing too
            cmd = command(key, args, cache)
            print("stress:", " ".join(cmd[1:]), flush=True)
            rc = subprocess.call(cmd, cwd=ROOT, env=env)
            if rc != 0:
                print(f"stress: {EDITORS[key][0]} exited {rc} — re-run the same command to resume", file=sys.stderr)
                return rc
    counts = new_cases(args.n, args.max_eval)
    editors, failed = [], False
    for key in keys:
        d = find_run(key, args)
        if d is None or not (d / "metrics.jsonl").is_file():
            print(f"stress: no run of {EDITORS[key][0]} under {args.results / 'stress'} — run without --check-only",
                  file=sys.stderr)
            return 2
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        table = stress_table(rows, counts)
        growth = rows[-1].get("state_growth", "fixed")
        checks = growth_checks(table, growth)
        failed |= not all(c["pass"] for c in checks)
        editors.append({"key": key, "label": EDITORS[key][0], "state_growth": growth,
                        "run": d.relative_to(args.results).as_posix(),
                        "command": "python -m editbench " + " ".join(_shown(a) for a in command(key, args, Path("CACHE"))[3:]),
                        "table": table, "checks": checks})
        for c in checks:
            print(f"stress: {EDITORS[key][0]:<11} {c['check']:<19} {'PASS' if c['pass'] else 'FAIL'}  {c['detail']}")
    meta = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "n_edits": args.n,
            "max_eval": args.max_eval, "n_iter": args.n_iter, "model": MODEL, "data": DATA, "threads": 1,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "note": f"steps per edit capped at {args.n_iter}; timings share the machine with whatever else ran"}
    out = args.results / STRESS_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"meta": meta, "editors": editors}, indent=1) + "\n")
    print(f"stress: wrote {out}" + (" — a growth check FAILED" if failed else " — every growth check passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
