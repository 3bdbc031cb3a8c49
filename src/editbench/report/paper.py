"""The HoReN paper's own table layouts (its Tables 2, 6, 7 and 8), built from aggregated results.

:mod:`editbench.report.tables` builds one generic table per (data, model, protocol, scoring): methods
x N x metrics.  The paper prints four tables in other shapes; this module builds those shapes from
the same aggregate (:func:`editbench.report.rows.aggregate`, main rows only) and the same published
numbers (:func:`editbench.report.baselines.load_baselines`):

* **Table 6** (WikiBigEdit): one row per number of edits N; a column block per method with
  Rel / Gen / Loc and the portability accuracies (personas, multi-hop) that never enter OP.
* **Table 7** (UnKE): one row per split x metric; a column block per N with one column per method,
  then the paper's three UnKE / HoReN column pairs (their N was lost in extraction).  The paper's
  "BLEU" is its unigram variant (``bleu1_horen``), its ROUGE the ``rouge`` 1.0.1 package's recall
  (``rouge*_r_horen``) and its "BERTScore" the cosine of mean-pooled MiniLM embeddings
  (``minilm_cosine``); sacreBLEU, rouge-score's ROUGE and bert-score's F1 are shown on their own rows.
* **Table 8**: Rel / Gen on WikiBigEdit and ZsRE for GRACE, WISE, REPAIR and HoReN, each baseline
  written "value (+gap to HoReN)" as the paper prints it, at the largest N at which HoReN was
  measured on both datasets (the paper does not state its N).

The paper states no model for Tables 6, 7 and 8, so their published numbers appear in every
model's table, labelled with the table they come from.

* **Table 2** (the cross-model table): ZsRE, one row per model × method, one column per N, each
  cell "Rel / Gen / Loc / OP"; built when at least two models have ZsRE rows in one (protocol,
  scoring, ...) setting. Its published numbers are for other (7B–32B) models, so none sit beside
  the measured rows: the table compares the models measured here.
"""
from __future__ import annotations

import pandas as pd

from editbench.report.rows import REFERENCE_METHODS, TABLE_KEYS, method_labels, method_rank, ordered_labels
from editbench.report.tables import (CI_NOTE, DIGITS, Table, format_measured, format_published, format_value,
                                     table_stem, table_title)

# Table 7 rows: (split title, probe set, [(row title, metric)]).
SPLIT_METRICS = [("BLEU (paper's unigram)", "bleu1_horen"), ("sacreBLEU", "sacrebleu"),
                 ("ROUGE-1 (paper's: rouge 1.0.1 recall)", "rouge1_r_horen"),
                 ("ROUGE-2 (paper's: rouge 1.0.1 recall)", "rouge2_r_horen"),
                 ("ROUGE-L (paper's: rouge 1.0.1 recall)", "rougeL_r_horen"),
                 ("ROUGE-1 recall (rouge-score)", "rouge1_r"), ("ROUGE-2 recall (rouge-score)", "rouge2_r"),
                 ("ROUGE-L recall (rouge-score)", "rougeL_r"), ("BERTScore (paper's: MiniLM cosine)", "minilm_cosine"),
                 ("BERTScore F1 (bert-score)", "bertscore_f")]
TABLE7_ROWS = [("Original", "orig", SPLIT_METRICS), ("Paraphrase", "para", SPLIT_METRICS),
               ("Sub-question", "sub", [m for m in SPLIT_METRICS if m[1].startswith("rouge")])]
TABLE8_METHODS = ("GRACE", "WISE", "REPAIR", "HoReN")
TABLE8_DATA = (("wikibigedit", "WikiBigEdit"), ("zsre", "ZsRE"))
HEADLINE = "HoReN"
PUBLISHED_NOTE = ("Published cells: the HoReN paper's, transcribed in baselines/ (baselines/README.md); the "
                  "paper states no model for this table, so they come from its own (larger) models.")


def paper_tables(main: pd.DataFrame, baselines: pd.DataFrame) -> list[Table]:
    """Tables 6, 7 and 8 for every (model, protocol, scoring, ...) that has the rows they need, and
    Table 2 for every (protocol, scoring, ...) with ZsRE rows of two models or more."""
    keys = [k for k in TABLE_KEYS if k != "data"]
    tables = []
    for key, group in main.groupby(keys, sort=True):
        setting = dict(zip(keys, key))
        for build in (table6, table7, table8):
            table = build(group, baselines, setting)
            if table is not None:
                tables.append(table)
    across = [k for k in keys if k != "model"]
    for key, group in main.groupby(across, sort=True):
        table = table2(group, dict(zip(across, key if isinstance(key, tuple) else (key,))))
        if table is not None:
            tables.append(table)
    return tables


# ------------------------------------------------------------------------------------- Table 2

TABLE2_METRICS = ("rel", "gen", "loc", "op")


def table2(group: pd.DataFrame, setting: dict) -> Table | None:
    """ZsRE across models: rows = model × method (paper order), columns = N, cells "Rel / Gen /
    Loc / OP" (None with fewer than two models)."""
    zsre = group[group["data"] == "zsre"]
    models = sorted(zsre["model"].unique())
    if len(models) < 2:
        return None
    Ns = sorted(int(n) for n in zsre["N"].unique())
    header = [("", ["Model", "Method"])] + [("Rel / Gen / Loc / OP", [f"N={n}" for n in Ns])]
    rows = []
    for model in models:
        at = zsre[zsre["model"] == model]
        at = at.assign(label=method_labels(at))
        for i, (_, label) in enumerate(ordered_labels(at)):
            cells = at[at["label"] == label].set_index("N")
            row = [model if i == 0 else "", label]
            for n in Ns:
                values = [_cell(cells.loc[[n]], m) if n in cells.index else None for m in TABLE2_METRICS]
                row.append("—" if all(v is None for v in values) else _joined(values, digits=2))
            rows.append(row)
    title = (f"Paper Table 2 layout (ZsRE across models: {', '.join(models)}) — "
             + table_title("zsre", "models", *setting.values()).split(" · ", 2)[2])
    notes = ["Cells: Rel / Gen / Loc / OP, the mean over seeds (their spread and 95 % intervals: each model's "
             "generic table); — = not measured at this N. The paper's Table 2 reports other models (Qwen2.5-7B, "
             "DeepSeek-R1-Distill-Llama-8B, GPT-OSS-20B, SEA-LION-32B): baselines/ has its numbers."]
    stem = table_stem("paper_table2", "zsre_models", *setting.values())
    return Table(stem, title, header, rows, set(), notes, kind="paper")


def _name(number: int, setting: dict) -> str:
    return table_stem(f"paper_table{number}", *setting.values())  # setting: TABLE_KEYS after data


def _title_for(number: int, data: str, setting: dict, what: str) -> str:
    return f"Paper Table {number} layout ({what}) — {table_title(data, *setting.values())}"


def _published(baselines: pd.DataFrame, table: str, data: str) -> pd.DataFrame:
    return baselines[(baselines["table"] == table) & (baselines["data"] == data)]


def _cell(agg_rows: pd.DataFrame, metric: str) -> float | None:
    if metric not in agg_rows or not len(agg_rows) or pd.isna(agg_rows[metric].iloc[0]):
        return None
    return float(agg_rows[metric].iloc[0])


def _joined(values, digits=DIGITS) -> str:
    return " / ".join("—" if v is None else f"{v:.{digits}f}" for v in values)


# ------------------------------------------------------------------------------------- Table 6

def table6(group: pd.DataFrame, baselines: pd.DataFrame, setting: dict) -> Table | None:
    """WikiBigEdit: rows = N; per method Rel / Gen / Loc and personas / multi-hop accuracy."""
    rows_wbe = group[group["data"] == "wikibigedit"]
    if not len(rows_wbe):
        return None
    published = _published(baselines, "6", "wikibigedit")
    labels = [label for _, label in ordered_labels(rows_wbe)]
    pub_methods = list(dict.fromkeys(published["method"]))
    Ns = sorted({int(n) for n in rows_wbe["N"]} | {int(n) for n in published["N"].dropna()})
    header = [("", ["#edits"])]
    header += [(label, ["Rel / Gen / Loc", "Personas / MHop (n)"]) for label in labels]
    header += [(f"{method} (published, T6)", ["Rel / Gen / Loc"]) for method in pub_methods]
    rows = []
    for n in Ns:
        row = [str(n)]
        for label in labels:
            cell = rows_wbe[(rows_wbe["label"] == label) & (rows_wbe["N"] == n)]
            if not len(cell):
                row += ["—", "—"]
                continue
            row.append(_joined([_cell(cell, m) for m in ("rel", "gen", "loc")]))
            n_mhop = _cell(cell, "n_mhop")
            portability = _joined([_cell(cell, m) for m in ("personas", "mhop")])
            row.append(portability + (f" ({n_mhop:.0f})" if n_mhop is not None else ""))
        for method in pub_methods:
            pub = published[(published["method"] == method) & (published["N"] == n)]
            row.append(" / ".join(format_published(pub[m].iloc[0]) for m in ("rel", "gen", "loc")) if len(pub) else "")
        rows.append(row)
    notes = ["Cells: mean over seeds (the generic wikibigedit table has the ± std and the 95 % intervals); "
             "Personas and MHop "
             "are portability accuracies outside OP; (n) = cases with a multi-hop question.",
             PUBLISHED_NOTE]
    return Table(_name(6, setting), _title_for(6, "wikibigedit", setting, "WikiBigEdit, Rel / Gen / Loc"),
                 header, rows, set(), notes, kind="paper")


# ------------------------------------------------------------------------------------- Table 7

def table7(group: pd.DataFrame, baselines: pd.DataFrame, setting: dict) -> Table | None:
    """UnKE: rows = split x metric; per N one column per method; then the paper's pairs."""
    rows_unke = group[group["data"] == "unke"]
    names = [f"{probe_set}_{metric}" for _, probe_set, metrics in TABLE7_ROWS for _, metric in metrics]
    if not any(name in rows_unke and rows_unke[name].notna().any() for name in names):
        return None  # no measured row has a Table 7 metric
    published = _published(baselines, "7", "unke")
    labels = ordered_labels(rows_unke)
    Ns = sorted(int(n) for n in rows_unke["N"].unique())
    at = {n: [(m, l) for m, l in labels if len(rows_unke[(rows_unke["label"] == l) & (rows_unke["N"] == n)])]
          for n in Ns}
    columns = list(dict.fromkeys(published["column"]))
    header = [("", ["Split", "Metric"])] + [(f"N={n}", [label for _, label in at[n]]) for n in Ns]
    header += [(f"published T7, {column}",
                list(published[published["column"] == column]["method"])) for column in columns]
    rows, bold = [], set()
    for split, probe_set, metrics in TABLE7_ROWS:
        for title, metric in metrics:
            name = f"{probe_set}_{metric}"
            if name not in rows_unke and name not in published:
                continue
            row, position = [split, title], 2
            for n in Ns:
                values = []
                for method, label in at[n]:
                    cell = rows_unke[(rows_unke["label"] == label) & (rows_unke["N"] == n)]
                    value = _cell(cell, name)
                    row.append("—" if value is None else format_measured(cell.iloc[0], name))
                    values.append(None if method in REFERENCE_METHODS or value is None else round(value, DIGITS))
                top = max((v for v in values if v is not None), default=None)
                bold |= {(len(rows), position + j) for j, v in enumerate(values) if top is not None and v == top}
                position += len(values)
            for column in columns:
                for _, pub in published[published["column"] == column].iterrows():
                    value = pub.get(name)
                    row.append("" if value is None or pd.isna(value) else format_published(value))
            rows.append(row)
            split = ""  # the split's name on its first row only
    notes = ["Cells: mean over seeds of each case's score (sub-questions: averaged within a case first); "
             "bold = best measured editor per N (Unedited excluded). BLEU and BERTScore are the paper's "
             "variants (`bleu1_horen`, `minilm_cosine`); sacreBLEU and bert-score F1 are the library "
             "metrics of the same names. The paper's ROUGE is the `rouge` 1.0.1 package's recall "
             "(`rouge*_r_horen`: case and punctuation kept, distinct n-grams), the one its published cells "
             "sit beside; `rouge-score`'s recall (lowercased, no punctuation) scores higher on the same texts "
             "and is shown on its own rows. A run scored before the paper's ROUGE existed shows — there "
             "until `editbench retext` adds it from the run's kept texts. " + CI_NOTE,
             PUBLISHED_NOTE + " The paper's three UnKE / HoReN pairs most likely grow in N (their N was lost in extraction)."]
    return Table(_name(7, setting), _title_for(7, "unke", setting, "UnKE, free-text answers"),
                 header, rows, bold, notes, kind="paper")


# ------------------------------------------------------------------------------------- Table 8

def table8(group: pd.DataFrame, baselines: pd.DataFrame, setting: dict) -> Table | None:
    """Rel / Gen on WikiBigEdit and ZsRE, baselines as "value (+gap to HoReN)", at the largest N
    at which HoReN was measured on both (None without such an N)."""
    headline = group[group["method"] == HEADLINE]
    per_data = [set(headline[headline["data"] == data]["N"].astype(int)) for data, _ in TABLE8_DATA]
    common = set.intersection(*per_data)
    if not common:
        return None
    n = max(common)
    rows_n = group[(group["N"] == n) & group["method"].isin(TABLE8_METHODS)
                   & group["data"].isin([d for d, _ in TABLE8_DATA])]
    rows_n = rows_n.assign(label=method_labels(rows_n, across=("data",)))  # one row per setting, both datasets
    headline_n = rows_n[rows_n["method"] == HEADLINE]  # by method: its label may carry a setting
    ref = {(data, m): _cell(on, m) if len(on := headline_n[headline_n["data"] == data]) == 1 else None
           for data, _ in TABLE8_DATA for m in ("rel", "gen")}  # several settings on one dataset: no gap
    published = baselines[baselines["table"] == "8"]
    pub_ref = {(r["data"], m): r[m] for _, r in published[published["method"] == HEADLINE].iterrows()
               for m in ("rel", "gen")}
    header = [("", ["Method"])] + [(title, ["Rel", "Gen"]) for _, title in TABLE8_DATA]
    measured = ordered_labels(rows_n)
    methods = sorted({m for m, _ in measured} | set(published["method"]), key=method_rank)
    rows = []
    for method in methods:
        for label in [label for m, label in measured if m == method]:
            row = [label]
            for data, _ in TABLE8_DATA:
                for m in ("rel", "gen"):
                    value = _cell(rows_n[(rows_n["label"] == label) & (rows_n["data"] == data)], m)
                    gap = ("" if method == HEADLINE or value is None or ref[(data, m)] is None
                           else f" ({ref[(data, m)] - value:+.{DIGITS}f})")
                    row.append("—" if value is None else format_value(value) + gap)
            rows.append(row)
        pub = published[published["method"] == method]
        if len(pub):
            row = [f"{method} (published, T8)"]
            for data, _ in TABLE8_DATA:
                for m in ("rel", "gen"):
                    hit = pub[pub["data"] == data]
                    value = None if not len(hit) or pd.isna(hit[m].iloc[0]) else float(hit[m].iloc[0])
                    ref_value = pub_ref.get((data, m))
                    gap = ("" if method == HEADLINE or value is None or ref_value is None
                           else f" ({ref_value - value:+.2f})")
                    row.append("" if value is None else format_published(value) + gap)
            rows.append(row)
    notes = [f"Measured at N = {n}, the largest N at which {HEADLINE} was measured on both datasets; "
             f"(±x) = {HEADLINE} minus the method, as the paper prints it; — = not measured at this N. "
             "95 % intervals: the generic tables; whether a gap is significant: the paired comparisons.",
             PUBLISHED_NOTE + " Its N is not stated either."]
    return Table(_name(8, setting), _title_for(8, "wikibigedit + zsre", setting, f"Rel / Gen, gap to {HEADLINE}"),
                 header, rows, set(), notes, kind="paper")
