"""The routing capacity study (`scripts/routing_capacity.py` -> ``<results>/capacity/<data>_<model>.json``)
as figures, one per study file: ``capacity_<data>_<model>.png|pdf``.

One column per variant (HoReN as configured, GRACE+Norm, M = 2, τ ∓ 0.05). Top row: how the
paraphrases (Gen probes) of the first N edits are routed — to their own entry, to a wrong entry,
to none — with the committed full runs' Gen as points. Bottom row: the share of locality prompts
routed to any entry (false retrieval; dotted: the part routed to the entry of the prompt's own
case), with the runs' 1 − Loc as points (a retrieved prompt loses
Loc only when the added value changes its answer, so 1 − Loc sits at or under the curve). N axes
are logarithmic; each fitted rate continues past the last measured N as a dashed line to the
projection at 50,000 edits, in a band: the 95 % bootstrap interval over cases. The projection is
an extrapolation of a two-parameter curve; the band does not cover the choice of curve.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

CAPACITY_DIR = Path("capacity")
#: (rate key, legend label, colour, dash, marker) of the paraphrase panels
GEN_SERIES = [("own", "own entry", "#2ca02c", "-", "o"), ("wrong", "wrong entry", "#ff7f0e", "--", "s"),
              ("no_match", "no match", "#7f7f7f", ":", "^")]
FR_COLOR = "#d62728"
RUN_MARKERS = ["D", "X", "P", "v", "*", "h"]


def load_capacity(results_dir) -> list[dict]:
    """Every study file under ``<results_dir>/capacity/`` (none: an empty list)."""
    folder = Path(results_dir) / CAPACITY_DIR
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _run_label(method: str, run: str) -> str:
    """The method, plus the editor overrides its run directory names (``editor.lora_lr-1e-2`` ->
    ``[lora_lr=1e-2]``)."""
    parts = run.split("+")
    parts[0] = parts[0].split("_", 2)[-1]  # n<N>_s<seed>_<first override>
    extra = [p.removeprefix("editor.").replace("-", "=", 1) for p in parts if p.startswith("editor.")]
    return f"{method} [{', '.join(extra)}]" if extra else method


def _runs(var: dict) -> dict[str, list[dict]]:
    """Matched runs by label; runs whose checkpoints repeat another's exactly are drawn once."""
    out: dict[str, list[dict]] = {}
    seen = set()
    for comp in var.get("runs", []):
        pts = [(c["N"], c["run"].get("gen"), c["run"].get("loc")) for c in comp["checkpoints"]]
        key = (comp["method"], tuple(pts))
        if key in seen or not pts:
            continue
        seen.add(key)
        out.setdefault(_run_label(comp["method"], comp["run"]), []).extend(comp["checkpoints"])
    return out


def _band(ax, fit: dict, color: str, flip_label: str | None = None) -> None:
    band = fit.get("band") or []
    if not band:
        return
    Ns = [b["N"] for b in band]
    ax.plot(Ns, [b["estimate"] for b in band], ls="--", color=color, lw=1.2, alpha=0.9)
    ax.fill_between(Ns, [b["lo"] for b in band], [b["hi"] for b in band], color=color, alpha=0.15, lw=0)
    p = fit["projection"]
    ax.errorbar([p["N"]], [p["estimate"]], yerr=[[p["estimate"] - p["lo"]], [p["hi"] - p["estimate"]]],
                fmt="none", ecolor=color, capsize=3, lw=1)


def plot_capacity(study: dict) -> Figure:
    variants = study["variants"]
    n = len(variants)
    fig = Figure(figsize=(3.3 * n, 7.4), layout="constrained")
    axes = fig.subplots(2, n, sharex=True, sharey="row", squeeze=False)
    fr_max = 0.0
    handles: dict[str, Line2D] = {}
    run_markers: dict[str, str] = {}
    project_n = None
    for col, var in enumerate(variants):
        top, bottom = axes[0, col], axes[1, col]
        per = var["per_N"]
        grid = [r for r in per if r["N"] >= 100]
        Ns = [r["N"] for r in grid]
        for key, label, color, dash, marker in GEN_SERIES:
            (h,) = top.plot(Ns, [r["gen"][key] for r in grid], ls=dash, marker=marker, ms=4, color=color, lw=1.5)
            handles.setdefault(f"paraphrases: {label}", h)
            fit = var.get("fit", {}).get("gen", {}).get(key)
            if fit:
                _band(top, fit, color)
                project_n = fit["projection"]["N"]
        if "rel" in grid[0]:
            (h,) = top.plot(Ns, [r["rel"]["own"] for r in grid], color="black", lw=0.8, alpha=0.6)
            handles.setdefault("edit prompts: own entry", h)
        loc = next((k for k, v in grid[0].items() if isinstance(v, dict) and "false_retrieval" in v), None)
        if loc:
            fr = [r[loc]["false_retrieval"] for r in grid]
            (h,) = bottom.plot(Ns, fr, color=FR_COLOR, marker="o", ms=4, lw=1.5)
            handles.setdefault("locality prompts: false retrieval", h)
            fr_max = max(fr_max, *fr)
            if "own_case_entry" in grid[0][loc]:
                (h,) = bottom.plot(Ns, [r[loc]["own_case_entry"] for r in grid], color=FR_COLOR, ls=":", lw=1.2)
                handles.setdefault("… of which to the entry of the prompt's own case", h)
            fit = var.get("fit", {}).get(loc, {}).get("false_retrieval")
            if fit:
                _band(bottom, fit, FR_COLOR)
                fr_max = max(fr_max, fit["projection"]["hi"])
        for label, cps in _runs(var).items():
            m = run_markers.setdefault(label, RUN_MARKERS[len(run_markers) % len(RUN_MARKERS)])
            cps = [c for c in cps if c["N"] >= 100]
            top.plot([c["N"] for c in cps], [c["run"].get("gen") for c in cps], ls="none", marker=m, ms=6,
                     mfc="#1b5e20", mec="black", mew=0.6)
            bottom.plot([c["N"] for c in cps], [1 - c["run"]["loc"] for c in cps if c["run"].get("loc") is not None],
                        ls="none", marker=m, ms=6, mfc="none", mec="black", mew=0.9)
            handles.setdefault(f"run: {label} (Gen top, 1 − Loc bottom)",
                               Line2D([], [], ls="none", marker=m, ms=6, mfc="#9e9e9e", mec="black", mew=0.6))
        r = var["routing"]
        name = var["name"].replace("tau=", "τ = ")
        top.set_title(f"{name}\nτ {r['threshold']:g}, M {r['hopfield_steps']}, ρ {r['pooling_ratio']:g}, "
                      f"β {r['beta']:g}, α {r['alpha']:g}", fontsize=9)
        last = per[-1]
        bottom.set_xlabel(f"N edits (log)\n{last['entries']:,} entries after {last['N']:,} edits", fontsize=8)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.tick_params(labelsize=8)
            if project_n:
                ax.axvline(Ns[-1], color="black", lw=0.5, alpha=0.4)
    axes[0, 0].set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("share of paraphrases (Gen probes)", fontsize=9)
    axes[1, 0].set_ylim(-0.002, min(1.0, max(0.02, fr_max * 1.15)))
    axes[1, 0].set_ylabel("share of locality prompts retrieved", fontsize=9)
    if project_n:
        handles[f"fit, projected to {project_n:,} (95 % bootstrap band over cases)"] = Line2D([], [], ls="--",
                                                                                              color="black")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    title = (f"HoReN routing capacity (routing only, no values trained): {study['data']} · {study['model']} · "
             f"first {study['n_cases']:,} edits of the stream (pool {study['pool']:,})")
    fitted = next((f for v in variants for f in [v.get("fit", {}).get("gen", {}).get("own")] if f), None)
    if fitted:
        Ns = fitted["fit_N"]
        title += (f"\nfits over N = {', '.join(f'{N:,}' for N in Ns)}; the projection to {project_n:,} is an "
                  f"extrapolation ({project_n / Ns[-1]:.0f}× the last measured N)")
    fig.suptitle(title, fontsize=10)
    return fig


DAMPING_MARKERS = {0: "*", 1: "o", 2: "s", 3: "^"}


def _damping_point(var: dict, N: int, acc: str, loc: str):
    """(false retrieval, own rate, their intervals) of one variant at checkpoint N, or None."""
    at = next((p for p in var["per_N"] if p["N"] == N), None)
    if at is None or acc not in at or loc not in at:
        return None
    ci = at.get("ci", {})
    x, y = at[loc]["false_retrieval"], at[acc]["own"]
    xl, xh = ci.get(loc, {}).get("false_retrieval", [x, x])
    yl, yh = ci.get(acc, {}).get("own", [y, y])
    return x, y, (x - xl, xh - x), (y - yl, yh - y)


def plot_damping(study: dict, acc: str = "gen", loc: str = "loc") -> Figure:
    """The damping ablation as a Gen-vs-Loc trade-off: per checkpoint (1,000 and the largest), each
    (α, M) variant's paraphrases routed to their own entry against locality prompts falsely
    retrieved, with 95 % bootstrap intervals over cases; colour = α, marker = M (★ = GRACE+Norm,
    no Hopfield step)."""
    import matplotlib as mpl

    Ns = [N for N in (1000, study["n_cases"]) if N in study["checkpoints"]] or study["checkpoints"][-1:]
    alphas = sorted({v["alpha"] for v in study["variants"] if v["steps"] > 0})
    cmap = mpl.colormaps["viridis"]
    colour = {a: cmap(i / max(len(alphas) - 1, 1)) for i, a in enumerate(alphas)}
    fig = Figure(figsize=(5.2 * len(Ns) + 1.6, 4.6), layout="constrained")
    axes = fig.subplots(1, len(Ns), squeeze=False)[0]
    for ax, N in zip(axes, Ns):
        for var in study["variants"]:
            pt = _damping_point(var, N, acc, loc)
            if pt is None:
                continue
            x, y, xerr, yerr = pt
            c = "k" if var["steps"] == 0 else colour[var["alpha"]]
            ax.errorbar([x], [y], xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="none", ecolor=c,
                        alpha=0.6, capsize=2)
            ax.plot([x], [y], DAMPING_MARKERS.get(var["steps"], "o"), color=c, ms=9 if var["steps"] == 0 else 6)
        ax.set_xlabel(f"{loc}: falsely retrieved (share of locality prompts)")
        ax.set_ylabel(f"{acc}: routed to own entry (share of paraphrases)")
        ax.set_title(f"N = {N:,} edits", fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[a], marker="o", ls="", label=f"α = {a:g}") for a in alphas]
    handles += [Line2D([], [], color="0.4", marker=DAMPING_MARKERS[m], ls="", label=f"M = {m}")
                for m in sorted({v["steps"] for v in study["variants"] if v["steps"] > 0})]
    handles.append(Line2D([], [], color="k", marker="*", ls="", ms=9, label="GRACE+Norm (M = 0)"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(f"Damping ablation (routing only) — {study['data']} · {study['model']}; bars: 95 % bootstrap "
                 f"intervals over cases", fontsize=10)
    return fig


def capacity_figures(results_dir, figures_dir) -> list[Path]:
    """Write ``capacity_<data>_<model>.png`` and ``.pdf`` into `figures_dir` for every capacity
    study file under ``<results_dir>/capacity/`` (``damping_<data>_<model>`` for a damping study);
    returns the paths written."""
    from editbench.report.writer import save_figure

    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for study in load_capacity(results_dir):
        if study.get("study") == "damping":
            written += save_figure(plot_damping(study), folder, f"damping_{study['data']}_{study['model']}")
        else:
            written += save_figure(plot_capacity(study), folder, f"capacity_{study['data']}_{study['model']}")
    return written


if __name__ == "__main__":  # python -m editbench.report.capacity [RESULTS] [FIGURES]
    args = sys.argv[1:]
    for p in capacity_figures(args[0] if args else "results", args[1] if len(args) > 1 else "reports/figures"):
        print(p)
