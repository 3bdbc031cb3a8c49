"""Paired comparisons: which methods are compared (one declared list, :data:`COMPARISONS`), how
their runs are matched, and the table reporting the differences.

Two aggregated rows are compared when they are in the same setting (the report's
:data:`~editbench.report.rows.TABLE_KEYS`: dataset, model, protocol, scoring, ...) at the same N,
match the two sides of a declared comparison (method label and config values), and their runs of
one seed edited the same stream (``data_info``: ``order_seed`` and ``skip``).  The statistics --
paired bootstrap of each difference, exact sign test -- are :mod:`editbench.report.intervals`'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from editbench.report.intervals import (CONFIDENCE, RESAMPLES, SEED, Paired, RecordStore, paired_bootstrap)
from editbench.report.rows import display_name, ordered_labels
from editbench.report.tables import DIGITS, Table

STREAM_KEYS = ("order_seed", "skip")  # data_info fields that fix which cases a run edits, in which order


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the rows of ``method`` whose hyper-parameters have the given
    ``config`` values (every label of the method in a setting when there are several)."""

    method: str
    config: tuple[tuple[str, object], ...] = ()

    def matches(self, row) -> bool:
        hparams = json.loads(row["hparams_key"])
        return row["method"] == self.method and all(hparams.get(key) == value for key, value in self.config)


def side(method: str, **config) -> Side:
    return Side(method, tuple(sorted(config.items())))


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    question: str


HEADLINE = "HoReN"
# The editors HoReN is compared with as baselines (the paper's tables; the unedited model is a reference).
BASELINES = ("FT-L", "ROME", "GRACE", "WISE", "REPAIR", "AlphaEdit", "UltraEdit", "UnKE")
#: every paired comparison the report makes, in the order it prints them
COMPARISONS: tuple[Comparison, ...] = (
    Comparison(side(HEADLINE), side("GRACE+Norm"), "Hopfield retrieval vs GRACE's nearest key, both normalised"),
    *(Comparison(side(HEADLINE), side(method), "the method vs a baseline") for method in BASELINES),
    Comparison(side(HEADLINE, value_adaptor="vector"), side("HoReN-LoRA", value_adaptor="lora"),
               "vector values vs LoRA values"),
    Comparison(side(HEADLINE, normalize=True), side("HoReN w/o norm", normalize=False),
               "with vs without normalisation"),
)


def stream_keys(rows: pd.DataFrame) -> dict[str, str | None]:
    """run directory -> which stream it edited (its ``data_info`` stream fields as JSON; None
    when a row does not say)."""
    keys: dict[str, str | None] = {}
    if "data_info" not in rows:
        return {str(run): None for run in rows["run_dir"].unique()}
    for run, info in zip(rows["run_dir"], rows["data_info"]):
        key = json.dumps({k: info.get(k) for k in STREAM_KEYS}, sort_keys=True) if isinstance(info, dict) else None
        keys[str(run)] = key if keys.get(str(run), key) == key else None  # disagreeing rows: unknown
    return keys


@dataclass
class PairResult:
    """One compared pair of labels in one setting: the paired result per N, or why it is missing."""

    comparison: Comparison
    label_a: str
    label_b: str
    names: list[str]                                         # compared metrics, in the rows' order
    at: dict[int, Paired] = field(default_factory=dict)     # N -> result
    missing: dict[int, str] = field(default_factory=dict)   # N -> why not computed


def paired_results(group: pd.DataFrame, store: RecordStore, streams: dict[str, str | None],
                   resamples: int = RESAMPLES, seed: int = SEED) -> list[PairResult]:
    """Every declared comparison the aggregated rows of one setting (with ``runs``) allow, at
    each N both labels have, in :data:`COMPARISONS` order (labels in table order)."""
    results = []
    labels = ordered_labels(group)
    for comparison in COMPARISONS:
        sides = [[label for _, label in labels if _label_matches(group, label, side_)]
                 for side_ in (comparison.a, comparison.b)]
        for label_a in sides[0]:
            for label_b in sides[1]:
                if label_a == label_b:
                    continue
                results.append(_pair(comparison, group, label_a, label_b, store, streams, resamples, seed))
    return results


def _label_matches(group: pd.DataFrame, label: str, s: Side) -> bool:
    rows = group[group["label"] == label]
    return bool(len(rows)) and all(s.matches(row) for _, row in rows.iterrows())


def _pair(comparison, group, label_a, label_b, store, streams, resamples, seed) -> PairResult:
    a, b = (group[group["label"] == label].set_index("N") for label in (label_a, label_b))
    names = [n for n in a["metric_names"].iloc[0] if n in b["metric_names"].iloc[0]]
    result = PairResult(comparison, label_a, label_b, names)
    for n in sorted(set(a.index) & set(b.index)):
        runs_a, runs_b = dict(a.at[n, "runs"]), dict(b.at[n, "runs"])
        seeds = sorted(set(runs_a) & set(runs_b))
        if not seeds:
            result.missing[n] = "no seed in common"
            continue
        if any(streams.get(runs_a[s]) is None or streams.get(runs_a[s]) != streams.get(runs_b[s]) for s in seeds):
            result.missing[n] = "different (or unknown) edit streams"
            continue
        scores = [(store.get(runs_a[s], n), store.get(runs_b[s], n)) for s in seeds]
        lacking = sorted({label for pair in scores for label, sc in zip((label_a, label_b), pair) if sc is None})
        if lacking:
            result.missing[n] = f"no records/ for {' and '.join(lacking)}"
            continue
        paired = paired_bootstrap(scores, names, resamples, seed)
        if not paired.n_cases:
            result.missing[n] = "no case in common"
            continue
        result.at[n] = paired
    return result


# ------------------------------------------------------------------------------------ the table

def _p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


SIGNIFICANT = "(sig.)"  # ends a difference cell that is significant at CONFIDENCE


def difference_cell(paired: Paired, name: str, digits: int = DIGITS) -> tuple[str, bool]:
    """``+d [low, high] p=…`` (sign test p where the metric has per-case values) and whether the
    difference is significant (:meth:`~editbench.report.intervals.Paired.significant`), then
    marked :data:`SIGNIFICANT`."""
    interval = paired.difference.interval(name)
    point = paired.difference.point.get(name)
    if interval is None or point is None or pd.isna(point):
        return "—", False
    text = f"{point:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"
    if name in paired.sign:
        text += f" {_p_text(paired.sign[name].p)}"
    significant = bool(paired.significant(name))
    return text + (f" {SIGNIFICANT}" if significant else ""), significant


def paired_table(results: list[PairResult], name: str, title: str) -> Table | None:
    """Rows: per compared pair, its case counts, then one row per metric; columns: N.  Bold
    (and :data:`SIGNIFICANT`): significant at 95 %.  Pairs with no N computed are listed in the notes."""
    computed = [r for r in results if r.at]
    if not computed and not results:
        return None
    Ns = sorted({n for r in computed for n in r.at})
    header = [("", ["Comparison (A vs B)", "Metric", *(f"N={n}" for n in Ns)])]
    rows, bold = [], set()
    for r in computed:
        rows.append([f"{r.label_a} vs {r.label_b}", "cases",
                     *(str(r.at[n].n_cases) if n in r.at else _missing(r, n) for n in Ns)])
        for metric in r.names:
            row = ["", f"Δ {display_name(metric)}"]
            for j, n in enumerate(Ns):
                text, significant = difference_cell(r.at[n], metric) if n in r.at else ("—", False)
                row.append(text)
                if significant:
                    bold.add((len(rows), 2 + j))
            rows.append(row)
    level = f"{CONFIDENCE:.0%}"
    notes = [f"Δ = A minus B on the edit cases both runs scored (same data, model, protocol, stream and N): "
             f"the difference, its {level} paired-bootstrap interval over cases ({RESAMPLES:,} seeded resamples, "
             "the same cases drawn for A and B), and p of the exact two-sided sign test on the per-case "
             "differences (ties dropped; OP has no per-case value, so no sign test). Bold and "
             f"{SIGNIFICANT} = significant at {level}: the interval excludes 0 and, where there is a sign "
             f"test, its p < {1 - CONFIDENCE:.2f} too. Not corrected for the number of comparisons."]
    skipped = [r for r in results if not r.at]
    if skipped:
        notes.append("Not computed: " + "; ".join(f"{r.label_a} vs {r.label_b} ({_reasons(r)})" for r in skipped) + ".")
    if not computed:
        return Table(name, title, [("", ["Comparison (A vs B)", "Metric"])], [], set(), notes, kind="paired")
    return Table(name, title, header, rows, bold, notes, kind="paired")


def _missing(result: PairResult, n: int) -> str:
    return "—" if n not in result.missing else f"— ({result.missing[n]})"


def _reasons(result: PairResult) -> str:
    return ", ".join(dict.fromkeys(result.missing.values())) or "no N in common"
