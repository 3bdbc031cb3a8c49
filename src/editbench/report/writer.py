"""Writing the report: tables and figures under ``--out`` with their index.md, the README's
generated block (OP per editor and N) and docs/results.md (every table), and the optional W&B
mirror.  The results files stay the source of truth: everything here is regenerated."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from editbench.report.baselines import load_baselines, table_rank, unmatched_published
from editbench.report.comparisons import paired_results, paired_table, stream_keys
from editbench.report.figures import (plot_calibration, plot_cost_vs_n, plot_metrics_vs_n, plot_op_vs_n, plot_pareto,
                                      plot_routing_vs_n)
from editbench.report.intervals import CONFIDENCE, RecordStore, add_intervals
from editbench.report.paper import paper_tables
from editbench.report.scorings import scoring_tables
from editbench.report.rows import (GROUP_KEYS, TABLE_KEYS, ReportError, aggregate, load_rows, metric_names,
                                   run_counts)
from editbench.report.tables import (Table, calibration_table, cost_table, file_stem, interval_table, markdown_body,
                                     metric_table, overview_table, table_stem, table_title, to_latex, to_markdown,
                                     transposed)

README_BEGIN, README_END = "<!-- table:begin -->", "<!-- table:end -->"
README_EMPTY = "No results yet: run `make figures` after a run."
MAX_COLUMNS = 40  # a wider metric table (free-text metrics x checkpoints) is shown one N at a time
RESULTS_DOC = "results.md"
NOTES_DOC = "results-notes.md"  # hand-written findings beside the generated results.md


@dataclass
class Setting:
    """One main setting (a :data:`~editbench.report.rows.TABLE_KEYS` value): its tables and figures."""

    title: str
    stem: str
    metrics: Table | None                  # every metric per N (None: the rows have no metric value)
    cost: Table
    overview: Table | None                 # OP per N (None: no OP, e.g. free-text metrics)
    by_n: list[tuple[int, Table]] = field(default_factory=list)  # a too-wide metric table, one N each
    figures: dict[str, Path] = field(default_factory=dict)        # kind -> PNG
    intervals: Table | None = None         # interval bounds per method and N (None: no interval)
    paired: Table | None = None            # the declared paired comparisons (None: none applies)


@dataclass
class Rendered:
    """What :func:`render_rows` wrote (``written``: paths by kind) and built."""

    written: dict[str, list[Path]]
    tables: list[Table]                    # every table written, in the order written
    settings: list[Setting]                # the main settings, in table order
    calibration: list[tuple[Table, dict[str, Path]]] = field(default_factory=list)  # table, figures


def save_figure(fig: Figure, folder: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.png`` (150 dpi) and ``stem.pdf`` (no creation date, so a re-render
    is byte-identical); return both paths."""
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def render(results_dir, out_dir, baselines_dir) -> dict[str, list[Path]]:
    """Read results, write tables, figures and index.md; return the paths written by kind."""
    rows = load_rows(results_dir)
    return render_rows(rows, Path(out_dir), load_baselines(baselines_dir), results_dir).written


def render_rows(rows: pd.DataFrame, out_dir: Path, baselines: pd.DataFrame, source) -> Rendered:
    """Tables (``out_dir/tables``), figures (``out_dir/figures``) and ``out_dir/index.md`` from
    rows of :func:`~editbench.report.rows.load_rows`; ``source`` names them in index.md.  Each
    cell's interval and the paired comparisons come from the runs' records/ (intervals.py)."""
    store = RecordStore()
    agg = add_intervals(aggregate(rows), store)
    streams = stream_keys(rows)
    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    rendered = Rendered({"tables": [], "figures": [], "index": []}, [], [])

    def write_table(table: Table):
        for suffix, text in ((".md", to_markdown(table)), (".tex", to_latex(table))):
            path = tables_dir / f"{table.name}{suffix}"
            path.write_text(text)
            rendered.written["tables"].append(path)
        rendered.tables.append(table)

    def save_figures(stem: str, figures: dict) -> dict[str, Path]:
        """Save each figure as ``<kind>__<stem>``; a None figure (nothing to plot) is skipped."""
        pngs = {}
        for kind, fig in figures.items():
            if fig is not None:
                paths = save_figure(fig, figures_dir, f"{kind}__{stem}")
                rendered.written["figures"] += paths
                pngs[kind] = paths[0]
        return pngs

    main = agg[agg["tag"] == "main"]
    for key, group in main.groupby(TABLE_KEYS, sort=True):
        stem, title = table_stem(*key), table_title(*key)
        setting = Setting(title, stem, None, cost_table(group, f"{stem}__cost", f"Cost — {title}"),
                          overview_table(group, baselines, f"{stem}__op", title))
        if group[metric_names(group)].notna().any().any():
            setting.metrics = metric_table(group, baselines, stem, title)
            write_table(setting.metrics)
            if len(setting.metrics.columns) > MAX_COLUMNS:
                setting.by_n = [(int(n), transposed(metric_table(at, baselines, stem, title), "Metric"))
                                for n, at in group.groupby("N", sort=True)]
            setting.figures |= save_figures(stem, {"op_vs_n": plot_op_vs_n(group, baselines, title),
                                                   "metrics_vs_n": plot_metrics_vs_n(group, baselines, title)})
        write_table(setting.cost)
        setting.intervals = interval_table(group, f"{stem}__ci", f"{CONFIDENCE:.0%} intervals — {title}")
        if setting.intervals is not None:
            write_table(setting.intervals)
        setting.paired = paired_table(paired_results(group, store, streams), f"paired__{stem}",
                                      f"Paired comparisons — {title}")
        if setting.paired is not None:
            write_table(setting.paired)
        setting.figures |= save_figures(stem, {"cost_vs_n": plot_cost_vs_n(group, f"Cost — {title}"),
                                               "routing_vs_n": plot_routing_vs_n(group, f"Routing — {title}")})
        rendered.settings.append(setting)

    for table in paper_tables(main, baselines) + scoring_tables(main):
        write_table(table)

    calibration = agg[agg["tag"] == "calibration"]
    for key, group in calibration.groupby(TABLE_KEYS + ["method"], sort=True):
        setting_title = table_title(*key[:-1])
        stem, title = file_stem(table_stem(*key[:-1]), key[-1]), f"{key[-1]} calibration — {setting_title}"
        table = calibration_table(group, f"calibration__{stem}", title)
        if table is not None:
            write_table(table)
        figures = save_figures(stem, {"calibration": plot_calibration(group, setting_title),
                                      "pareto": plot_pareto(group, setting_title)})
        if table is not None:
            rendered.calibration.append((table, figures))

    written = set(rendered.written["tables"] + rendered.written["figures"])
    for stale in [*tables_dir.iterdir(), *figures_dir.iterdir()]:  # e.g. the outputs of runs deleted since
        if stale.suffix in (".md", ".tex", ".png", ".pdf") and stale not in written:
            stale.unlink()
    index = out_dir / "index.md"
    index.write_text(_index_text(rows, agg, baselines, rendered.written, out_dir, source))
    rendered.written["index"].append(index)
    return rendered


def _index_text(rows, agg, baselines, written, out_dir: Path, source) -> str:
    n_runs, partial = run_counts(rows)
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
                key=lambda kv: (table_rank(kv[0][0]), kv[0][1:])):
            Ns = ", ".join(str(int(n)) for n in sorted(group["N"]))
            lines.append(f"| T{table} | {model} | {method} | {data} | {Ns} |")
    else:
        lines.append("None." if len(baselines) else "No baselines loaded.")
    unstated = int(((baselines["model"] == "") | baselines["N"].isna()).sum())
    if unstated:
        lines += ["", f"{unstated} published row(s) state no model or N (Tables 6, 7, 8): no "
                  "generic table matches them; they are printed in the paper_table6/7/8 layouts."]
    return "\n".join(lines) + "\n"


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


# ---------------------------------------------------------------------------------------- README

def readme_block(settings: list[Setting], details: str = f"docs/{RESULTS_DOC}") -> str:
    """What goes between the README markers: per main setting, the overall score (OP) per
    editor and N under the setting's bold title (a one-line note for a setting without OP), and
    where every other table is (``details``: a link relative to the README)."""
    if not any(setting.metrics is not None for setting in settings):
        return README_EMPTY + "\n"
    link = f"[{details}]({details})"
    lines = ["OP (overall performance, 0–1) per editor and number of edits N: mean ± sample std over n "
             "seeds (the mean alone when n = 1), then (±h), half the width of its 95 % bootstrap interval "
             "over edit cases, or (no CI) for a run that kept no per-probe records; bold = best measured "
             "per N (Unedited and published rows excluded); n/r = not run (the row's runs asked for a shorter "
             f"stream; which are under way and which were not continued: docs/{NOTES_DOC}), — = not measured "
             "(yet); a `(published, T…)` row is the HoReN paper's "
             "number for the same model, data and N (* = N inferred). Every metric per N, the intervals' "
             "bounds, the paired comparisons (which differences are significant), the costs, the "
             f"calibration sweeps and the paper's Table 6 / 7 / 8 layouts: {link}.", ""]
    for setting in settings:
        if setting.metrics is None:
            continue
        lines += [f"**{setting.title}**", ""]
        if setting.overview is None:
            lines += [f"No OP in these rows; every metric they have, per N: {link}.", ""]
        else:
            lines.append(markdown_body(setting.overview))
    return "\n".join(lines).rstrip("\n") + "\n"


def _readme_span(lines: list[str], path, begin_marker: str = README_BEGIN,
                 end_marker: str = README_END) -> tuple[int, int]:
    """Indices of the begin and end marker lines; :class:`ReportError` if one is missing."""
    begin = next((i for i, line in enumerate(lines) if line.strip() == begin_marker), None)
    if begin is None:
        raise ReportError(f"{path} has no {begin_marker} line — add {begin_marker} and "
                          f"{end_marker} lines around the generated block")
    end = next((i for i, line in enumerate(lines) if i > begin and line.strip() == end_marker), None)
    if end is None:
        raise ReportError(f"{path} has no {end_marker} line after {begin_marker} — add it "
                          "where the generated block ends")
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


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` via a temp file and ``os.replace``, keeping its file mode."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_readme(path, settings: list[Setting], details) -> None:
    """Replace the lines between the markers in ``path`` by :func:`readme_block`, atomically
    (file mode kept); a missing marker raises and writes nothing.  ``details``: the file with
    every table (docs/results.md, or the report's index.md), linked relative to ``path``."""
    path = Path(path)
    lines = _readme_lines(path)
    begin, end = _readme_span(lines, path)
    block = readme_block(settings, _relative(details, path.parent))
    _write_atomically(path, "".join(lines[:begin + 1] + [block] + lines[end:]))


def write_marked(path, begin_marker: str, end_marker: str, text: str) -> None:
    """Replace the lines between two other markers in ``path`` by ``text`` (atomically); a file
    without them is left as it is (the block is optional)."""
    path = Path(path)
    lines = _readme_lines(path)
    try:
        begin, end = _readme_span(lines, path, begin_marker, end_marker)
    except ReportError:
        return
    _write_atomically(path, "".join(lines[:begin + 1] + [text] + lines[end:]))


# ------------------------------------------------------------------------------ docs/results.md

def results_doc(rendered: Rendered, out_dir: Path, docs_dir: Path, source, n_rows: int, n_runs: int,
                n_partial: int, sections: Sequence[tuple[str, str]] = ()) -> str:
    """docs/results.md: every main table (all metrics per N with their intervals, then its cost
    table), the paired comparisons, the paper's Table 6 / 7 / 8 layouts with the published numbers
    beside, the generated `sections` ((title, Markdown): the cost benchmark, the stress rehearsal)
    and the calibration sweeps, each with links to its figures; a pointer to the hand-written
    findings (:data:`NOTES_DOC`)."""
    def link(path: Path) -> str:
        return _relative(path, docs_dir)

    def figures(pngs: dict[str, Path], names: dict[str, str]) -> list[str]:
        shown = [f"[{names[kind]}]({link(path)})" for kind, path in pngs.items() if kind in names]
        return ["Figures: " + " · ".join(shown), ""] if shown else []

    partial = f", {n_partial} of them partial" if n_partial else ""
    lines = ["# Results", "",
             "<!-- Generated by `make figures` (python -m editbench.report --docs ...) from the results "
             "files; do not edit: change src/editbench/report/ and regenerate. -->", "",
             f"Every measured table, generated from the `metrics.jsonl` files under `{Path(source).as_posix()}/` "
             f"({n_rows} rows from {n_runs} runs{partial}) by `make figures`; the results files are the "
             "source of truth. What the numbers show, and what to keep in mind reading them, is written "
             f"by hand in [{NOTES_DOC}]({NOTES_DOC}). Figures and LaTeX versions of every table: "
             f"[{link(out_dir / 'index.md')}]({link(out_dir / 'index.md')}). Published numbers are the "
             "HoReN paper's, transcribed in baselines/; — = not measured.", "",
             "## Main tables", ""]
    for setting in rendered.settings:
        lines += [f"### {setting.title}", ""]
        lines += figures(setting.figures, {"op_vs_n": "OP vs N", "metrics_vs_n": "metrics vs N",
                                           "cost_vs_n": "cost vs N", "routing_vs_n": "routing vs N"})
        if setting.intervals is not None:
            path = out_dir / "tables" / f"{setting.intervals.name}.md"
            lines += [f"Interval bounds per method and N: [{path.name}]({link(path)}); paired comparisons: "
                      "[below](#paired-comparisons).", ""]
        if setting.metrics is None:
            lines += ["No metric value in these rows (cost only).", ""]
        elif setting.by_n:
            lines += [f"{len(setting.metrics.columns)} columns, too wide to read as one table: one table "
                      "per N below, metrics as rows.", ""]
            for i, (n, table) in enumerate(setting.by_n):  # the shared notes once, after the last
                notes = table.notes if i + 1 == len(setting.by_n) else []
                lines += [f"#### N = {n:,}", "", markdown_body(replace(table, notes=notes))]
        else:
            lines.append(markdown_body(setting.metrics))
        lines += ["#### Cost", "", markdown_body(setting.cost)]
    paired = [setting for setting in rendered.settings if setting.paired is not None]
    if paired:
        lines += ["## Paired comparisons", "",
                  "HoReN against GRACE+Norm, each baseline, HoReN-LoRA and HoReN w/o norm, on the edit cases "
                  "both runs scored (the declared list: `COMPARISONS` in src/editbench/report/comparisons.py).", ""]
        for setting in paired:
            lines += [f"### {setting.title}", ""]
            table = setting.paired
            lines.append(markdown_body(table) if table.rows else "".join(f"{note}\n" for note in table.notes))
    lines += _kind_section(rendered, "paper", "The paper's layouts (its Tables 2, 6, 7 and 8)",
                           "The same measurements in the HoReN paper's own table shapes, its published numbers beside.")
    lines += _kind_section(rendered, "scorings", "Scoring modes side by side",
                           "The same edits under fixed-length greedy, teacher-forced and free-generation scoring, "
                           "with each editor's OP rank within each mode.")
    for title, text in sections:
        lines += [f"## {title}", "", text, ""]
    if rendered.calibration:
        lines += ["## Calibration sweeps", ""]
        for table, pngs in rendered.calibration:
            lines += [f"### {table.title}", ""]
            lines += figures(pngs, {"calibration": "heat-maps", "pareto": "Pareto front"})
            lines.append(markdown_body(table))
    return "\n".join(lines).rstrip("\n") + "\n"


def _kind_section(rendered: Rendered, kind: str, heading: str, intro: str) -> list[str]:
    """docs/results.md lines for every rendered table of `kind` under one heading (none: no lines)."""
    tables = [table for table in rendered.tables if table.kind == kind]
    if not tables:
        return []
    lines = [f"## {heading}", "", intro, ""]
    for table in tables:
        lines += [f"### {table.title}", "", markdown_body(table)]
    return lines


def write_results_doc(docs_dir, rendered: Rendered, out_dir, source, rows: pd.DataFrame,
                      sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Write ``docs_dir/results.md`` (:func:`results_doc`), creating the folder; return its path.
    An unwritable folder raises :class:`ReportError`."""
    docs_dir, out_dir = Path(docs_dir), Path(out_dir)
    path = docs_dir / RESULTS_DOC
    n_runs, partial = run_counts(rows)
    text = results_doc(rendered, out_dir, docs_dir, source, len(rows), n_runs, len(partial), sections)
    try:
        docs_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, text)
    except OSError as err:
        raise ReportError(f"cannot write {path} ({err.strerror or err}) — pass a writable folder to "
                          "--docs") from None
    return path


# ----------------------------------------------------------------------------------------- wandb

def log_to_wandb(run, results, out_dir, baselines_dir="baselines") -> dict[str, list[Path]]:
    """Render like :func:`render`, then log every table (``wandb.Table``) and figure PNG
    (``wandb.Image``) to ``run`` in one ``run.log`` call.  ``results`` is a results directory or
    a frame from :func:`~editbench.report.rows.load_rows`.  W&B only mirrors the files; they stay
    the source of truth.
    """
    import wandb  # optional sink: imported only when used

    rows = results if isinstance(results, pd.DataFrame) else load_rows(results)
    source = "a DataFrame" if isinstance(results, pd.DataFrame) else results
    rendered = render_rows(rows, Path(out_dir), load_baselines(baselines_dir), source)
    payload = {f"report/tables/{t.name}": wandb.Table(columns=t.columns, data=t.rows)
               for t in rendered.tables}
    payload.update({f"report/figures/{p.stem}": wandb.Image(str(p))
                    for p in rendered.written["figures"] if p.suffix == ".png"})
    run.log(payload)
    return rendered.written
