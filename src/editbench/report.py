"""Results files -> tables (Markdown, LaTeX) and figures.

    python -m editbench.report [--results results] [--out reports] [--baselines baselines]
                               [--readme README.md]

Every ``metrics.jsonl`` under the results directory is read (one JSON row per checkpoint of one
run).  Rows are grouped by what was measured -- method, model, data, protocol (name and version),
scoring, N and the editor's hyper-parameters without ``seed`` -- and the seeds of a group become
mean ± std (sample std) with n.  Rows whose protocol version or scoring differ are never merged.

A row names its metric columns in ``metric_names`` (ordered; each is also a numeric field of the
row); rows without it have the paper's four, ``rel, gen, loc, op``.  A table shows the union of its
rows' metric names in first-seen order, so a new metric needs no change here.  ``mem_device``
("cpu" or "cuda") says what the memory fields measured; ``mem_growth_gb`` is optional.

Written under ``--out``:
  tables/<data>__<model>__<protocol>-v<version>__<scoring>.{md,tex}       each metric per N
  tables/<same stem>__cost.{md,tex}                                      edit time, memory, params
  tables/calibration__<stem>__<method>.{md,tex}                          one row per sweep setting
  tables/paper_table{6,7,8}__<model>__....{md,tex}                        the paper's layouts (paper_tables.py)
  figures/op_vs_n__<stem>.{png,pdf}, metrics_vs_n__..., cost_vs_n__...   N-scaling plots
  figures/calibration__<stem>__<method>.{png,pdf}, pareto__...            sweeps (tag calibration)
  index.md                                                                what was written + gaps

With ``--readme PATH`` the lines between ``<!-- table:begin -->`` and ``<!-- table:end -->`` in
PATH are replaced by the main metric tables' and the calibration tables' Markdown, so the README
cannot drift from results/.

Published numbers (``baselines/*.csv``) appear as extra rows, e.g. ``HoReN (published, T1)*``,
right under the measured method wherever the paper has the same (model, method, data, N).
The results files are the source of truth; :func:`log_to_wandb` only mirrors the same output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from editbench.validate import Protocol

# The paper's metrics: what a row without ``metric_names`` has, and the columns of baselines/*.csv.
PAPER_METRICS = ("rel", "gen", "loc", "op")
METRIC_NAMES = {"rel": "Rel", "gen": "Gen", "loc": "Loc", "op": "OP"}  # other names shown as-is
OVERALL = "op"  # the overall score: its own figure (op_vs_n), not a metrics_vs_n panel
# Columns a row must have to be placed in a table cell.
REQUIRED = ("method", "model", "data", "protocol", "protocol_version", "scoring", "seed", "N")
# One group = one measured quantity; its rows differ only by seed.
GROUP_KEYS = ["tag", "method", "model", "data", "protocol", "protocol_version", "scoring", "chat_template",
              "max_new_tokens", "N", "hparams_key"]
# One table (and one set of N-scaling figures) per value of these: a chat-templated model sees other
# inputs, and a free-text answer cut at 128 tokens scores differently from one cut at 512, so such
# rows never share a table.
TABLE_KEYS = ["data", "model", "protocol", "protocol_version", "scoring", "chat_template", "max_new_tokens"]
# The protocol's default generation cap (its schema's default): rows written before the field existed.
MAX_NEW_TOKENS: int = Protocol.model_fields["max_new_tokens"].default
# Numeric row fields that identify a row rather than measure something.
NOT_AVERAGED = {"schema", "seed", "N", "protocol_version", "n_edits", "edit_layer", "max_new_tokens"}
COSTS = ("edit_s_mean", "edit_s_total", "eval_s", "peak_mem_gb", "resident_mem_gb", "mem_growth_gb",
         "editor_params")
UNKNOWN_DEVICE = "unknown"  # mem_device of rows written before the field existed
# mem_device -> (memory axis label, [(cost column, legend suffix, linestyle)]); other values
# (unknown, or several devices in one figure) get NEUTRAL_MEMORY and say which in the title.
MEMORY_AXES = {
    "cuda": ("CUDA memory (GB): peak allocated over all devices (solid), allocated (dashed)",
             [("peak_mem_gb", " peak", "-"), ("resident_mem_gb", " allocated", "--")]),
    "cpu": ("CPU memory (GB): resident set (solid), growth over the unedited model (dashed)",
            [("resident_mem_gb", " resident", "-"), ("mem_growth_gb", " growth", "--")]),
}
NEUTRAL_MEMORY = ("memory (GB)", [("peak_mem_gb", " peak", "-"), ("resident_mem_gb", " resident", "--")])
README_BEGIN, README_END = "<!-- table:begin -->", "<!-- table:end -->"
README_EMPTY = "No results yet: run `make figures` after a run."
README_MAX_COLUMNS = 40  # a wider metric table (free-text metrics x checkpoints) is linked, not inlined
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


class ReportError(Exception):
    """The report cannot go on; the message is the one line shown to the user."""


class NoResults(ReportError):
    """Nothing to report."""


class ResultsWarning(UserWarning):
    """A results file had something the report had to skip."""


# --------------------------------------------------------------------------------------- loading

def load_rows(results_dir) -> pd.DataFrame:
    """All usable rows of every ``metrics.jsonl`` under ``results_dir``, one per checkpoint.

    Adds ``run_dir``, ``complete`` (its ``summary.json`` says ``status: complete``) and
    ``hparams_key`` (canonical JSON of ``hparams`` without ``seed``); ``tag`` defaults to "main",
    ``metric_names`` (a tuple) to :data:`PAPER_METRICS`, ``mem_device`` to "unknown".
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
    for column in metric_names(df) + list(COSTS):
        df[column] = pd.to_numeric(df[column], errors="coerce") if column in df else np.nan
    if "mem_device" not in df:
        df["mem_device"] = None
    df["mem_device"] = df["mem_device"].fillna(UNKNOWN_DEVICE).astype(str)
    return df


def metric_names(frame: pd.DataFrame) -> list[str]:
    """The metric columns of ``frame`` (rows or aggregated): the union of its rows'
    ``metric_names``, in first-seen order."""
    return list(_union(frame["metric_names"]))


def _union(names_per_row) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for names in names_per_row for name in names))


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
    row["chat_template"] = bool(row.get("chat_template", False))
    row["max_new_tokens"] = int(row.get("max_new_tokens") or MAX_NEW_TOKENS)
    row["metric_names"] = _parse_metric_names(row)
    row["hparams"] = hparams
    row["hparams_key"] = json.dumps({k: v for k, v in hparams.items() if k != "seed"},
                                    sort_keys=True, default=str)
    return row


def _parse_metric_names(row: dict) -> tuple[str, ...]:
    names = row.get("metric_names")
    if names is None:
        return PAPER_METRICS
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise ValueError("metric_names is not a list of column names")
    absent = [name for name in names if name not in row]
    if absent:
        raise ValueError(f"metric_names lists {', '.join(absent)} but the row has no such field")
    reserved = [name for name in names if name in NOT_AVERAGED or name in GROUP_KEYS]
    if reserved:
        raise ValueError(f"metric_names lists {', '.join(reserved)}, which identify a row")
    return tuple(names)


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
    Every metric column (see :func:`metric_names`) is numeric after :func:`load_rows`, so all are
    averaged; ``metric_names`` is the union of the group's and ``mem_device`` its devices.
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
    out["metric_names"] = grouped["metric_names"].agg(_union)
    out["mem_device"] = grouped["mem_device"].agg(_devices)
    out = out.reset_index()
    out["label"] = _labels(out)
    return out


def _devices(values) -> str:
    """"cpu", "cuda", "unknown", or the devices joined by "/" (e.g. "cpu/cuda") when several
    measured; idempotent, so it merges rows and aggregated rows alike."""
    return "/".join(sorted({part for value in values for part in str(value).split("/")}))


LABEL_KEYS = ("tag", "method", "model", "data", "protocol", "protocol_version", "scoring", "chat_template")


def _labels(agg: pd.DataFrame, across: tuple[str, ...] = ()) -> pd.Series:
    """The method name, extended with the hyper-parameters that differ between the runs of one
    method in one table.  A table spans one value of each :data:`LABEL_KEYS` column except those
    named in ``across`` (e.g. ``("data",)`` for a table with one column block per dataset), so the
    same setting gets the same label on every dataset such a table shows."""
    labels = agg["method"].astype(str).copy()
    keys = [key for key in LABEL_KEYS if key not in across]
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

BASELINE_TEXT = ["table", "model", "method", "data", "column", "source", "note"]


def load_baselines(path) -> pd.DataFrame:
    """Published numbers: ``path`` is a CSV file or a directory of them (missing -> empty).

    Every column that is not one of :data:`BASELINE_TEXT`, ``N`` or ``N_inferred`` is a metric
    (named as the result rows name it, e.g. ``orig_rougeL_r``); the paper's four are always
    present.  ``column`` is the paper's own column label where its N is unknown (Table 7's pairs).
    """
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path] if path.is_file() else []
    frames = [pd.read_csv(f, dtype={c: str for c in BASELINE_TEXT}) for f in files]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for column in BASELINE_TEXT:
        df[column] = df[column].fillna("") if column in df else ""
    df["N"] = pd.to_numeric(df["N"], errors="coerce").astype("Int64") if "N" in df else pd.Series(dtype="Int64")
    df["N_inferred"] = df["N_inferred"].astype(str).str.lower().eq("true") if "N_inferred" in df else False
    fixed = set(BASELINE_TEXT) | {"N", "N_inferred"}
    metrics = list(PAPER_METRICS) + [c for c in df.columns if c not in fixed and c not in PAPER_METRICS]
    for metric in metrics:
        df[metric] = pd.to_numeric(df[metric], errors="coerce") if metric in df else np.nan
    return df[[c for c in BASELINE_TEXT if c not in ("source", "note")] + ["N", "N_inferred", *metrics,
                                                                          "source", "note"]]


def _published(baselines, model, method, data, Ns) -> list[tuple[str, dict]]:
    """Published rows for one measured method: [(label, {(N, metric): value})].

    Tables that report identical numbers for these N (e.g. Table 9's HoReN = Table 1's) are
    merged into one row labelled ``T1/T9``; ``*`` marks a row whose N was inferred.
    """
    hit = baselines[(baselines["model"] == model) & (baselines["method"] == method)
                    & (baselines["data"] == data) & baselines["N"].isin(list(Ns))]
    merged: dict[frozenset, dict] = {}  # identical cells -> one row
    for table, rows in sorted(hit.groupby("table"), key=lambda kv: _table_rank(kv[0])):
        cells = {(int(r["N"]), m): float(r[m]) for _, r in rows.iterrows() for m in PAPER_METRICS
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
    kind: str = "metrics"                # "metrics", "paper", "calibration" (all go to the README) or "cost"

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


def display_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def metric_table(agg: pd.DataFrame, baselines: pd.DataFrame, name: str, title: str) -> Table:
    """Paper layout: rows = methods (+ published rows), blocks = N, the rows' metrics per block."""
    Ns = sorted(int(n) for n in agg["N"].unique())
    metrics = metric_names(agg)
    model, data = agg["model"].iloc[0], agg["data"].iloc[0]
    header = [("", ["Method", "n"])] + [(f"N={n}", [display_name(m) for m in metrics]) for n in Ns]
    rows, numbers = [], []  # numbers: rounded means of rows competing for bold, else None
    has_published = False
    labels = _ordered_labels(agg)
    for position, (method, label) in enumerate(labels):
        cells = agg[agg["label"] == label].set_index("N")
        row, nums = [label, _n_range(cells["n"])], []
        for n, m in ((n, m) for n in Ns for m in metrics):
            present = n in cells.index and not pd.isna(cells.at[n, m])
            row.append(_fmt(cells.at[n, m], cells.at[n, f"{m}_std"], cells.at[n, "n"]) if present else "—")
            nums.append(round(float(cells.at[n, m]), DIGITS) if present else None)
        rows.append(row)
        numbers.append(None if method in REFERENCE_METHODS else nums)
        if position + 1 == len(labels) or labels[position + 1][0] != method:  # method's last row
            for pub_label, pub in _published(baselines, model, method, data, Ns):
                rows.append([pub_label, ""] + [_fmt_published(pub[(n, m)]) if (n, m) in pub else ""
                                               for n in Ns for m in metrics])
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
    """Long layout: one row per (method, N) with time, memory (and its device) and editor size;
    a ``mem growth`` column only when some row has ``mem_growth_gb``."""
    memory = [("peak_mem_gb", "peak mem (GB)"), ("resident_mem_gb", "resident mem (GB)")]
    if agg["mem_growth_gb"].notna().any():
        memory.append(("mem_growth_gb", "mem growth (GB)"))
    header = [("", ["Method", "N", "n", "edit time (ms/edit)", "eval time (s)", "mem_device",
                    *(heading for _, heading in memory), "editor params"])]
    rows = []
    for _, label in _ordered_labels(agg):
        for _, r in agg[agg["label"] == label].sort_values("N").iterrows():
            params = r["editor_params"]
            rows.append([label, str(int(r["N"])), str(int(r["n"])),
                         _fmt(r["edit_s_mean"] * 1e3, r["edit_s_mean_std"] * 1e3, r["n"],
                              1 if r["edit_s_mean"] * 1e3 >= 1 else 4),
                         _fmt(r["eval_s"], r["eval_s_std"], r["n"], 1),
                         r["mem_device"],
                         *(_fmt(r[column], r[f"{column}_std"], r["n"], 2) for column, _ in memory),
                         "—" if pd.isna(params) else f"{params:,.0f}"])
    notes = ["Cells: mean ± sample std over n seeds; edit time is the mean wall time per edit "
             "over the edits applied so far; eval time is this checkpoint's evaluation.",
             "Memory by mem_device: cuda = peak allocated over all devices / allocated now; "
             "cpu = no peak (—) / resident set now, growth = resident set over the process before the editor "
             "was built; unknown = rows written before mem_device existed (their peak is the process's "
             "lifetime peak resident set)."]
    return Table(name, title, header, rows, set(), notes, kind="cost")


def to_markdown(table: Table) -> str:
    return f"## {table.title}\n\n{_markdown_body(table)}"


def _markdown_body(table: Table) -> str:
    """The table and its notes, without the title."""
    def cell(i, j, text):
        text = text.replace("|", "\\|")
        return f"**{text}**" if (i, j) in table.bold else text

    columns = table.columns
    lines = ["| " + " | ".join(columns) + " |",
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
    if baselines is None or not len(baselines) or not len(agg) or metric not in baselines:
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


def _metric_axis(metric: str) -> tuple[str, bool]:
    """Axis label and whether the metric is a fraction in [0, 1] (the paper's are; other metrics
    have no known range and get automatic limits)."""
    if metric in METRIC_NAMES:
        return f"{METRIC_NAMES[metric]} (fraction, 0–1)", True
    return metric, False


def _panels(n: int) -> tuple[Figure, list]:
    """A figure with ``n`` panels, at most four per row."""
    columns = min(n, 4)
    fig = Figure(figsize=(4.3 * columns + 1, 4.2 * math.ceil(n / columns)), layout="constrained")
    axes = list(fig.subplots(math.ceil(n / columns), columns, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _style_n_axis(ax, ylabel, ylim=(0.0, 1.02)):
    ax.set_xscale("log")
    ax.set_xlabel("edits applied N (log scale)")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)


def plot_op_vs_n(agg: pd.DataFrame, baselines: pd.DataFrame | None = None, title="") -> Figure | None:
    """OP against N for every method (paper Fig. 1); published points dotted with x markers.
    None when the rows have no OP column."""
    if OVERALL not in metric_names(agg):
        return None
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    _plot_measured(ax, agg, OVERALL)
    _plot_published(ax, agg, baselines, OVERALL)
    _style_n_axis(ax, _metric_axis(OVERALL)[0])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return fig


def plot_metrics_vs_n(agg: pd.DataFrame, baselines: pd.DataFrame | None = None,
                      title="") -> Figure | None:
    """One panel per metric of the rows but OP (paper Figs. 6–8: Rel, Gen, Loc); None if none."""
    metrics = [metric for metric in metric_names(agg) if metric != OVERALL]
    if not metrics:
        return None
    fig, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics):
        label, fraction = _metric_axis(metric)
        _plot_measured(ax, agg, metric)
        _plot_published(ax, agg, baselines, metric)
        _style_n_axis(ax, label, ylim=(0.0, 1.02) if fraction else None)
        ax.set_title(display_name(metric))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_cost_vs_n(agg: pd.DataFrame, title="") -> Figure:
    """Per-edit time and memory against N (paper Fig. 9); the memory panel plots and labels what
    the rows' ``mem_device`` measured (:data:`MEMORY_AXES`)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    time_ax, mem_ax = fig.subplots(1, 2)
    _plot_measured(time_ax, agg, "edit_s_mean", scale=1e3)
    _style_n_axis(time_ax, "edit time per edit (ms)", ylim=None)
    times = agg["edit_s_mean"][agg["edit_s_mean"] > 0]
    if len(times) and times.max() / times.min() > 30:  # methods differ by orders of magnitude
        time_ax.set_yscale("log")
    time_ax.set_title("Edit time")
    device = _devices(agg["mem_device"])
    ylabel, series = MEMORY_AXES.get(device, NEUTRAL_MEMORY)
    for column, suffix, linestyle in series:
        _plot_measured(mem_ax, agg, column, suffix=suffix, linestyle=linestyle)
    _style_n_axis(mem_ax, ylabel, ylim=None)
    if device in MEMORY_AXES:
        mem_ax.set_title(f"Memory ({device})")
    elif device == UNKNOWN_DEVICE:
        mem_ax.set_title("Memory (device unknown: rows without mem_device): "
                         "peak (solid), resident (dashed)", fontsize=8)
    else:
        mem_ax.set_title(f"Memory (mixed devices: {device}): peak (solid), resident (dashed)",
                         fontsize=8)
    for ax in (time_ax, mem_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def _setting_value(value):
    """A hyper-parameter value as a table / axis key: numbers stay numbers, anything else
    (lists such as WISE's act_margin) becomes its compact JSON text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return json.dumps(value, separators=(",", ":"))


def _setting_text(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _final_configs(calib: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Last checkpoint of each hyper-parameter setting, and the swept hyper-parameters (those
    whose value differs between settings; most distinct values first), one column each."""
    final = calib.sort_values("N").drop_duplicates("hparams_key", keep="last").copy()
    hparams = final["hparams_key"].map(json.loads)
    keys = list(dict.fromkeys(key for hp in hparams for key in hp))
    counts = {key: hparams.map(lambda hp: json.dumps(hp.get(key), sort_keys=True)).nunique() for key in keys}
    swept = sorted((key for key in keys if counts[key] > 1), key=lambda key: -counts[key])
    for key in swept:
        final[key] = hparams.map(lambda hp: _setting_value(hp.get(key)))
    return final, swept


def plot_calibration(calib: pd.DataFrame, title="") -> Figure | None:
    """One heat-map per metric of the rows over the two swept hyper-parameters (rows: the one with
    more values), or one column for a single swept one (None if nothing was swept)."""
    final, swept = _final_configs(calib)
    metrics = metric_names(final)
    if not len(final) or not swept or not metrics:
        return None
    y_key = swept[0]
    x_key = swept[1] if len(swept) > 1 else None
    fig, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics):
        label, fraction = _metric_axis(metric)
        vmin, vmax = (0.0, 1.0) if fraction else (None, None)
        grid = (final.pivot_table(index=y_key, columns=x_key, values=metric, aggfunc="mean", dropna=False)
                if x_key else final.groupby(y_key)[[metric]].mean())
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="viridis", origin="lower",
                          aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if image.norm(value) < 0.6 else "black")
        ax.set_xticks(range(len(grid.columns)), [_setting_text(v) for v in grid.columns] if x_key else [""])
        ax.set_yticks(range(len(grid.index)), [_setting_text(v) for v in grid.index])
        ax.set_xlabel(x_key or "")
        ax.set_ylabel(y_key)
        ax.set_title(display_name(metric))
        fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    Ns = ", ".join(str(int(n)) for n in sorted(final["N"].unique()))
    rest = ", ".join(swept[2:])
    fig.suptitle(f"{title} — last checkpoint per setting (N = {Ns})"
                 + (f"; averaged over {rest}" if rest else ""), fontsize=9)
    return fig


def calibration_table(calib: pd.DataFrame, name: str, title: str) -> Table | None:
    """One row per setting of a sweep (its swept values), its last checkpoint's metrics; bold =
    the best overall score (None if nothing was swept)."""
    final, swept = _final_configs(calib)
    metrics = metric_names(final)
    if not len(final) or not swept:
        return None
    final = final.sort_values(swept)
    rows = [[_setting_text(r[key]) for key in swept] + [str(int(r["N"]))] + [_fmt(r[m]) for m in metrics]
            for _, r in final.iterrows()]
    bold = set()
    if OVERALL in metrics:
        best = round(final[OVERALL].max(), DIGITS)
        column = len(swept) + 1 + metrics.index(OVERALL)
        bold = {(i, column) for i, v in enumerate(final[OVERALL]) if round(v, DIGITS) == best}
    return Table(name, title, [("", swept + ["N"] + [display_name(m) for m in metrics])], rows, bold,
                 notes=["Last checkpoint of each setting; one seed per setting unless the cells say otherwise."],
                 kind="calibration")


def pareto_front(points: pd.DataFrame, x="loc", y="gen") -> pd.DataFrame:
    """Rows not dominated in (x, y), both higher-is-better, sorted by x descending."""
    best_y, keep = -math.inf, []
    for index, row in points.sort_values([x, y], ascending=False).iterrows():
        if row[y] > best_y:
            keep.append(index)
            best_y = row[y]
    return points.loc[keep]


def plot_pareto(calib: pd.DataFrame, title="") -> Figure | None:
    """Loc against Gen for every calibration setting, colour = OP, Pareto front marked
    (None unless the rows have loc, gen and op)."""
    if not {"loc", "gen", OVERALL} <= set(metric_names(calib)):
        return None
    final, swept = _final_configs(calib)
    final = final.dropna(subset=["loc", "gen"])
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
        text = ", ".join(f"{key}={_setting_text(row[key])}" for key in swept) or row["label"]
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


def _table_stem(data, model, protocol, version, scoring, chat_template=False, max_new_tokens=MAX_NEW_TOKENS) -> str:
    return _stem(data, model, f"{protocol}-v{version}", scoring, *(["chat"] if chat_template else []),
                 *([f"gen{max_new_tokens}"] if max_new_tokens != MAX_NEW_TOKENS else []))


def _title(data, model, protocol, version, scoring, chat_template=False, max_new_tokens=MAX_NEW_TOKENS) -> str:
    cap = f" · answers cut at {max_new_tokens} tokens" if max_new_tokens != MAX_NEW_TOKENS else ""
    return (f"{data} · {model}{' (chat template)' if chat_template else ''} · {protocol} (v{version}) · "
            f"{scoring} scoring{cap}")


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

    def save_figures(stem: str, figures: dict):
        """Save each figure as ``<kind>__<stem>``; a None figure (nothing to plot) is skipped."""
        for kind, fig in figures.items():
            if fig is not None:
                written["figures"] += _save(fig, figures_dir, f"{kind}__{stem}")

    main = agg[agg["tag"] == "main"]
    for key, group in main.groupby(TABLE_KEYS, sort=True):
        stem, title = _table_stem(*key), _title(*key)
        if group[metric_names(group)].notna().any().any():
            write_table(metric_table(group, baselines, stem, title))
            save_figures(stem, {"op_vs_n": plot_op_vs_n(group, baselines, title),
                                "metrics_vs_n": plot_metrics_vs_n(group, baselines, title)})
        write_table(cost_table(group, f"{stem}__cost", f"Cost — {title}"))
        save_figures(stem, {"cost_vs_n": plot_cost_vs_n(group, f"Cost — {title}")})

    from editbench.paper_tables import paper_tables  # imports this module's Table and formatting
    for table in paper_tables(main, baselines):
        write_table(table)

    calibration = agg[agg["tag"] == "calibration"]
    for key, group in calibration.groupby(TABLE_KEYS + ["method"], sort=True):
        stem, title = _stem(_table_stem(*key[:-1]), key[-1]), f"{key[-1]} calibration — {_title(*key[:-1])}"
        table = calibration_table(group, f"calibration__{stem}", title)
        if table is not None:
            write_table(table)
        save_figures(stem, {"calibration": plot_calibration(group, title),
                            "pareto": plot_pareto(group, title)})

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
        lines += ["", f"{unstated} published row(s) state no model or N (Tables 6, 7, 8): no "
                  "generic table matches them; they are printed in the paper_table6/7/8 layouts."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- README

def readme_block(tables: list[Table], tables_dir: str = "reports/tables") -> str:
    """What goes between the README markers: each metric table's Markdown under its bold title,
    or a one-line note when there is none. A metric table wider than `README_MAX_COLUMNS` columns
    (UnKE's 26 free-text metrics per checkpoint) is named with a link to its file under
    `tables_dir` instead; its paper layout, when there is one, is inlined."""
    metric_tables = [table for table in tables if table.kind == "metrics"]
    if not metric_tables:
        return README_EMPTY + "\n"
    shown = metric_tables + [table for table in tables if table.kind in ("paper", "calibration")]

    def body(table: Table) -> str:
        if table.kind == "metrics" and len(table.columns) > README_MAX_COLUMNS:
            return (f"{len(table.columns)} columns, too wide to read here: "
                    f"[{tables_dir}/{table.name}.md]({tables_dir}/{table.name}.md) "
                    f"([tex]({tables_dir}/{table.name}.tex)).\n")
        return _markdown_body(table)

    return "\n".join(f"**{table.title}**\n\n{body(table)}" for table in shown)


def _readme_span(lines: list[str], path) -> tuple[int, int]:
    """Indices of the begin and end marker lines; :class:`ReportError` if one is missing."""
    begin = next((i for i, line in enumerate(lines) if line.strip() == README_BEGIN), None)
    if begin is None:
        raise ReportError(f"{path} has no {README_BEGIN} line — add {README_BEGIN} and "
                          f"{README_END} lines around the table block")
    end = next((i for i, line in enumerate(lines) if i > begin and line.strip() == README_END), None)
    if end is None:
        raise ReportError(f"{path} has no {README_END} line after {README_BEGIN} — add it "
                          "where the table block ends")
    return begin, end


def _readme_lines(path) -> list[str]:
    try:
        return Path(path).read_text().splitlines(keepends=True)
    except OSError as err:
        raise ReportError(f"cannot read {path} ({err.strerror or err}) — pass a readable file to "
                          "--readme") from None


def check_readme(path) -> None:
    """Raise :class:`ReportError` unless ``path`` can be read and has both markers."""
    _readme_span(_readme_lines(path), path)


def write_readme(path, tables: list[Table], tables_dir="reports/tables") -> None:
    """Replace the lines between the markers in ``path`` by :func:`readme_block`, atomically
    (temp file + ``os.replace``, file mode kept); a missing marker raises and writes nothing.
    ``tables_dir``: where the tables were written, for the links to wide tables."""
    path = Path(path)
    lines = _readme_lines(path)
    begin, end = _readme_span(lines, path)
    link = Path(os.path.relpath(Path(tables_dir).resolve(), path.parent.resolve())).as_posix()
    text = "".join(lines[:begin + 1] + [readme_block(tables, link)] + lines[end:])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
    parser.add_argument("--readme", help=f"also replace the lines between {README_BEGIN} and "
                                         f"{README_END} in this file with the main metric tables")
    args = parser.parse_args(argv)
    try:
        if args.readme:
            check_readme(args.readme)  # fail before anything is written
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResultsWarning)
            rows = load_rows(args.results)
        for warning in caught:
            print(f"editbench.report: warning: {warning.message}", file=sys.stderr)
        out = Path(args.out)
        written, tables = _render_rows(rows, out, load_baselines(args.baselines), args.results)
        if args.readme:
            write_readme(args.readme, tables, out / "tables")
    except ReportError as err:
        print(f"editbench.report: {err}", file=sys.stderr)
        return 2
    n_runs, partial = _run_counts(rows)
    if partial:
        print(f"editbench.report: note: {len(partial)} of {n_runs} runs are partial "
              "(no complete summary.json); their rows are included")
    n_figures = sum(p.suffix == ".png" for p in written["figures"])
    print(f"editbench.report: {len(rows)} rows from {n_runs} runs -> {len(tables)} tables, "
          f"{n_figures} figures under {out}/ (see {out / 'index.md'})"
          + (f"; tables written into {args.readme}" if args.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
