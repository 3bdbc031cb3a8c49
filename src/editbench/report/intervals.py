"""Uncertainty from the per-probe records: 95 % bootstrap intervals over edit cases, and paired
comparisons of two runs on the same cases (bootstrap of the difference, exact sign test).

Every number here is computed from a run's ``records/step_NNNNNN.jsonl.gz`` (one line per scored
probe: ``case, set, i, score``).  A case's value for a metric is the mean over its probes in that
probe set (free-text sets: one value per ``<set>_<metric>``); a metric is the mean over the cases
that have the set -- docs/protocol.md#metrics, the runner's own definition.  The bootstrap draws
whole cases with replacement (every probe set of a drawn case comes with it), recomputes each
metric as that mean over the drawn cases, and recomputes the overall score (OP) from the resampled
metric means with :mod:`editbench.metrics`' own :class:`~editbench.metrics.Overall`, never from
per-case values.  The interval is the percentile interval of the resampled values.

* Several seeds of one setting: each seed's run is resampled on its own (stratified), and each
  resample's values are averaged over the seeds, as the tables average the seeds' rows.
* Draws are seeded from (:data:`SEED`, run index, number of cases), so a cell's interval depends
  only on its own records, never on what else the report renders.
* A resample without any case of a set (a set only some cases have, e.g. WikiBigEdit's ``mhop``)
  has no value for it and is left out of that set's interval.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from editbench import runrecords
from editbench.metrics import OP, Overall
from editbench.report.rows import ResultsWarning

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
#: overall scores by the name a row lists in ``metric_names`` -> the definition that computes them
OVERALLS: Mapping[str, Overall] = MappingProxyType({OP.name: OP})
# Case draws per chunk of resamples (bounds memory and stays in cache at 10^4+ cases).
CHUNK_DRAWS = 2_500_000
REPRODUCE_TOLERANCE = 1e-9  # records must give the row's own metric values to this precision


# --------------------------------------------------------------------------------- case scores

@dataclass(frozen=True)
class CaseScores:
    """The per-case values of one checkpoint of one run: ``values[c, j]`` is case ``cases[c]``'s
    mean over its probes of metric ``names[j]``, NaN when the case has no probe in that set."""

    cases: tuple[str, ...]  # sorted case ids
    names: tuple[str, ...]
    values: np.ndarray      # (len(cases), len(names)), float

    def restricted(self, cases: Sequence[str]) -> "CaseScores":
        """The same scores for ``cases`` only (each must be one of :attr:`cases`), in that order."""
        position = {case: i for i, case in enumerate(self.cases)}
        return CaseScores(tuple(cases), self.names, self.values[[position[c] for c in cases]])

    def column(self, name: str) -> np.ndarray:
        """The per-case values of one metric (NaN where a case has none); NaN everywhere if the
        records have no such set."""
        if name not in self.names:
            return np.full(len(self.cases), np.nan)
        return self.values[:, self.names.index(name)]


def case_scores(records: Iterable[Mapping]) -> CaseScores:
    """Per-case means of scored probes (records as the runner writes them).  A numeric score
    counts for the metric named by its set; a dict score (free-text sets) for ``<set>_<key>``."""
    sums: dict[tuple[str, str], list[float]] = {}
    for record in records:
        score = record["score"]
        parts = score.items() if isinstance(score, Mapping) else [(None, score)]
        for key, value in parts:
            name = record["set"] if key is None else f"{record['set']}_{key}"
            total = sums.setdefault((record["case"], name), [0.0, 0])
            total[0] += float(value)
            total[1] += 1
    cases = tuple(sorted({case for case, _ in sums}))
    names = tuple(dict.fromkeys(name for _, name in sums))
    values = np.full((len(cases), len(names)), np.nan)
    row = {case: i for i, case in enumerate(cases)}
    column = {name: j for j, name in enumerate(names)}
    for (case, name), (total, count) in sums.items():
        values[row[case], column[name]] = total / count
    return CaseScores(cases, names, values)


class RecordStore:
    """Per-case scores read from runs' records, each file read once (owned by one report render)."""

    def __init__(self):
        self._scores: dict[Path, CaseScores | None] = {}

    def get(self, run_dir, N: int) -> CaseScores | None:
        """The case scores of checkpoint N of the run, None when it kept no (readable) records."""
        path = runrecords.path(run_dir, N)
        if path not in self._scores:
            self._scores[path] = self._read(path)
        return self._scores[path]

    @staticmethod
    def _read(path: Path) -> CaseScores | None:
        if not path.is_file():
            return None
        try:
            scores = case_scores(runrecords.read(path))
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"{path}: unreadable records, no interval from them ({err})", ResultsWarning,
                          stacklevel=3)
            return None
        return scores if scores.cases else None


# ----------------------------------------------------------------------------------- bootstrap

def resample_counts(n_cases: int, resamples: int, rng: np.random.Generator):
    """The bootstrap draws, a chunk of resamples at a time: (resamples in the chunk, n_cases)
    matrices whose entry [r, c] is how often resample r drew case c (n_cases draws, uniform,
    with replacement).  The chunk size depends on n_cases only, so the same seed and number of
    cases always give the same draws."""
    if n_cases < 1:
        raise ValueError("no case to resample")
    step = max(1, CHUNK_DRAWS // n_cases)
    for start in range(0, resamples, step):
        size = min(step, resamples - start)
        drawn = rng.integers(0, n_cases, size=(size, n_cases))
        flat = (drawn + n_cases * np.arange(size)[:, None]).ravel()
        yield np.bincount(flat, minlength=size * n_cases).reshape(size, n_cases).astype(np.float64)


def resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, metrics): per resample, each metric's mean over the drawn cases that have it
    (NaN when none has).  ``values``: (cases, metrics) per-case values, NaN = no probe in that set.
    A drawn case brings every one of its metrics (its row), so a case's probes stay together."""
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    out = np.empty((resamples, values.shape[1]))
    start = 0
    for counts in resample_counts(len(values), resamples, rng):
        sums, n = counts @ filled, counts @ present
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + len(counts)] = np.where(n > 0, sums / n, np.nan)
        start += len(counts)
    return out


def overall_values(overall: Overall, means: Mapping[str, np.ndarray]) -> np.ndarray:
    """``overall`` applied to each resample's metric means (``means``: metric -> one value per
    resample): the same function the runner applies to the full sample, one resample at a time."""
    parts = np.column_stack([np.asarray(means[p], dtype=float) for p in overall.parts])
    undefined = np.isnan(parts).any(axis=1)
    return np.array([math.nan if skip else overall(dict(zip(overall.parts, point)))
                     for point, skip in zip(parts.tolist(), undefined.tolist())], dtype=float)


def _with_overalls(values: dict[str, np.ndarray | float], names: Sequence[str]) -> None:
    """Add each overall score of ``names`` whose parts are all in ``values`` (arrays or scalars)."""
    for name in names:
        overall = OVERALLS.get(name)
        if overall is None or not all(p in values for p in overall.parts):
            continue
        if isinstance(values[overall.parts[0]], np.ndarray):
            values[name] = overall_values(overall, {p: values[p] for p in overall.parts})
        else:
            point = [values[p] for p in overall.parts]
            values[name] = math.nan if any(map(math.isnan, point)) else overall(dict(zip(overall.parts, point)))


def _measured(names: Sequence[str], scores: Sequence[CaseScores]) -> list[str]:
    """The names of ``names`` that every run's records have (overall scores are computed)."""
    return [n for n in names if n not in OVERALLS and all(n in s.names for s in scores)]


@dataclass(frozen=True)
class Interval:
    """A confidence interval [low, high]."""

    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float = 0.0) -> bool:
        return value < self.low or value > self.high


@dataclass
class Bootstrap:
    """A bootstrap distribution: the full-sample value (``point``) and one value per resample
    (``draws``) of each metric."""

    point: dict[str, float]
    draws: dict[str, np.ndarray]
    n_cases: int

    def interval(self, name: str, confidence: float = CONFIDENCE) -> Interval | None:
        """The percentile interval of ``name`` (None when it has no resampled value)."""
        draws = self.draws.get(name)
        if draws is None or np.isnan(draws).all():
            return None
        alpha = (1 - confidence) / 2
        low, high = np.nanquantile(draws, [alpha, 1 - alpha])
        return Interval(float(low), float(high))


def _rng(seed: int, index: int, n_cases: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, n_cases])


def _values(run: CaseScores, rng: np.random.Generator, resamples: int, measured: Sequence[str],
            names: Sequence[str], paired: CaseScores | None = None):
    """One run's full-sample value and per-resample values of the ``measured`` metrics, plus the
    overall scores of ``names`` computed from those: [(point, draws)].  With ``paired`` (the same
    cases, in the same order), the second run's values from the very same draws follow."""
    runs = [run] if paired is None else [run, paired]
    columns = [run_.column(n) for run_ in runs for n in measured]
    values = np.column_stack(columns) if columns else np.empty((len(run.cases), 0))
    means = resampled_means(values, resamples, rng)
    out = []
    for k in range(len(runs)):
        block = slice(k * len(measured), (k + 1) * len(measured))
        point = {n: float(np.nanmean(column)) if (~np.isnan(column)).any() else math.nan
                 for n, column in zip(measured, values[:, block].T)}
        drawn = dict(zip(measured, means[:, block].T))
        _with_overalls(point, names)
        _with_overalls(drawn, names)
        out.append((point, drawn))
    return out


def _averaged(points: list[dict], draws: list[dict], names: Sequence[str], n_cases: int) -> Bootstrap:
    """Several runs' (seeds') values -> one :class:`Bootstrap`: full-sample values and each
    resample's values averaged over the runs."""
    keys = [n for n in names if points and n in points[0]]
    return Bootstrap({n: float(np.mean([p[n] for p in points])) for n in keys},
                     {n: np.mean([d[n] for d in draws], axis=0) for n in keys}, n_cases)


def bootstrap(scores: Sequence[CaseScores], names: Sequence[str], resamples: int = RESAMPLES,
              seed: int = SEED) -> Bootstrap:
    """The bootstrap over cases of ``names`` (metrics and overall scores) for one cell: one
    :class:`CaseScores` per seed's run, each resampled on its own, values averaged over runs."""
    measured = _measured(names, scores)
    points, draws = [], []
    for index, run in enumerate(scores):
        [(point, drawn)] = _values(run, _rng(seed, index, len(run.cases)), resamples, measured, names)
        points.append(point)
        draws.append(drawn)
    return _averaged(points, draws, names, sum(len(s.cases) for s in scores))


# -------------------------------------------------------------------------- paired comparisons

@dataclass(frozen=True)
class SignTest:
    """Exact two-sided sign test on per-case differences (ties dropped)."""

    positive: int
    negative: int
    ties: int
    p: float


def sign_test(differences: Iterable[float]) -> SignTest:
    """p = P(a Binomial(n, 1/2) count at least as far from n/2 as the observed one), n = the
    non-zero differences; 1 when every difference is zero."""
    diffs = [float(d) for d in differences if not math.isnan(d)]
    positive = sum(1 for d in diffs if d > 0)
    negative = sum(1 for d in diffs if d < 0)
    n = positive + negative
    tail, term = 0, 1  # sum of C(n, i) for i <= min(positive, negative), exact integers
    for i in range(min(positive, negative) + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    p = min(1.0, 2 * tail / 2 ** n) if n else 1.0
    return SignTest(positive, negative, len(diffs) - n, p)


@dataclass
class Paired:
    """Method A minus method B on their common cases: the bootstrap of the difference of each
    metric and overall score, and the sign test of each metric's per-case differences (overall
    scores have no per-case value, hence no sign test)."""

    difference: Bootstrap
    sign: dict[str, SignTest]
    n_cases: int  # common cases (summed over seeds)

    def significant(self, name: str, confidence: float = CONFIDENCE) -> bool | None:
        """Whether the difference in ``name`` is significant at ``confidence``: its paired-bootstrap
        interval excludes 0 and, for a metric with per-case values, the sign test agrees (p below
        1 - confidence).  Requiring both keeps the percentile interval, too narrow on a handful of
        cases (N = 10), from calling a difference that the exact test cannot see.  None: no interval."""
        interval = self.difference.interval(name, confidence)
        if interval is None:
            return None
        sign = self.sign.get(name)
        return interval.excludes(0.0) and (sign is None or sign.p < 1 - confidence)


def paired_bootstrap(pairs: Sequence[tuple[CaseScores, CaseScores]], names: Sequence[str],
                     resamples: int = RESAMPLES, seed: int = SEED) -> Paired:
    """A minus B over the cases both runs of each pair scored (one pair per seed both have).

    The same drawn cases go into A and into B, so each resample's difference is paired case by
    case; pairs (seeds) are resampled on their own and differences averaged over them.  The sign
    test takes, per case scored in every pair, the mean over pairs of A's minus B's value."""
    common_pairs = []
    for a, b in pairs:
        common = sorted(set(a.cases) & set(b.cases))
        if common:
            common_pairs.append((a.restricted(common), b.restricted(common)))
    measured = _measured(names, [s for pair in common_pairs for s in pair])
    points, draws = [], []
    for index, (a, b) in enumerate(common_pairs):
        (point_a, draws_a), (point_b, draws_b) = _values(a, _rng(seed, index, len(a.cases)), resamples, measured,
                                                         names, paired=b)
        points.append({n: point_a[n] - point_b[n] for n in point_a})
        draws.append({n: draws_a[n] - draws_b[n] for n in draws_a})
    n_cases = sum(len(a.cases) for a, _ in common_pairs)
    difference = _averaged(points, draws, names, n_cases)
    everywhere = sorted(set.intersection(*(set(a.cases) for a, _ in common_pairs))) if common_pairs else []
    sign = {}
    for name in measured:
        per_pair = [a.restricted(everywhere).column(name) - b.restricted(everywhere).column(name)
                    for a, b in common_pairs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a case without the set in a pair: NaN
            sign[name] = sign_test(np.mean(per_pair, axis=0))
    return Paired(difference, sign, n_cases)


# ------------------------------------------------------------------------- aggregated table rows

def ci_columns(metric: str) -> tuple[str, str]:
    """The columns :func:`add_intervals` gives an aggregated row for ``metric``'s interval."""
    return f"{metric}_ci_low", f"{metric}_ci_high"


def cell_interval(row: Mapping, metric: str) -> Interval | None:
    """The interval of ``metric`` in an aggregated row (None: no CI -- no records, or never added)."""
    low, high = (row.get(column) for column in ci_columns(metric))
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return None
    return Interval(float(low), float(high))


def group_scores(runs: Sequence[tuple[int, str]], N: int, store: RecordStore) -> list[CaseScores] | None:
    """The case scores of every seed's run of one aggregated row at N (its ``runs``: (seed,
    run_dir) pairs), None when one of them kept no records there."""
    scores = [store.get(run_dir, N) for _, run_dir in runs]
    return None if not scores or any(s is None for s in scores) else scores


def add_intervals(agg: pd.DataFrame, store: RecordStore, resamples: int = RESAMPLES,
                  seed: int = SEED) -> pd.DataFrame:
    """``agg`` (:func:`~editbench.report.rows.aggregate`'s rows) with each metric's interval in
    :func:`ci_columns` and ``n_cases`` (cases bootstrapped, over all seeds).  A row gets no
    interval (NaN) when one of its runs kept no records at its N, or when the records do not
    reproduce the row's metric values (a :class:`ResultsWarning` says so)."""
    out = agg.copy()
    names = list(dict.fromkeys(n for names in out["metric_names"] for n in names)) if len(out) else []
    columns = {column: np.full(len(out), np.nan) for n in names for column in ci_columns(n)}
    n_cases = np.full(len(out), np.nan)
    for position, (_, row) in enumerate(out.iterrows()):
        runs = row.get("runs")
        scores = group_scores(runs, int(row["N"]), store) if isinstance(runs, tuple) else None
        if scores is None:
            continue
        result = bootstrap(scores, row["metric_names"], resamples, seed)
        for name in row["metric_names"]:
            interval = result.interval(name)
            if interval is None or pd.isna(row[name]):
                continue
            if abs(result.point[name] - row[name]) > REPRODUCE_TOLERANCE:
                warnings.warn(f"{runs[0][1]}: records at N={int(row['N'])} give {name} = "
                              f"{result.point[name]:.6f}, metrics.jsonl {row[name]:.6f}; no interval",
                              ResultsWarning, stacklevel=2)
                continue
            low, high = ci_columns(name)
            columns[low][position], columns[high][position] = interval.low, interval.high
        n_cases[position] = result.n_cases
    for column, values in columns.items():
        out[column] = values
    out["n_cases"] = n_cases
    return out
