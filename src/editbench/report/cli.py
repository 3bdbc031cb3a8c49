"""``python -m editbench.report``: results files -> reports/, the README block, docs/results.md."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from editbench.report.baselines import load_baselines
from editbench.report.bench import bench_markdown, load_bench, plot_bench
from editbench.report.capacity import capacity_figures
from editbench.report.projection import BEGIN as PROJECTION_BEGIN
from editbench.report.projection import END as PROJECTION_END
from editbench.report.projection import load_projection, projection_markdown
from editbench.report.stress import load_stress, plot_stress, stress_markdown
from editbench.report.rows import ReportError, ResultsWarning, load_rows, run_counts
from editbench.report.writer import (README_BEGIN, README_END, RESULTS_DOC, check_readme, render_rows, write_marked,
                                     save_figure, write_readme, write_results_doc)

DESCRIPTION = "Results files -> tables (Markdown, LaTeX) and figures."


def main(argv=None) -> int:
    """The command line; returns the exit status (2 with one line on stderr when it cannot go on)."""
    parser = argparse.ArgumentParser(prog="python -m editbench.report", description=DESCRIPTION)
    parser.add_argument("--results", default="results", help="directory searched for metrics.jsonl")
    parser.add_argument("--out", default="reports", help="where tables/, figures/, index.md go")
    parser.add_argument("--baselines", default="baselines", help="published numbers (CSV or dir)")
    parser.add_argument("--readme", help=f"also replace the lines between {README_BEGIN} and "
                                         f"{README_END} in this file with OP per editor and N")
    parser.add_argument("--docs", help=f"also write every table to DOCS/{RESULTS_DOC} (the folder is "
                                       "created if absent)")
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
        rendered = render_rows(rows, out, load_baselines(args.baselines), args.results)
        capacity_figures(args.results, out / "figures")  # the routing capacity study, where it has run
        bench = load_bench(args.results)
        bench_text = None
        if bench is not None:  # `make bench` has run: its table and figure
            fig = plot_bench(bench)
            pngs = [p for p in save_figure(fig, out / "figures", "bench_cost") if p.suffix == ".png"] if fig else []
            bench_text = bench_markdown(bench) + "".join(
                f"\nFigure: [{p.name}]({os.path.relpath(p, args.docs or out)})\n" for p in pngs)
        sections = [("Cost benchmark", bench_text)] if bench_text else []
        stress = load_stress(args.results)
        if stress is not None:  # `make stress` has run: its table and figure
            fig = plot_stress(stress)
            pngs = [p for p in save_figure(fig, out / "figures", "stress") if p.suffix == ".png"] if fig else []
            sections.append(("Stress rehearsal (50,000 edits)", stress_markdown(stress) + "".join(
                f"\nFigure: [{p.name}]({os.path.relpath(p, args.docs or out)})\n" for p in pngs)))
        doc = write_results_doc(args.docs, rendered, out, args.results, rows, sections) if args.docs else None
        if args.readme:
            write_readme(args.readme, rendered.settings, doc or out / "index.md")
            projection = load_projection(args.results)
            if projection is not None:  # scripts/project_50k.py has run
                write_marked(args.readme, PROJECTION_BEGIN, PROJECTION_END, projection_markdown(projection))
    except ReportError as err:
        print(f"editbench.report: {err}", file=sys.stderr)
        return 2
    n_runs, partial = run_counts(rows)
    if partial:
        print(f"editbench.report: note: {len(partial)} of {n_runs} runs are partial "
              "(no complete summary.json); their rows are included")
    n_figures = sum(p.suffix == ".png" for p in rendered.written["figures"])
    print(f"editbench.report: {len(rows)} rows from {n_runs} runs -> {len(rendered.tables)} tables, "
          f"{n_figures} figures under {out}/ (see {out / 'index.md'})"
          + (f"; all tables in {doc}" if doc else "")
          + (f"; OP tables written into {args.readme}" if args.readme else ""))
    return 0
