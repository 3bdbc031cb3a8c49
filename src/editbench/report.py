"""Results files -> tables (Markdown, LaTeX) and figures.

    python -m editbench.report [--results results] [--out reports] [--baselines baselines]

Every ``metrics.jsonl`` under the results directory is read (one JSON row per checkpoint of one
run).  Rows are grouped by what was measured -- method, model, data, protocol (name and version),
scoring, N and the editor's hyper-parameters without ``seed`` -- and the seeds of a group become
mean ± std (sample std) with n.  Rows whose protocol version or scoring differ are never merged.

Written under ``--out``:
  tables/<data>__<model>__<protocol>-v<version>__<scoring>.{md,tex}       Rel/Gen/Loc/OP per N
  tables/<same stem>__cost.{md,tex}                                      edit time, memory, params
  figures/op_vs_n__<stem>.{png,pdf}, metrics_vs_n__..., cost_vs_n__...   N-scaling plots
  figures/calibration__<stem>__<method>.{png,pdf}, pareto__...            threshold x pooling sweeps
  index.md                                                                what was written + gaps

Published numbers (``baselines/*.csv``) appear as extra rows, e.g. ``HoReN (published, T1)*``,
right under the measured method wherever the paper has the same (model, method, data, N).
The results files are the source of truth; :func:`log_to_wandb` only mirrors the same output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

METRICS = ("rel", "gen", "loc", "op")
METRIC_NAMES = {"rel": "Rel", "gen": "Gen", "loc": "Loc", "op": "OP"}
# Columns a row must have to be placed in a table cell.
REQUIRED = ("method", "model", "data", "protocol", "protocol_version", "scoring", "seed", "N")
# One group = one measured quantity; its rows differ only by seed.
GROUP_KEYS = ["tag", "method", "model", "data", "protocol", "protocol_version", "scoring", "N",
              "hparams_key"]
# One table (and one set of N-scaling figures) per value of these.
TABLE_KEYS = ["data", "model", "protocol", "protocol_version", "scoring"]
# Numeric row fields that identify a row rather than measure something.
NOT_AVERAGED = {"schema", "seed", "N", "protocol_version", "n_edits", "edit_layer"}
COSTS = ("edit_s_mean", "edit_s_total", "eval_s", "peak_mem_gb", "resident_mem_gb", "editor_params")
DIGITS = 3  # decimals of measured cells; ties for "best" are judged at this precision
HINT = "run an experiment first (python -m editbench ...)"

# Paper order (baselines first, HoReN last); unknown methods go after the known ones.
METHOD_ORDER = ["Unedited", "FT-L", "ROME", "GRACE", "GRACE+Norm", "WISE", "REPAIR", "AlphaEdit",
                "UltraEdit", "HoReN w/o norm", "HoReN-LoRA", "HoReN"]
METHOD_COLORS = {
    "HoReN": "#d62728", "GRACE": "#1f77b4", "WISE": "#2ca02c", "AlphaEdit": "#9467bd",
    "UltraEdit": "#ff7f0e", "ROME": "#8c564b", "GRACE+Norm": "#17becf", "HoReN w/o norm": "#e377c2",
    "HoReN-LoRA": "#bcbd22", "REPAIR": "#393b79", "FT-L": "#7f7f7f", "Unedited": "#000000",
}
FALLBACK_COLORS = ["#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
                   "#756bb1", "#636363", "#9c9ede", "#cedb9c", "#e7969c"]
LINESTYLES = ["-", "--", "-.", ":"]
REFERENCE_METHODS = {"Unedited"}  # shown in tables, never bold: not an editor


class NoResults(Exception):
    """Nothing to report; the message is the one line shown to the user."""


class ResultsWarning(UserWarning):
    """A results file had something the report had to skip."""


# --------------------------------------------------------------------------------------- loading

def load_rows(results_dir) -> pd.DataFrame:
    """All usable rows of every ``metrics.jsonl`` under ``results_dir``, one per checkpoint.

    Adds ``run_dir``, ``complete`` (its ``summary.json`` says ``status: complete``) and
    ``hparams_key`` (canonical JSON of ``hparams`` without ``seed``); ``tag`` defaults to "main".
    Malformed lines are skipped with a :class:`ResultsWarning`.  Raises :class:`NoResults` when
    the directory is missing or holds no usable row.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise NoResults(f"results directory {results_dir}/ does not exist — {HINT}")
    files = sorted(results_dir.rglob("metrics.jsonl"))
    if not files:
        raise NoResults(f"no metrics.jsonl under {results_dir}/ — {HINT}")
    rows = [row for path in files for row in _read_metrics(path)]
    if not rows:
        raise NoResults(f"no usable rows in the {len(files)} metrics.jsonl file(s) under "
                        f"{results_dir}/ — {HINT}")
    df = pd.DataFrame(rows)
    for column in METRICS + COSTS:
        df[column] = pd.to_numeric(df[column], errors="coerce") if column in df else np.nan
    return df


def _read_metrics(path: Path) -> list[dict]:
    complete = _run_complete(path.parent)
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = _parse_row(line)
        except (ValueError, TypeError) as err:
            warnings.warn(f"{path}:{lineno}: skipped malformed line ({err})", ResultsWarning,
                          stacklevel=2)
            continue
        row.update(run_dir=str(path.parent), complete=complete)
        rows.append(row)
    return rows


def _parse_row(line: str) -> dict:
    row = json.loads(line)  # bad JSON raises json.JSONDecodeError, a ValueError
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    missing = [key for key in REQUIRED if row.get(key) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    hparams = row.get("hparams") or {}
    if not isinstance(hparams, dict):
        raise ValueError("hparams is not an object")
    for key in ("N", "seed", "protocol_version"):
        if isinstance(row[key], bool) or float(row[key]) != int(row[key]):
            raise ValueError(f"{key} is not an integer")
        row[key] = int(row[key])
    row["tag"] = row.get("tag") or "main"
    row["hparams"] = hparams
    row["hparams_key"] = json.dumps({k: v for k, v in hparams.items() if k != "seed"},
                                    sort_keys=True, default=str)
    return row


def _run_complete(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------------- aggregation

def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per :data:`GROUP_KEYS` group: mean and ``<col>_std`` of every numeric column.

    ``n`` is the number of seeds, ``seeds`` lists them, ``n_partial`` counts rows from runs
    without a complete summary.  If the same seed of the same group appears twice (a re-run)
    only the newest row (by ``time``) is kept.  ``label`` is the method name, extended with the
    differing hyper-parameters when one (method, model, data, protocol, scoring) has several.
    Extra numeric metric columns (bleu, rouge1, ...) are averaged like the others.
    """
    if "time" in rows:
        rows = rows.sort_values("time", kind="stable", na_position="first")
    rows = rows.drop_duplicates(GROUP_KEYS + ["seed"], keep="last")
    values = [c for c in rows.select_dtypes("number").columns if c not in NOT_AVERAGED]
    grouped = rows.groupby(GROUP_KEYS, sort=True)
    out = pd.concat([grouped[values].mean(),
                     grouped[values].std(ddof=1).add_suffix("_std")], axis=1)
    out["n"] = grouped.size()
    out["seeds"] = grouped["seed"].agg(lambda s: ",".join(str(x) for x in sorted(s)))
    out["n_partial"] = grouped["complete"].agg(lambda s: int((~s.astype(bool)).sum()))
    out = out.reset_index()
    out["label"] = _labels(out)
    return out


def _labels(agg: pd.DataFrame) -> pd.Series:
    labels = agg["method"].astype(str).copy()
    keys = ["tag", "method", "model", "data", "protocol", "protocol_version", "scoring"]
    for _, group in agg.groupby(keys):
        variants = {key: json.loads(key) for key in group["hparams_key"].unique()}
        if len(variants) < 2:
            continue
        names = sorted({name for hp in variants.values() for name in hp})
        differing = [name for name in names
                     if len({json.dumps(hp.get(name), sort_keys=True) for hp in variants.values()}) > 1]
        for index, key in zip(group.index, group["hparams_key"]):
            hp = variants[key]
            labels[index] += " [" + ", ".join(f"{n}={hp.get(n, '—')}" for n in differing) + "]"
    return labels


def _method_rank(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _ordered_labels(agg: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = agg[["method", "label"]].drop_duplicates().itertuples(index=False)
    return sorted(((m, l) for m, l in pairs), key=lambda p: (_method_rank(p[0]), p[1]))


# ------------------------------------------------------------------------------------- baselines

def load_baselines(path) -> pd.DataFrame:
    """Published numbers: ``path`` is a CSV file or a directory of them (missing -> empty)."""
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path] if path.is_file() else []
    columns = ["table", "model", "method", "data", "N", "N_inferred", *METRICS, "source", "note"]
    if not files:
        return pd.DataFrame(columns=columns)
    text = ["table", "model", "method", "data", "source", "note"]
    df = pd.concat([pd.read_csv(f, dtype={c: str for c in text}) for f in files], ignore_index=True)
    df[text] = df[text].fillna("")
    df["N"] = pd.to_numeric(df["N"], errors="coerce").astype("Int64")
    df["N_inferred"] = df["N_inferred"].astype(str).str.lower().eq("true")
    for metric in METRICS:
        df[metric] = pd.to_numeric(df[metric], errors="coerce")
    return df[columns]


def _published(baselines, model, method, data, Ns) -> list[tuple[str, dict]]:
    """Published rows for one measured method: [(label, {(N, metric): value})].

    Tables that report identical numbers for these N (e.g. Table 9's HoReN = Table 1's) are
    merged into one row labelled ``T1/T9``; ``*`` marks a row whose N was inferred.
    """
    hit = baselines[(baselines["model"] == model) & (baselines["method"] == method)
                    & (baselines["data"] == data) & baselines["N"].isin(list(Ns))]
    merged: dict[frozenset, dict] = {}  # identical cells -> one row
    for table, rows in sorted(hit.groupby("table"), key=lambda kv: _table_rank(kv[0])):
        cells = {(int(r["N"]), m): float(r[m]) for _, r in rows.iterrows() for m in METRICS
                 if not pd.isna(r[m])}
        entry = merged.setdefault(frozenset(cells.items()),
                                  {"tables": [], "cells": cells, "inferred": False})
        entry["tables"].append(f"T{table}")
        entry["inferred"] |= bool(rows["N_inferred"].any())
    return [(f"{method} (published, {'/'.join(e['tables'])}){'*' if e['inferred'] else ''}",
             e["cells"]) for e in merged.values()]


def _table_rank(table: str) -> float:
    return int(table) if table.isdigit() else math.inf


def unmatched_published(agg: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Published cells (with a stated model and N) that no measured main row reproduces."""
    stated = baselines[(baselines["model"] != "") & baselines["N"].notna()]
    main = agg[agg["tag"] == "main"] if len(agg) else agg
    measured = {(r.model, r.method, r.data, int(r.N)) for r in main.itertuples()}
    keep = [(r.model, r.method, r.data, int(r.N)) not in measured for r in stated.itertuples()]
    return stated[keep]


# ---------------------------------------------------------------------------------------- tables

@dataclass
class Table:
    """A rendered table: text cells plus which cells are bold; written as md, tex or wandb."""

    name: str
    title: str
    header: list[tuple[str, list[str]]]  # column blocks: (block title or "", sub-column names)
    rows: list[list[str]]                # display text; first cell is the row label
    bold: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [f"{block} {name}".strip() for block, names in self.header for name in names]


def _fmt(mean, std=None, n=1, digits=DIGITS) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    if n > 1 and std is not None and not pd.isna(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _fmt_published(value: float) -> str:
    text = f"{value:.3f}"  # the paper prints 2 or 3 decimals
    return text[:-1] if text.endswith("0") else text


def _n_range(values) -> str:
    lo, hi = int(min(values)), int(max(values))
    return str(lo) if lo == hi else f"{lo}–{hi}"


def metric_table(agg: pd.DataFrame, baselines: pd.DataFrame, name: str, title: str) -> Table:
    """Paper layout: rows = methods (+ published rows), blocks = N, Rel/Gen/Loc/OP per block."""
    Ns = sorted(int(n) for n in agg["N"].unique())
    model, data = agg["model"].iloc[0], agg["data"].iloc[0]
    header = [("", ["Method", "n"])] + [(f"N={n}", [METRIC_NAMES[m] for m in METRICS]) for n in Ns]
    rows, numbers = [], []  # numbers: rounded means of rows competing for bold, else None
    has_published = False
    labels = _ordered_labels(agg)
    for position, (method, label) in enumerate(labels):
        cells = agg[agg["label"] == label].set_index("N")
        row, nums = [label, _n_range(cells["n"])], []
        for n, m in ((n, m) for n in Ns for m in METRICS):
            present = n in cells.index and not pd.isna(cells.at[n, m])
            row.append(_fmt(cells.at[n, m], cells.at[n, f"{m}_std"], cells.at[n, "n"]) if present else "—")
            nums.append(round(float(cells.at[n, m]), DIGITS) if present else None)
        rows.append(row)
        numbers.append(None if method in REFERENCE_METHODS else nums)
        if position + 1 == len(labels) or labels[position + 1][0] != method:  # method's last row
            for pub_label, pub in _published(baselines, model, method, data, Ns):
                rows.append([pub_label, ""] + [_fmt_published(pub[(n, m)]) if (n, m) in pub else ""
                                               for n in Ns for m in METRICS])
                numbers.append(None)
                has_published = True
    notes = ["Cells: mean ± sample std over n seeds (mean only when n = 1); "
             "bold = best measured value per column (published and Unedited rows excluded)."]
    if has_published:
        notes.append("Published rows: HoReN paper via shared/reference/EDITORS.md §5 "
                     "(baselines/); * = the paper's N for that column is inferred, not stated.")
    return Table(name, title, header, rows, _best_cells(numbers, first_column=2), notes)


def _best_cells(numbers: list, first_column: int) -> set[tuple[int, int]]:
    """(row, column) of the highest value in each column; ties are all returned."""
    best = set()
    measured = [(i, nums) for i, nums in enumerate(numbers) if nums is not None]
    for j in range(len(measured[0][1]) if measured else 0):
        top = max((nums[j] for _, nums in measured if nums[j] is not None), default=None)
        best |= {(i, j + first_column) for i, nums in measured if top is not None and nums[j] == top}
    return best


def cost_table(agg: pd.DataFrame, name: str, title: str) -> Table:
    """Long layout: one row per (method, N) with time, memory and editor size."""
    header = [("", ["Method", "N", "n", "edit time (ms/edit)", "eval time (s)", "peak mem (GB)",
                    "resident mem (GB)", "editor params"])]
    rows = []
    for _, label in _ordered_labels(agg):
        for _, r in agg[agg["label"] == label].sort_values("N").iterrows():
            params = r["editor_params"]
            rows.append([label, str(int(r["N"])), str(int(r["n"])),
                         _fmt(r["edit_s_mean"] * 1e3, r["edit_s_mean_std"] * 1e3, r["n"],
                              1 if r["edit_s_mean"] * 1e3 >= 1 else 4),
                         _fmt(r["eval_s"], r["eval_s_std"], r["n"], 1),
                         _fmt(r["peak_mem_gb"], r["peak_mem_gb_std"], r["n"], 2),
                         _fmt(r["resident_mem_gb"], r["resident_mem_gb_std"], r["n"], 2),
                         "—" if pd.isna(params) else f"{params:,.0f}"])
    notes = ["Cells: mean ± sample std over n seeds; edit time is the mean wall time per edit "
             "over the edits applied so far; eval time is this checkpoint's evaluation."]
    return Table(name, title, header, rows, set(), notes)


def to_markdown(table: Table) -> str:
    def cell(i, j, text):
        text = text.replace("|", "\\|")
        return f"**{text}**" if (i, j) in table.bold else text

    columns = table.columns
    lines = [f"## {table.title}", "",
             "| " + " | ".join(columns) + " |",
             "| :--- |" + " ---: |" * (len(columns) - 1)]
    lines += ["| " + " | ".join(cell(i, j, t) for j, t in enumerate(row)) + " |"
              for i, row in enumerate(table.rows)]
    return "\n".join(lines + [""] + [f"{note}\n" for note in table.notes])


TEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "\\": r"\textbackslash{}", "±": r"$\pm$", "—": "--", "–": "--",
               "·": r"$\cdot$", "§": r"\S{}"}


def _tex(text: str) -> str:
    return "".join(TEX_ESCAPES.get(char, char) for char in text)


def to_latex(table: Table) -> str:
    spec = "".join(("l" if not block and j == 0 else "r") if not block else "c"
                   for block, names in table.header for j, _ in enumerate(names))
    lines = ["% Generated by editbench.report from results files; do not edit by hand.",
             "% Needs \\usepackage{booktabs}.",
             *[f"% {note}" for note in table.notes],
             r"\begin{table}[ht]", r"\centering", r"\small",
             f"\\caption{{{_tex(table.title)}. {_tex(table.notes[0])}}}",
             f"\\label{{tab:{table.name}}}",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if any(block for block, _ in table.header):
        groups, rules, start = [], [], 1
        for block, names in table.header:
            groups.append(f"\\multicolumn{{{len(names)}}}{{c}}{{{_tex(block)}}}" if block
                          else " & ".join([""] * len(names)))
            if block:
                rules.append(f"\\cmidrule(lr){{{start}-{start + len(names) - 1}}}")
            start += len(names)
        lines += [" & ".join(groups) + r" \\", "".join(rules)]
    lines.append(" & ".join(_tex(n) for _, names in table.header for n in names) + r" \\")
    lines.append(r"\midrule")
    for i, row in enumerate(table.rows):
        cells = [f"\\textbf{{{_tex(t)}}}" if (i, j) in table.bold else _tex(t)
                 for j, t in enumerate(row)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- figures

def method_color(method: str) -> str:
    """Fixed colour for known methods; a stable hash-picked colour for any other name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    digest = int(hashlib.md5(method.encode()).hexdigest(), 16)
    return FALLBACK_COLORS[digest % len(FALLBACK_COLORS)]


def _series(agg: pd.DataFrame):
    """(method, label, rows sorted by N, linestyle) per label, in table order."""
    variant: dict[str, int] = {}
    for method, label in _ordered_labels(agg):
        style = LINESTYLES[variant.setdefault(method, 0) % len(LINESTYLES)]
        variant[method] += 1
        yield method, label, agg[agg["label"] == label].sort_values("N"), style


def _plot_measured(ax, agg, column, scale=1.0, linestyle=None, suffix=""):
    for method, label, rows, style in _series(agg):
        if rows[column].isna().all():
            continue
        std = rows[f"{column}_std"].where(rows["n"] > 1).fillna(0.0) * scale
        ax.errorbar(rows["N"], rows[column] * scale, yerr=std, color=method_color(method),
                    linestyle=linestyle or style, marker="o", markersize=4, capsize=3,
                    label=label + suffix)


def _plot_published(ax, agg, baselines, metric):
    if baselines is None or not len(baselines) or not len(agg):
        return
    model, data = agg["model"].iloc[0], agg["data"].iloc[0]
    for method in dict.fromkeys(agg["method"]):
        pub = baselines[(baselines["model"] == model) & (baselines["method"] == method)
                        & (baselines["data"] == data) & baselines["N"].notna()
                        & baselines[metric].notna()]
        if not len(pub):
            continue
        # One point per N; where tables disagree the lowest-numbered (main) table wins.
        pub = pub.assign(rank=pub["table"].map(_table_rank)).sort_values(["rank", "N"])
        pub = pub.drop_duplicates("N").sort_values("N")
        ax.plot(pub["N"].astype(float), pub[metric], color=method_color(method), linestyle=":",
                marker="x", markersize=6, label=f"{method} (published)")


def _style_n_axis(ax, ylabel, ylim=(0.0, 1.02)):
    ax.set_xscale("log")
    ax.set_xlabel("edits applied N (log scale)")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)


def plot_op_vs_n(agg: pd.DataFrame, baselines: pd.DataFrame | None = None, title="") -> Figure:
    """OP against N for every method (paper Fig. 1); published points dotted with x markers."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    _plot_measured(ax, agg, "op")
    _plot_published(ax, agg, baselines, "op")
    _style_n_axis(ax, "OP (fraction, 0–1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return fig


def plot_metrics_vs_n(agg: pd.DataFrame, baselines: pd.DataFrame | None = None, title="") -> Figure:
    """Rel, Gen and Loc against N as three panels (paper Figs. 6–8)."""
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax, metric in zip(axes, ("rel", "gen", "loc")):
        _plot_measured(ax, agg, metric)
        _plot_published(ax, agg, baselines, metric)
        _style_n_axis(ax, f"{METRIC_NAMES[metric]} (fraction, 0–1)")
        ax.set_title(METRIC_NAMES[metric])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_cost_vs_n(agg: pd.DataFrame, title="") -> Figure:
    """Per-edit time and peak (solid) / resident (dashed) memory against N (paper Fig. 9)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    time_ax, mem_ax = fig.subplots(1, 2)
    _plot_measured(time_ax, agg, "edit_s_mean", scale=1e3)
    _style_n_axis(time_ax, "edit time per edit (ms)", ylim=None)
    times = agg["edit_s_mean"][agg["edit_s_mean"] > 0]
    if len(times) and times.max() / times.min() > 30:  # methods differ by orders of magnitude
        time_ax.set_yscale("log")
    time_ax.set_title("Edit time")
    _plot_measured(mem_ax, agg, "peak_mem_gb", suffix=" peak", linestyle="-")
    _plot_measured(mem_ax, agg, "resident_mem_gb", suffix=" resident", linestyle="--")
    _style_n_axis(mem_ax, "GPU memory (GB)", ylim=None)
    mem_ax.set_title("Memory: peak (solid), resident (dashed)")
    for ax in (time_ax, mem_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def _final_configs(calib: pd.DataFrame) -> pd.DataFrame:
    """Last checkpoint of each hyper-parameter setting, with threshold / pooling_ratio columns."""
    final = calib.sort_values("N").drop_duplicates("hparams_key", keep="last").copy()
    hparams = final["hparams_key"].map(json.loads)
    final["threshold"] = hparams.map(lambda hp: hp.get("threshold"))
    final["pooling_ratio"] = hparams.map(lambda hp: hp.get("pooling_ratio"))
    return final


def plot_calibration(calib: pd.DataFrame, title="") -> Figure | None:
    """Heat-maps of OP, Gen and Loc over threshold x pooling_ratio (None if not swept)."""
    final = _final_configs(calib).dropna(subset=["threshold", "pooling_ratio"])
    if not len(final):
        return None
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ("op", "gen", "loc")):
        grid = final.pivot_table(index="threshold", columns="pooling_ratio", values=metric,
                                 aggfunc="mean")
        image = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis",
                          origin="lower", aspect="auto")
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(grid.columns)), [f"{v:g}" for v in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{v:g}" for v in grid.index])
        ax.set_xlabel("pooling ratio ρ")
        ax.set_ylabel("threshold τ")
        ax.set_title(METRIC_NAMES[metric])
    fig.colorbar(image, ax=axes, label="fraction (0–1)", shrink=0.9)
    Ns = ", ".join(str(int(n)) for n in sorted(final["N"].unique()))
    fig.suptitle(f"{title} — last checkpoint per setting (N = {Ns})", fontsize=9)
    return fig


def pareto_front(points: pd.DataFrame, x="loc", y="gen") -> pd.DataFrame:
    """Rows not dominated in (x, y), both higher-is-better, sorted by x descending."""
    best_y, keep = -math.inf, []
    for index, row in points.sort_values([x, y], ascending=False).iterrows():
        if row[y] > best_y:
            keep.append(index)
            best_y = row[y]
    return points.loc[keep]


def plot_pareto(calib: pd.DataFrame, title="") -> Figure | None:
    """Loc against Gen for every calibration setting, colour = OP, Pareto front marked."""
    final = _final_configs(calib).dropna(subset=["loc", "gen"])
    if not len(final):
        return None
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.add_subplot()
    points = ax.scatter(final["loc"], final["gen"], c=final["op"], cmap="viridis", vmin=0, vmax=1,
                        s=30, label="setting")
    front = pareto_front(final)
    ax.plot(front["loc"], front["gen"], color="#d62728", marker="o", markerfacecolor="none",
            markersize=10, drawstyle="steps-post", label="Pareto front")
    for _, row in front.iterrows():
        text = (f"τ={row['threshold']:g}, ρ={row['pooling_ratio']:g}"
                if not pd.isna(row["threshold"]) and not pd.isna(row["pooling_ratio"])
                else row["label"])
        ax.annotate(text, (row["loc"], row["gen"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    fig.colorbar(points, ax=ax, label="OP (fraction, 0–1)")
    ax.set_xlabel("Loc (fraction, 0–1)")
    ax.set_ylabel("Gen (fraction, 0–1)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------- render

def _stem(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "__".join(str(p) for p in parts))


def _table_stem(data, model, protocol, version, scoring) -> str:
    return _stem(data, model, f"{protocol}-v{version}", scoring)


def _title(data, model, protocol, version, scoring) -> str:
    return f"{data} · {model} · {protocol} (v{version}) · {scoring} scoring"


def _save(fig: Figure, folder: Path, stem: str) -> list[Path]:
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1], metadata={"CreationDate": None})  # byte-identical on re-render
    return paths


def render(results_dir, out_dir, baselines_dir) -> dict[str, list[Path]]:
    """Read results, write tables, figures and index.md; return the paths written by kind."""
    rows = load_rows(results_dir)
    written, _ = _render_rows(rows, Path(out_dir), load_baselines(baselines_dir), results_dir)
    return written


def _render_rows(rows, out_dir: Path, baselines, source) -> tuple[dict, list[Table]]:
    agg = aggregate(rows)
    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {"tables": [], "figures": [], "index": []}
    tables: list[Table] = []

    def write_table(table: Table):
        for suffix, text in ((".md", to_markdown(table)), (".tex", to_latex(table))):
            path = tables_dir / f"{table.name}{suffix}"
            path.write_text(text)
            written["tables"].append(path)
        tables.append(table)

    main = agg[agg["tag"] == "main"]
    for key, group in main.groupby(TABLE_KEYS, sort=True):
        stem, title = _table_stem(*key), _title(*key)
        if group[list(METRICS)].notna().any().any():
            write_table(metric_table(group, baselines, stem, title))
            written["figures"] += _save(plot_op_vs_n(group, baselines, title), figures_dir,
                                        f"op_vs_n__{stem}")
            written["figures"] += _save(plot_metrics_vs_n(group, baselines, title), figures_dir,
                                        f"metrics_vs_n__{stem}")
        write_table(cost_table(group, f"{stem}__cost", f"Cost — {title}"))
        written["figures"] += _save(plot_cost_vs_n(group, f"Cost — {title}"), figures_dir,
                                    f"cost_vs_n__{stem}")

    calibration = agg[agg["tag"] == "calibration"]
    for key, group in calibration.groupby(TABLE_KEYS + ["method"], sort=True):
        stem, title = _stem(_table_stem(*key[:-1]), key[-1]), f"{key[-1]} calibration — {_title(*key[:-1])}"
        for kind, fig in (("calibration", plot_calibration(group, title)),
                          ("pareto", plot_pareto(group, title))):
            if fig is not None:
                written["figures"] += _save(fig, figures_dir, f"{kind}__{stem}")

    index = out_dir / "index.md"
    index.write_text(_index_text(rows, agg, baselines, written, out_dir, source))
    written["index"].append(index)
    return written, tables


def _run_counts(rows: pd.DataFrame) -> tuple[int, list[str]]:
    runs = rows.drop_duplicates("run_dir")
    return len(runs), sorted(runs.loc[~runs["complete"].astype(bool), "run_dir"])


def _index_text(rows, agg, baselines, written, out_dir: Path, source) -> str:
    n_runs, partial = _run_counts(rows)
    duplicates = int(rows.duplicated(GROUP_KEYS + ["seed"]).sum())
    lines = ["# editbench report", "",
             f"Generated by `python -m editbench.report` from `{source}`: {len(rows)} rows from "
             f"{n_runs} runs ({len(partial)} partial). Results files are the source of truth; "
             "regenerate instead of editing.", ""]
    if partial:
        lines += ["Partial runs (no `summary.json` with `status: complete`; rows still used):", ""]
        lines += [f"- `{run}`" for run in partial] + [""]
    if duplicates:
        lines += [f"{duplicates} row(s) repeated an already-seen seed of the same setting; "
                  "the newest was kept.", ""]
    md = [p for p in written["tables"] if p.suffix == ".md"]
    lines += ["## Tables", ""]
    lines += [f"- [{p.stem}]({p.relative_to(out_dir).as_posix()}) "
              f"([tex]({p.with_suffix('.tex').relative_to(out_dir).as_posix()}))" for p in md]
    pngs = [p for p in written["figures"] if p.suffix == ".png"]
    lines += ["", "## Figures", ""]
    lines += [f"- [{p.stem}]({p.relative_to(out_dir).as_posix()}) "
              f"([pdf]({p.with_suffix('.pdf').relative_to(out_dir).as_posix()}))" for p in pngs]
    lines += ["", "## Published cells without a measured counterpart", ""]
    missing = unmatched_published(agg, baselines)
    if len(missing):
        lines += ["| table | model | method | data | N |", "| --- | --- | --- | --- | --- |"]
        for (table, model, method, data), group in sorted(
                missing.groupby(["table", "model", "method", "data"]),
                key=lambda kv: (_table_rank(kv[0][0]), kv[0][1:])):
            Ns = ", ".join(str(int(n)) for n in sorted(group["N"]))
            lines.append(f"| T{table} | {model} | {method} | {data} | {Ns} |")
    else:
        lines.append("None." if len(baselines) else "No baselines loaded.")
    unstated = int(((baselines["model"] == "") | baselines["N"].isna()).sum())
    if unstated:
        lines += ["", f"{unstated} published row(s) state no model or N (Tables 6, 8) "
                  "and are never matched."]
    return "\n".join(lines) + "\n"


def log_to_wandb(run, results, out_dir, baselines_dir="baselines") -> dict[str, list[Path]]:
    """Render like :func:`render`, then log every table (``wandb.Table``) and figure PNG
    (``wandb.Image``) to ``run`` in one ``run.log`` call.  ``results`` is a results directory or
    a frame from :func:`load_rows`.  W&B only mirrors the files; they stay the source of truth.
    """
    import wandb  # optional sink: imported only when used

    rows = results if isinstance(results, pd.DataFrame) else load_rows(results)
    source = "a DataFrame" if isinstance(results, pd.DataFrame) else results
    written, tables = _render_rows(rows, Path(out_dir), load_baselines(baselines_dir), source)
    payload = {f"report/tables/{t.name}": wandb.Table(columns=t.columns, data=t.rows)
               for t in tables}
    payload.update({f"report/figures/{p.stem}": wandb.Image(str(p))
                    for p in written["figures"] if p.suffix == ".png"})
    run.log(payload)
    return written


# ------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editbench.report", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results", help="directory searched for metrics.jsonl")
    parser.add_argument("--out", default="reports", help="where tables/, figures/, index.md go")
    parser.add_argument("--baselines", default="baselines", help="published numbers (CSV or dir)")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResultsWarning)
            rows = load_rows(args.results)
        for warning in caught:
            print(f"editbench.report: warning: {warning.message}", file=sys.stderr)
        out = Path(args.out)
        written, tables = _render_rows(rows, out, load_baselines(args.baselines), args.results)
    except NoResults as err:
        print(f"editbench.report: {err}", file=sys.stderr)
        return 2
    n_runs, partial = _run_counts(rows)
    if partial:
        print(f"editbench.report: note: {len(partial)} of {n_runs} runs are partial "
              "(no complete summary.json); their rows are included")
    n_figures = sum(p.suffix == ".png" for p in written["figures"])
    print(f"editbench.report: {len(rows)} rows from {n_runs} runs -> {len(tables)} tables, "
          f"{n_figures} figures under {out}/ (see {out / 'index.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
