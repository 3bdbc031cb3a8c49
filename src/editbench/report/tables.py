"""Generic tables: the :class:`Table` every layout builds, the cell formatters, the per-setting
layouts (metrics per N, cost, calibration sweep, the README's OP overview) and their Markdown and
LaTeX text.  The paper's own layouts (its Tables 6, 7, 8) are in :mod:`editbench.report.paper`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from editbench.report.baselines import published_rows
from editbench.report.intervals import CONFIDENCE, RESAMPLES, cell_interval
from editbench.report.rows import (MAX_NEW_TOKENS, OVERALL, REFERENCE_METHODS, display_name, final_configs,
                                   metric_names, ordered_labels, setting_text)

DIGITS = 3  # decimals of measured cells; ties for "best" are judged at this precision
NO_CI = "no CI"  # a measured cell without an interval: its run kept no records/ at that N
CI_NOTE = (f"(±h) = half the width of the {CONFIDENCE:.0%} bootstrap interval over edit cases ({RESAMPLES:,} "
           "resamples of the run's records/, a case's probes together; OP recomputed from each resample's "
           f"means); ({NO_CI}) = the run kept no records/ there.")
NOT_RUN = "n/r"
NOT_RUN_NOTE = ("n/r = not run: every run of that row asked for a shorter stream (n_edits); which longer "
                "streams are under way and which editors were not continued (collapsed by N = 1,000) is in "
                "docs/results-notes.md; — = not measured (yet).")
PUBLISHED_NOTE = ("Published rows: the HoReN paper's tables, transcribed in baselines/ (baselines/README.md); "
                  "* = the paper's N for that column is inferred, not stated.")


@dataclass
class Table:
    """A rendered table: text cells plus which cells are bold; written as md, tex or wandb."""

    name: str
    title: str
    header: list[tuple[str, list[str]]]  # column blocks: (block title or "", sub-column names)
    rows: list[list[str]]                # display text; first cell is the row label
    bold: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    # "metrics" (every metric per N), "cost", "calibration", "paper" (the paper's layouts),
    # "intervals" (interval bounds per N), "paired" (paired comparisons), "scorings" (one stream
    # under several scoring modes),
    # "overview" (OP per N, for the README; never written as a file)
    kind: str = "metrics"

    @property
    def columns(self) -> list[str]:
        return [f"{block} {name}".strip() for block, names in self.header for name in names]


# ----------------------------------------------------------------------------------------- cells

def format_value(mean, std=None, n=1, digits=DIGITS, interval=None) -> str:
    """A measured cell: ``mean ± std`` over n > 1 seeds, the mean alone for one seed, "—" when
    nothing was measured.  ``interval`` (a (low, high) pair, e.g. a confidence interval) is
    appended as `` [low, high]`` when given."""
    if mean is None or pd.isna(mean):
        return "—"
    if n > 1 and std is not None and not pd.isna(std):
        text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    else:
        text = f"{mean:.{digits}f}"
    if interval is not None:
        low, high = interval
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def format_measured(row, metric: str, digits: int = DIGITS, bounds: bool = False) -> str:
    """A metric cell of an aggregated row (:func:`format_value`) with its confidence interval:
    `` (±h)``, half its width, or with ``bounds`` `` [low, high]``; `` (no CI)`` when the row has
    none; "—" when the metric was not measured."""
    mean = row.get(metric)
    text = format_value(mean, row.get(f"{metric}_std"), row.get("n", 1), digits)
    if text == "—":
        return text
    interval = cell_interval(row, metric)
    if interval is None:
        return f"{text} ({NO_CI})"
    if bounds:
        return f"{text} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    return f"{text} (±{interval.half_width:.{digits}f})"


def format_published(value: float) -> str:
    """A published cell as the paper prints it: 2 or 3 decimals (a trailing 0 of 3 dropped)."""
    text = f"{value:.3f}"
    return text[:-1] if text.endswith("0") else text


def _n_range(values) -> str:
    lo, hi = int(min(values)), int(max(values))
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _best_cells(numbers: list, first_column: int) -> set[tuple[int, int]]:
    """(row, column) of the highest value in each column; ties are all returned."""
    best = set()
    measured = [(i, nums) for i, nums in enumerate(numbers) if nums is not None]
    for j in range(len(measured[0][1]) if measured else 0):
        top = max((nums[j] for _, nums in measured if nums[j] is not None), default=None)
        best |= {(i, j + first_column) for i, nums in measured if top is not None and nums[j] == top}
    return best


# ----------------------------------------------------------------------------------------- names

def file_stem(*parts) -> str:
    """A file-name-safe stem joining ``parts`` with ``__``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "__".join(str(p) for p in parts))


def table_stem(data, model, protocol, version, scoring, chat_template=False, max_new_tokens=MAX_NEW_TOKENS) -> str:
    """The file stem of one setting's tables and figures (its :data:`~editbench.report.rows.TABLE_KEYS`
    values), e.g. ``zsre__qwen25_7b__lifelong_v1-v1__greedy``."""
    return file_stem(data, model, f"{protocol}-v{version}", scoring, *(["chat"] if chat_template else []),
                     *([f"gen{max_new_tokens}"] if max_new_tokens != MAX_NEW_TOKENS else []))


def table_title(data, model, protocol, version, scoring, chat_template=False, max_new_tokens=MAX_NEW_TOKENS) -> str:
    """The human title of one setting, e.g. ``zsre · qwen25_7b · lifelong_v1 (v1) · greedy scoring``."""
    cap = f" · answers cut at {max_new_tokens} tokens" if max_new_tokens != MAX_NEW_TOKENS else ""
    return (f"{data} · {model}{' (chat template)' if chat_template else ''} · {protocol} (v{version}) · "
            f"{scoring} scoring{cap}")


# --------------------------------------------------------------------------------------- layouts

def _method_rows(agg: pd.DataFrame, baselines: pd.DataFrame, Ns: list[int], metrics: list[str],
                 skip_empty: bool = False) -> tuple[list[list[str]], set[tuple[int, int]], bool]:
    """Rows = measured labels in table order, each method's published rows right under its last
    one (``skip_empty``: not those without a value here); cells = label, seeds (n), then
    ``metrics`` per N.  Returns the rows, the bold cells (best measured per column) and whether a
    published row was added."""
    rows, numbers = [], []  # numbers: rounded means of rows competing for bold, else None
    has_published = False
    model, data = agg["model"].iloc[0], agg["data"].iloc[0]
    labels = ordered_labels(agg)
    for position, (method, label) in enumerate(labels):
        cells = agg[agg["label"] == label].set_index("N")
        row, nums = [label, _n_range(cells["n"])], []
        stream = cells["n_edits"].max() if "n_edits" in cells else float("nan")
        for n, m in ((n, m) for n in Ns for m in metrics):
            present = n in cells.index and not pd.isna(cells.at[n, m])
            row.append(format_measured(cells.loc[n], m) if present else NOT_RUN if n > stream else "—")
            nums.append(round(float(cells.at[n, m]), DIGITS) if present else None)
        rows.append(row)
        numbers.append(None if method in REFERENCE_METHODS else nums)
        if position + 1 == len(labels) or labels[position + 1][0] != method:  # method's last row
            for pub_label, pub in published_rows(baselines, model, method, data, Ns):
                values = [format_published(pub[(n, m)]) if (n, m) in pub else "" for n in Ns for m in metrics]
                if skip_empty and not any(values):
                    continue  # nothing published for these metrics (e.g. no OP in that table)
                rows.append([pub_label, ""] + values)
                numbers.append(None)
                has_published = True
    return rows, _best_cells(numbers, first_column=2), has_published


def metric_table(agg: pd.DataFrame, baselines: pd.DataFrame, name: str, title: str) -> Table:
    """Paper layout: rows = methods (+ published rows), blocks = N, the rows' metrics per block."""
    Ns = sorted(int(n) for n in agg["N"].unique())
    metrics = metric_names(agg)
    header = [("", ["Method", "n"])] + [(f"N={n}", [display_name(m) for m in metrics]) for n in Ns]
    rows, bold, has_published = _method_rows(agg, baselines, Ns, metrics)
    notes = ["Cells: mean ± sample std over n seeds (mean only when n = 1), then the interval: " + CI_NOTE
             + " Bold = best measured mean per column (published and Unedited rows excluded)."]
    if any(cell == NOT_RUN for row in rows for cell in row):
        notes.append(NOT_RUN_NOTE)
    if has_published:
        notes.append(PUBLISHED_NOTE)
    return Table(name, title, header, rows, bold, notes)


def overview_table(agg: pd.DataFrame, baselines: pd.DataFrame, name: str, title: str,
                   metric: str = OVERALL) -> Table | None:
    """The README's compact layout: rows = methods (+ published rows), one column per N, one
    metric (the overall score, OP) per cell, bold = best measured per N; None when the rows have
    no such metric (free-text datasets).  No notes: the README explains the cells once, above all
    such tables."""
    if metric not in metric_names(agg) or agg[metric].isna().all():
        return None
    Ns = sorted(int(n) for n in agg.loc[agg[metric].notna(), "N"].unique())
    header = [("", ["Method", "n", *(f"N={n}" for n in Ns)])]
    rows, bold, _ = _method_rows(agg, baselines, Ns, [metric], skip_empty=True)
    return Table(name, title, header, rows, bold, kind="overview")


def cost_table(agg: pd.DataFrame, name: str, title: str) -> Table:
    """Long layout: one row per (method, N) with time, memory (and its device) and editor size;
    a ``mem growth`` column only when some row has ``mem_growth_gb``."""
    memory = [("peak_mem_gb", "peak mem (GB)"), ("resident_mem_gb", "resident mem (GB)")]
    if agg["mem_growth_gb"].notna().any():
        memory.append(("mem_growth_gb", "mem growth (GB)"))
    header = [("", ["Method", "N", "n", "edit time (ms/edit)", "eval time (s)", "mem_device",
                    *(heading for _, heading in memory), "editor params"])]
    rows = []
    for _, label in ordered_labels(agg):
        for _, r in agg[agg["label"] == label].sort_values("N").iterrows():
            params = r["editor_params"]
            rows.append([label, str(int(r["N"])), str(int(r["n"])),
                         format_value(r["edit_s_mean"] * 1e3, r["edit_s_mean_std"] * 1e3, r["n"],
                                      1 if r["edit_s_mean"] * 1e3 >= 1 else 4),
                         format_value(r["eval_s"], r["eval_s_std"], r["n"], 1),
                         r["mem_device"],
                         *(format_value(r[column], r[f"{column}_std"], r["n"], 2) for column, _ in memory),
                         "—" if pd.isna(params) else f"{params:,.0f}"])
    notes = ["Cells: mean ± sample std over n seeds; edit time is the mean wall time per edit "
             "over the edits applied so far; eval time is this checkpoint's evaluation.",
             "Memory by mem_device: cuda = peak allocated over all devices / allocated now; "
             "cpu = no peak (—) / resident set now, growth = resident set over the process before the editor "
             "was built; unknown = rows written before mem_device existed (their peak is the process's "
             "lifetime peak resident set)."]
    return Table(name, title, header, rows, set(), notes, kind="cost")


def interval_table(agg: pd.DataFrame, name: str, title: str) -> Table | None:
    """Long layout of the intervals themselves: one row per (method, N) with the cases
    bootstrapped and each metric's ``[low, high]`` (percentile intervals are not symmetric near 0
    and 1, which the wide tables' (±h) hides); None when no row has an interval."""
    metrics = metric_names(agg)
    if "n_cases" not in agg or agg["n_cases"].isna().all():
        return None
    header = [("", ["Method", "N", "n", "cases", *(display_name(m) for m in metrics)])]
    def bounds(r, metric: str) -> str:
        interval = cell_interval(r, metric)
        if pd.isna(r.get(metric)):
            return "—"
        return NO_CI if interval is None else f"[{interval.low:.{DIGITS}f}, {interval.high:.{DIGITS}f}]"

    rows = []
    for _, label in ordered_labels(agg):
        for _, r in agg[agg["label"] == label].sort_values("N").iterrows():
            cases = "—" if pd.isna(r["n_cases"]) else f"{r['n_cases']:,.0f}"
            rows.append([label, str(int(r["N"])), str(int(r["n"])), cases, *(bounds(r, m) for m in metrics)])
    notes = [f"[low, high] = the {CONFIDENCE:.0%} percentile bootstrap interval over edit cases ({RESAMPLES:,} "
             "seeded resamples of the run's records/, every probe of a drawn case together; OP recomputed from "
             "each resample's Rel / Gen / Loc means; n > 1 seeds: each seed's cases resampled on their own and "
             f"the values averaged); cases = cases bootstrapped (over all seeds); {NO_CI} = the run kept no "
             "records/ at that N."]
    return Table(name, title, header, rows, set(), notes, kind="intervals")


def calibration_table(calib: pd.DataFrame, name: str, title: str) -> Table | None:
    """One row per setting of a sweep (its swept values), its last checkpoint's metrics; bold =
    the best overall score (None if nothing was swept)."""
    final, swept = final_configs(calib)
    metrics = metric_names(final)
    if not len(final) or not swept:
        return None
    final = final.sort_values(swept)
    rows = [[setting_text(r[key]) for key in swept] + [str(int(r["N"]))]
            + [format_measured(r, m, bounds=True) for m in metrics] for _, r in final.iterrows()]
    bold = set()
    if OVERALL in metrics:
        best = round(final[OVERALL].max(), DIGITS)
        column = len(swept) + 1 + metrics.index(OVERALL)
        bold = {(i, column) for i, v in enumerate(final[OVERALL]) if round(v, DIGITS) == best}
    return Table(name, title, [("", swept + ["N"] + [display_name(m) for m in metrics])], rows, bold,
                 notes=["Last checkpoint of each setting; one seed per setting unless the cells say otherwise. "
                        f"[low, high] = the {CONFIDENCE:.0%} bootstrap interval over edit cases ({NO_CI}: the run "
                        "kept no records/)."],
                 kind="calibration")


def transposed(table: Table, corner: str) -> Table:
    """``table`` with rows and columns swapped: one row per sub-column (named without its block
    title), one column per row label; bold cells follow.  For a wide table read one block at a
    time (e.g. the metrics at one N)."""
    names = [name for _, names in table.header for name in names]
    header = [("", [corner] + [row[0] for row in table.rows])]
    rows = [[names[j]] + [row[j] for row in table.rows] for j in range(1, len(names))]
    bold = {(j - 1, i + 1) for i, j in table.bold if j >= 1}
    return Table(table.name, table.title, header, rows, bold, list(table.notes), table.kind)


# ------------------------------------------------------------------------------------------ text

def to_markdown(table: Table) -> str:
    """The table as a Markdown file: ``## title``, then :func:`markdown_body`."""
    return f"## {table.title}\n\n{markdown_body(table)}"


def markdown_body(table: Table) -> str:
    """The table and its notes as Markdown, without the title (bold cells in ``**``)."""
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
               "·": r"$\cdot$", "§": r"\S{}", "Δ": r"$\Delta$", "<": r"\textless{}", ">": r"\textgreater{}"}


def _tex(text: str) -> str:
    return "".join(TEX_ESCAPES.get(char, char) for char in text)


def to_latex(table: Table) -> str:
    """The table as a booktabs LaTeX ``table`` environment (caption = title + first note)."""
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
