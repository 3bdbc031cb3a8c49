"""Results files -> tables (Markdown, LaTeX) and figures.

    python -m editbench.report [--results results] [--out reports] [--baselines baselines]
                               [--readme README.md] [--docs docs]

Every ``metrics.jsonl`` under the results directory is read (one JSON row per checkpoint of one
run).  Rows are grouped by what was measured -- method, model, data, protocol (name and version),
scoring, N and the editor's hyper-parameters without ``seed`` -- and the seeds of a group become
mean ± std (sample std) with n.  Rows whose protocol version or scoring differ are never merged.
A table shows the union of its rows' ``metric_names`` in first-seen order, so a new metric needs
no change here (the metrics themselves: docs/protocol.md#metrics).

Written under ``--out``:
  tables/<data>__<model>__<protocol>-v<version>__<scoring>.{md,tex}       each metric per N (±95 % CI)
  tables/<same stem>__ci.{md,tex}                                        the intervals' bounds
  tables/paired__<same stem>.{md,tex}                                    paired comparisons
  tables/<same stem>__cost.{md,tex}                                      edit time, memory, params
  tables/calibration__<stem>__<method>.{md,tex}                          one row per sweep setting
  tables/paper_table{6,7,8}__<model>__....{md,tex}                        the paper's layouts (paper.py)
  figures/op_vs_n__<stem>.{png,pdf}, metrics_vs_n__..., cost_vs_n__...   N-scaling plots
  figures/calibration__<stem>__<method>.{png,pdf}, pareto__...            sweeps (tag calibration)
  index.md                                                                what was written + gaps

With ``--readme PATH`` the lines between ``<!-- table:begin -->`` and ``<!-- table:end -->`` in
PATH are replaced by one compact table per main setting (OP per editor and N), so the README
cannot drift from results/.  With ``--docs DIR``, ``DIR/results.md`` gets every table: each
metric per N, costs, the paper's layouts and the calibration sweeps.

Every metric cell carries a 95 % bootstrap interval over edit cases computed from the run's
``records/`` (or says "no CI" when the run kept none), and the declared pairs of methods are
compared case by case (paired bootstrap, sign test): :mod:`editbench.report.intervals`,
:mod:`editbench.report.comparisons`.

Published numbers (``baselines/*.csv``) appear as extra rows, e.g. ``HoReN (published, T1)*``,
right under the measured method wherever the paper has the same (model, method, data, N).
The results files are the source of truth; :func:`log_to_wandb` only mirrors the same output.

Modules, each importing only the ones above it:
  rows       reading metrics.jsonl rows, grouping, the seed aggregate, labels and method order
  baselines  published numbers: loading, matching them to measured rows
  intervals  per-case scores from records/, bootstrap intervals, paired bootstrap and sign test
  tables     the Table type, cell formatting, generic layouts, Markdown and LaTeX
  paper      the HoReN paper's Table 6 / 7 / 8 layouts
  figures    matplotlib figures
  comparisons  the declared paired comparisons, matching their runs, their table
  writer     reports/ (tables, figures, index.md), the README block, docs/results.md, W&B
  bench      the cost benchmark's table and figure (``make bench`` -> results/bench/cost.json)
  capacity   the routing capacity study's figures (scripts/routing_capacity.py -> results/capacity/)
  projection the 50K GPU projection's README block (scripts/project_50k.py -> results/projection/)
  stress     the 50,000-edit rehearsal's growth checks, table and figure (benchmarks/stress.py -> results/stress/)
  cli        the command line (``__main__`` runs it)
"""

from editbench.report.baselines import BASELINE_TEXT, load_baselines, published_rows, unmatched_published
from editbench.report.cli import main
from editbench.report.comparisons import COMPARISONS, Comparison, paired_results, paired_table
from editbench.report.figures import (FAMILIES, METHOD_COLORS, method_color, method_family, pareto_front,
                                      plot_calibration, plot_cost_vs_n, plot_metrics_vs_n, plot_op_vs_n,
                                      plot_pareto, series)
from editbench.report.intervals import (CONFIDENCE, RESAMPLES, Bootstrap, CaseScores, Interval, Paired, RecordStore,
                                        SignTest, add_intervals, bootstrap, case_scores, paired_bootstrap, sign_test)
from editbench.report.paper import paper_tables
from editbench.report.rows import (GROUP_KEYS, METHOD_ORDER, OVERALL, PAPER_METRICS, REFERENCE_METHODS, TABLE_KEYS,
                                   NoResults, ReportError, ResultsWarning, aggregate, display_name, load_rows,
                                   metric_names)
from editbench.report.tables import (DIGITS, Table, calibration_table, cost_table, format_measured, format_published,
                                     format_value, interval_table, metric_table, overview_table, to_latex, to_markdown)
from editbench.report.writer import (MAX_COLUMNS, README_BEGIN, README_END, Rendered, Setting, check_readme,
                                     log_to_wandb, readme_block, render, render_rows, write_readme,
                                     write_results_doc)

__all__ = [
    "BASELINE_TEXT", "Bootstrap", "COMPARISONS", "CONFIDENCE", "CaseScores", "Comparison", "DIGITS", "FAMILIES",
    "GROUP_KEYS", "Interval", "MAX_COLUMNS", "METHOD_COLORS", "METHOD_ORDER", "NoResults", "OVERALL",
    "PAPER_METRICS", "Paired", "README_BEGIN", "README_END", "REFERENCE_METHODS", "RESAMPLES", "RecordStore",
    "Rendered", "ReportError", "ResultsWarning", "Setting", "SignTest", "TABLE_KEYS", "Table", "add_intervals",
    "aggregate", "bootstrap", "calibration_table", "case_scores", "check_readme", "cost_table", "display_name",
    "format_measured", "format_published", "format_value", "interval_table", "load_baselines", "load_rows",
    "log_to_wandb", "main", "method_color", "method_family", "metric_names", "metric_table", "overview_table",
    "paired_bootstrap", "paired_results", "paired_table", "paper_tables", "pareto_front", "plot_calibration",
    "plot_cost_vs_n", "plot_metrics_vs_n", "plot_op_vs_n", "plot_pareto", "published_rows", "readme_block",
    "render", "render_rows", "series", "sign_test", "to_latex", "to_markdown", "unmatched_published",
    "write_readme", "write_results_doc",
]
