"""The same edits scored three ways, side by side: fixed-length greedy decoding (the paper's Mode
G), teacher forcing (Mode TF, EasyEdit's) and free generation (Mode F: generate until EOS, a
newline or the cap; exact match, and the lenient prefix match), with each editor's OP rank within
each scoring — how much the scoring mode, not the editor, decides a ranking.

Rows come from the main tables' aggregate: runs scored directly under a mode, and kept checkpoints
re-scored with `editbench rescore RUN scoring=MODE` (its rows carry the new scoring). One table per
(data, model, chat template) with rows under two scorings or more: rows = method × scoring, a
column block per N with Rel / Gen / Loc / OP (and, under free scoring, Rel / Gen by prefix match)
and the OP rank among the methods measured under that scoring at that N.
"""
from __future__ import annotations

import pandas as pd

from editbench.report.rows import REFERENCE_METHODS, ordered_labels
from editbench.report.tables import Table, file_stem, format_value

SCORING_ORDER = ("greedy", "teacher_forced", "free")
SCORING_NAMES = {"greedy": "greedy (fixed length)", "teacher_forced": "teacher-forced", "free": "free generation"}
METRICS = [("rel", "Rel"), ("gen", "Gen"), ("loc", "Loc"), ("op", "OP"), ("rel_prefix", "Rel≺"),
           ("gen_prefix", "Gen≺")]
KEYS = ["data", "model", "chat_template", "protocol_version", "max_new_tokens"]


def scoring_tables(main: pd.DataFrame) -> list[Table]:
    """One comparison per (data, model, chat template) measured under at least two scorings."""
    tables = []
    for key, group in main.groupby(KEYS, sort=True):
        if group["scoring"].nunique() >= 2:
            tables.append(scoring_table(group, *key[:3], version=key[3]))
    return tables


def _order(scoring: str) -> int:
    return SCORING_ORDER.index(scoring) if scoring in SCORING_ORDER else len(SCORING_ORDER)


def _rank(group: pd.DataFrame, scoring: str, n: int, label: str) -> str:
    """1-based OP rank of `label` among the editors (not the unedited model) under `scoring` at N."""
    at = group[(group["scoring"] == scoring) & (group["N"] == n) & ~group["method"].isin(REFERENCE_METHODS)]
    at = at.dropna(subset=["op"]) if "op" in at else at.iloc[0:0]
    if label not in set(at["label"]):
        return "—"
    order = at.sort_values("op", ascending=False, kind="stable")["label"].tolist()
    return f"{order.index(label) + 1}/{len(order)}"


def scoring_table(group: pd.DataFrame, data: str, model: str, chat_template: bool, version: int = 0) -> Table:
    Ns = sorted(int(n) for n in group["N"].unique())
    metrics = [(m, name) for m, name in METRICS if m in group and group[m].notna().any()]
    header = [("", ["Method", "Scoring"])] + [(f"N={n}", [name for _, name in metrics] + ["OP rank"]) for n in Ns]
    rows = []
    for method, label in ordered_labels(group):
        for (scoring, protocol), at in sorted(group[group["label"] == label].groupby(["scoring", "protocol"]),
                                              key=lambda kv: (_order(kv[0][0]), kv[0][1])):
            at = at.set_index("N")
            several = group[group["scoring"] == scoring]["protocol"].nunique() > 1
            row = [label, SCORING_NAMES.get(scoring, scoring) + (f" ({protocol})" if several else "")]
            for n in Ns:
                for m, _ in metrics:
                    value = at.at[n, m] if n in at.index and m in at else None
                    row.append("—" if value is None or pd.isna(value) else format_value(float(value)))
                row.append(_rank(group, scoring, n, label) if method not in REFERENCE_METHODS else "")
            rows.append(row)
    chat = " (chat template)" if chat_template else ""
    notes = ["The same edit stream scored under each mode (docs/protocol.md#scoring): greedy decodes exactly the "
             "target's length; teacher-forced compares the argmax at each target position given the true prefix; "
             "free generation decodes until EOS, a newline or the cap and scores exact match of the normalised "
             "answer (≺: the target is a prefix of the normalised output). OP rank: among the editors measured "
             "under that scoring at that N (1 = best); — = not measured. Means over seeds; their spread and 95 % "
             "intervals are in each scoring's own table."]
    return Table(file_stem("scorings", data, model, f"v{version}", *(["chat"] if chat_template else [])),
                 f"Scoring modes side by side — {data} · {model}{chat}", header, rows, set(), notes, kind="scorings")
