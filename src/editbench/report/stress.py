"""The 50,000-edit mechanics rehearsal (`make stress` -> ``<results>/stress/stress.json``): what a
run's costs do as N grows, the growth checks that hold them to the editor's documented state, and
its table and figure.

A run's `metrics.jsonl` rows already carry what is needed at each checkpoint N: the edit time so far
(`edit_s_total`), the evaluation time and how many cases it scored (`eval_s`, `n_eval`), the
resident set (`resident_mem_gb`), the checkpoint's size (`ckpt_mb`) and the unedited-state cache's
(`cache_mb`), and the editor's `state_growth`. `stress_table` turns them into per-N costs (the
per-edit time of the window since the previous checkpoint, not the running mean, so growth shows
where it happens); `growth_checks` says whether they grow as the state says they may:

- `fixed` state (weights changed in place): the per-edit time and the evaluation time per case at
  the last N within 1.5× of N = 1,000's; resident memory up by at most 100 MB; the checkpoint by at
  most 64 bytes per edit (the runner keeps each edit's time in it).
- `per_edit` state (an entry per edit, scanned by every lookup): the per-edit time and the
  evaluation time per case at the last N within the straight line through their values at 1,000
  and 10,000 edits, extended to the last N with twice its slope, plus half the 1,000-edit value for
  timing noise (a lookup over N entries makes time linear in N; anything quadratic leaves that
  line); the checkpoint growing linearly (bytes per edit over the last window within 1.5× of those
  over 1,000 … 10,000); resident memory up by at most twice the checkpoint's growth (a growing
  tensor's spare capacity) plus 100 MB.
- either: the state cache's growth per newly evaluated case (the cases a checkpoint scores for
  the first time) over the last window within 1.5× of that over 1,000 … 10,000, plus 2 KB.
"""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

STRESS_FILE = Path("stress") / "stress.json"
STATE_GROWTH = ("fixed", "per_edit")
FIRST, MID = 1_000, 10_000  # the checkpoints growth is measured from


def load_stress(results_dir) -> dict | None:
    """The rehearsal's JSON under a results directory, or None when `make stress` has not written it."""
    path = Path(results_dir) / STRESS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def stress_table(rows: list[dict], new_cases: dict[int, int] | None = None) -> list[dict]:
    """Per-checkpoint costs from a run's rows (sorted by N): the window's per-edit time, evaluation
    time (total and per scored case), resident set, checkpoint and cache size, and the metrics.
    `new_cases[N]`: how many cases checkpoint N scored for the first time (for the cache check)."""
    out, prev_n, prev_total = [], 0, 0.0
    for r in sorted(rows, key=lambda r: r["N"]):
        n, total = int(r["N"]), float(r["edit_s_total"])
        n_eval = int(r.get("n_eval") or n)
        out.append({"N": n, "edit_s": (total - prev_total) / (n - prev_n), "edit_s_mean": total / n,
                    "eval_s": float(r["eval_s"]), "n_eval": n_eval, "eval_s_per_case": float(r["eval_s"]) / n_eval,
                    "rss_gb": r.get("resident_mem_gb"), "ckpt_mb": r.get("ckpt_mb"), "cache_mb": r.get("cache_mb"),
                    "new_cases": (new_cases or {}).get(n),
                    **{k: r[k] for k in r.get("metric_names", ()) if k in r}})
        prev_n, prev_total = n, total
    return out


def _at(table: list[dict], n: int) -> dict | None:
    return next((t for t in table if t["N"] == n), None)


def _line_bound(v0: float, vm: float, n0: int, nm: int, n1: int) -> float:
    """The straight line through (n0, v0) and (nm, vm) at n1 with twice its slope (never below
    flat), plus half of v0."""
    return v0 + 2 * max(vm - v0, 0.0) * (n1 - n0) / (nm - n0) + 0.5 * v0


def growth_checks(table: list[dict], state_growth: str) -> list[dict]:
    """The growth checks of the module docstring: one dict per check (`check`, `pass`, `detail`).
    A table that does not reach past 10,000 edits fails with that reason."""
    if state_growth not in STATE_GROWTH:
        raise ValueError(f"state_growth={state_growth!r} is not one of {STATE_GROWTH}")
    first, mid, last = _at(table, FIRST), _at(table, MID), (table[-1] if table else None)
    if first is None or mid is None or last["N"] <= MID:
        return [{"check": "coverage", "pass": False,
                 "detail": f"needs checkpoints at {FIRST:,} and {MID:,} and one past {MID:,} "
                           f"(has {[t['N'] for t in table]})"}]
    n0, nm, n1 = FIRST, MID, last["N"]
    fixed = state_growth == "fixed"
    checks = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "pass": bool(ok), "detail": detail})

    # per-edit time
    t0, tm, t1 = first["edit_s"], mid["edit_s"], last["edit_s"]
    bound = 1.5 * t0 if fixed else _line_bound(t0, tm, n0, nm, n1)
    add("edit time", t1 <= bound, f"{t1 * 1e3:.1f} ms/edit at {n1:,} vs {t0 * 1e3:.1f} at {n0:,}, {tm * 1e3:.1f} at "
        f"{nm:,}; bound {bound * 1e3:.1f}")
    # evaluation time per scored case, from the first checkpoint that scores the full sample
    full = [t for t in table if t["N"] >= n0 and t["n_eval"] == last["n_eval"]]
    e_first = full[0]
    e_mid = next((t for t in full if t["N"] >= nm), last)
    e0, em, e1 = e_first["eval_s_per_case"], e_mid["eval_s_per_case"], last["eval_s_per_case"]
    if fixed or e_mid["N"] in (e_first["N"], n1):
        bound = 1.5 * e0
    else:
        bound = _line_bound(e0, em, e_first["N"], e_mid["N"], n1)
    add("eval time per case", e1 <= bound, f"{e1 * 1e3:.2f} ms/case at {n1:,} vs {e0 * 1e3:.2f} at "
        f"{e_first['N']:,}; bound {bound * 1e3:.2f}")
    # checkpoint size
    c0, cm, c1 = first["ckpt_mb"], mid["ckpt_mb"], last["ckpt_mb"]
    if None in (c0, cm, c1):
        add("checkpoint", False, "rows without ckpt_mb (written by an older editbench)")
    elif fixed:
        per_edit = (c1 - c0) * 2**20 / (n1 - n0)
        add("checkpoint", per_edit <= 64, f"{c0:.2f} MB at {n0:,} -> {c1:.2f} MB at {n1:,} "
            f"({per_edit:.1f} B/edit; bound 64)")
    else:
        prev = table[-2]
        early, late = (cm - c0) * 2**20 / (nm - n0), (c1 - prev["ckpt_mb"]) * 2**20 / (n1 - prev["N"])
        add("checkpoint", 0 < late <= 1.5 * early, f"{late:.0f} B/edit over the last window vs {early:.0f} over "
            f"{n0:,}…{nm:,}; linear growth expected")
    # resident memory
    if None in (first["rss_gb"], last["rss_gb"]):
        add("memory", False, "rows without resident_mem_gb")
    else:
        grown = (last["rss_gb"] - first["rss_gb"]) * 1024
        bound = 100.0 if fixed or None in (c0, c1) else 2 * (c1 - c0) + 100.0
        add("memory", grown <= bound, f"resident set +{grown:.0f} MB from {n0:,} to {n1:,}; bound {bound:.0f} MB")
    # state cache
    if first["cache_mb"] is None or last["cache_mb"] is None or mid.get("new_cases") is None:
        add("cache", False, "rows without cache_mb or new-case counts")
    else:
        new_early = sum(t["new_cases"] for t in table if n0 < t["N"] <= nm)
        prev = table[-2]
        early = (mid["cache_mb"] - first["cache_mb"]) * 2**20 / max(new_early, 1)
        late = (last["cache_mb"] - prev["cache_mb"]) * 2**20 / max(last["new_cases"], 1)
        bound = 1.5 * early + 2048
        add("cache", late <= bound, f"{late:.0f} B per newly scored case over the last window vs {early:.0f} over "
            f"{n0:,}…{nm:,}; bound {bound:.0f}")
    return checks


def stress_markdown(stress: dict) -> str:
    """The rehearsal as Markdown: its conditions, a per-N cost table per editor, the checks."""
    meta = stress["meta"]
    out = [f"Measured by `make stress` ({meta['time']}; model={meta['model']}, data={meta['data']} "
           f"(generated facts), {meta['threads']} thread(s), a retention sample of {meta['max_eval']:,} cases per "
           f"checkpoint; {meta['note']}). s/edit is the window since the previous checkpoint.", ""]
    for ed in stress["editors"]:
        verdict = "PASS" if all(c["pass"] for c in ed["checks"]) else "**FAIL**"
        out += [f"**{ed['label']}** (state: {ed['state_growth']}; `{ed['command']}`) — growth checks {verdict}", "",
                "| N | s/edit | eval s | n_eval | RSS GB | ckpt MB | cache MB | Rel | Gen | Loc |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for t in ed["table"]:
            cells = [f"{t['N']:,}", f"{t['edit_s']:.4f}", f"{t['eval_s']:.1f}", f"{t['n_eval']:,}",
                     _num(t["rss_gb"], 2), _num(t["ckpt_mb"], 2), _num(t["cache_mb"], 1),
                     _num(t.get("rel"), 3), _num(t.get("gen"), 3), _num(t.get("loc"), 3)]
            out.append("| " + " | ".join(cells) + " |")
        out += [""] + [f"- {c['check']}: {'PASS' if c['pass'] else '**FAIL**'} — {c['detail']}" for c in ed["checks"]]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _num(v, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


PANELS = [("edit_s", "s / edit (window)"), ("eval_s_per_case", "eval s / scored case"), ("rss_gb", "resident set (GB)"),
          ("ckpt_mb", "checkpoint (MB)"), ("cache_mb", "state cache (MB)")]


def plot_stress(stress: dict) -> Figure | None:
    """One panel per cost (per-edit time, evaluation time per case, resident set, checkpoint size,
    cache size) against N on a log axis, one line per editor."""
    editors = [ed for ed in stress["editors"] if ed["table"]]
    if not editors:
        return None
    fig = Figure(figsize=(16, 3.6), layout="constrained")
    for ax, (key, title) in zip(fig.subplots(1, len(PANELS)), PANELS):
        for i, ed in enumerate(editors):  # editors with equal values (same state, same cache) overlap: dashes tell
            pts = [(t["N"], t[key]) for t in ed["table"] if t.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=5 - 1.5 * (i % 3), ls=("-", "--", ":")[i % 3], lw=2.2 - 0.6 * (i % 3),
                        label=ed["label"])
        ax.set_xscale("log")
        ax.set_xlabel("edits N")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"make stress: {stress['meta']['model']}, {stress['meta']['n_edits']:,} generated edits (N on a log "
                 f"axis: linear growth curves up)", fontsize=11)
    return fig
