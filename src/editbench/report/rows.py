"""Result rows: reading ``metrics.jsonl`` files, grouping them by what was measured, and the seed
aggregate every table and figure is drawn from.

A row names its metric columns in ``metric_names`` (ordered; each is also a numeric field of the
row); rows without it have the paper's four, ``rel, gen, loc, op`` (defined in docs/protocol.md#metrics).
``mem_device`` ("cpu" or "cuda") says what the memory fields measured; ``mem_growth_gb`` is optional.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from editbench.validate import Protocol

# The paper's metrics: what a row without ``metric_names`` has, and the columns of baselines/*.csv.
PAPER_METRICS = ("rel", "gen", "loc", "op")
METRIC_NAMES = {"rel": "Rel", "gen": "Gen", "loc": "Loc", "op": "OP"}  # other names shown as-is
OVERALL = "op"  # the overall score: its own figure (op_vs_n) and the README's overview tables
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
         "editor_params", "ckpt_mb", "cache_mb")
UNKNOWN_DEVICE = "unknown"  # mem_device of rows written before the field existed
HINT = "run an experiment first (python -m editbench ...)"
# A table spans one value of each of these; runs of one method that differ in anything else
# (their hyper-parameters) get labelled rows.
LABEL_KEYS = ("tag", "method", "model", "data", "protocol", "protocol_version", "scoring", "chat_template")

# Paper order (baselines first, HoReN last); unknown methods go after the known ones.
METHOD_ORDER = ["Unedited", "FT-L", "ROME", "GRACE", "GRACE+Norm", "WISE", "REPAIR", "AlphaEdit",
                "UltraEdit", "HoReN w/o norm", "HoReN-LoRA", "HoReN"]
REFERENCE_METHODS = {"Unedited"}  # shown in tables, never bold and never in cost plots: not an editor


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
    return list(union_names(frame["metric_names"]))


def union_names(names_per_row) -> tuple[str, ...]:
    """The names of several rows' ``metric_names`` tuples, each once, in first-seen order."""
    return tuple(dict.fromkeys(name for names in names_per_row for name in names))


def display_name(metric: str) -> str:
    """How tables and figures name a metric column: the paper's four capitalised (Rel, Gen, Loc,
    OP), any other name as the rows write it."""
    return METRIC_NAMES.get(metric, metric)


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
            complete = False  # e.g. a truncated last line: the run's rows are not all here
            continue
        row.update(run_dir=str(path.parent))
        rows.append(row)
    for row in rows:
        row["complete"] = complete
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


def run_counts(rows: pd.DataFrame) -> tuple[int, list[str]]:
    """How many runs the rows come from, and the run directories without a complete summary."""
    runs = rows.drop_duplicates("run_dir")
    return len(runs), sorted(runs.loc[~runs["complete"].astype(bool), "run_dir"])


# ----------------------------------------------------------------------------------- aggregation

def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per :data:`GROUP_KEYS` group: mean and ``<col>_std`` of every numeric column.

    ``n`` is the number of seeds, ``seeds`` lists them, ``n_partial`` counts rows from runs
    without a complete summary, ``runs`` holds the (seed, run directory) of each (whose records
    give the row's intervals).  If the same seed of the same group appears twice (a re-run)
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
    out["metric_names"] = grouped["metric_names"].agg(union_names)
    out["mem_device"] = grouped["mem_device"].agg(devices)
    if "n_edits" in rows:  # the stream length asked for: a label's cells past its longest are "not run"
        out["n_edits"] = grouped["n_edits"].max()
    if "run_dir" in rows:  # where each kept row came from: its run's records/ give the row's intervals
        run = rows.assign(run=list(zip(rows["seed"], rows["run_dir"])))
        out["runs"] = run.groupby(GROUP_KEYS, sort=True)["run"].agg(lambda s: tuple(sorted(s)))
    out = out.reset_index()
    out["label"] = method_labels(out)
    return out


def devices(values) -> str:
    """The memory device(s) some rows measured on: "cpu", "cuda", "unknown", or the devices
    joined by "/" (e.g. "cpu/cuda") when several; idempotent, so it merges rows and aggregated
    rows alike."""
    return "/".join(sorted({part for value in values for part in str(value).split("/")}))


def method_labels(agg: pd.DataFrame, across: tuple[str, ...] = ()) -> pd.Series:
    """The row label of each aggregated row: the method name, extended with the hyper-parameters
    that differ between the runs of one method in one table (``HoReN [threshold=0.7]``).

    A table spans one value of each :data:`LABEL_KEYS` column except those named in ``across``
    (e.g. ``("data",)`` for a table with one column block per dataset), so the same setting gets
    the same label on every dataset such a table shows."""
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


def method_rank(method: str) -> tuple:
    """Sort key putting methods in :data:`METHOD_ORDER` (the paper's), unknown ones after, by name."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def ordered_labels(agg: pd.DataFrame) -> list[tuple[str, str]]:
    """The (method, label) pairs of aggregated rows, each once, in table order: by
    :func:`method_rank`, then label."""
    pairs = agg[["method", "label"]].drop_duplicates().itertuples(index=False)
    return sorted(((m, l) for m, l in pairs), key=lambda p: (method_rank(p[0]), p[1]))


# ----------------------------------------------------------------------------------- calibration

def setting_value(value):
    """A hyper-parameter value as a table / axis key: numbers stay numbers, anything else
    (lists such as WISE's act_margin) becomes its compact JSON text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return json.dumps(value, separators=(",", ":"))


def setting_text(value) -> str:
    """A :func:`setting_value` as shown in a cell, tick or annotation (numbers in ``%g``)."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def final_configs(calib: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Last checkpoint of each hyper-parameter setting of a sweep, and the swept hyper-parameters
    (those whose value differs between settings; most distinct values first), one column each."""
    final = calib.sort_values("N").drop_duplicates("hparams_key", keep="last").copy()
    hparams = final["hparams_key"].map(json.loads)
    keys = list(dict.fromkeys(key for hp in hparams for key in hp))
    counts = {key: hparams.map(lambda hp: json.dumps(hp.get(key), sort_keys=True)).nunique() for key in keys}
    swept = sorted((key for key in keys if counts[key] > 1), key=lambda key: -counts[key])
    for key in swept:
        final[key] = hparams.map(lambda hp: setting_value(hp.get(key)))
    return final, swept
