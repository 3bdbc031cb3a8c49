"""Published numbers (``baselines/*.csv``, described in baselines/README.md): loading them, and
matching them to measured rows so tables and figures can print them beside the measurements."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from editbench.report.rows import PAPER_METRICS

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


def published_rows(baselines, model, method, data, Ns) -> list[tuple[str, dict]]:
    """Published rows for one measured method: [(label, {(N, metric): value})], for the paper's
    four metrics at the given N.

    Tables that report identical numbers for these N (e.g. Table 9's HoReN = Table 1's) are
    merged into one row labelled ``T1/T9``; ``*`` marks a row whose N was inferred.
    """
    hit = baselines[(baselines["model"] == model) & (baselines["method"] == method)
                    & (baselines["data"] == data) & baselines["N"].isin(list(Ns))]
    merged: dict[frozenset, dict] = {}  # identical cells -> one row
    for table, rows in sorted(hit.groupby("table"), key=lambda kv: table_rank(kv[0])):
        cells = {(int(r["N"]), m): float(r[m]) for _, r in rows.iterrows() for m in PAPER_METRICS
                 if not pd.isna(r[m])}
        entry = merged.setdefault(frozenset(cells.items()),
                                  {"tables": [], "cells": cells, "inferred": False})
        entry["tables"].append(f"T{table}")
        entry["inferred"] |= bool(rows["N_inferred"].any())
    return [(f"{method} (published, {'/'.join(e['tables'])}){'*' if e['inferred'] else ''}",
             e["cells"]) for e in merged.values()]


def table_rank(table: str) -> float:
    """Sort key of a paper table number ("1" < "2" < "10"; anything not a number last)."""
    return int(table) if table.isdigit() else math.inf


def unmatched_published(agg: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Published cells (with a stated model and N) that no measured main row reproduces."""
    stated = baselines[(baselines["model"] != "") & baselines["N"].notna()]
    main = agg[agg["tag"] == "main"] if len(agg) else agg
    measured = {(r.model, r.method, r.data, int(r.N)) for r in main.itertuples()}
    keep = [(r.model, r.method, r.data, int(r.N)) not in measured for r in stated.itertuples()]
    return stated[keep]
