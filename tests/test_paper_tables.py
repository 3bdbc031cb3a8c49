"""The paper's Table 6 / 7 / 8 layouts (editbench.report.paper) on hand-written result rows, and
the published numbers they print (baselines/horen_paper*.csv)."""
from __future__ import annotations

from pathlib import Path

import pytest

from editbench import report
from editbench.report import paper
from report_fixtures import row, write_run

BASELINES = Path(__file__).resolve().parents[1] / "baselines"
WBE = ("rel", "gen", "loc", "personas", "mhop", "op")
UNKE = ("orig_bleu1_horen", "orig_sacrebleu", "orig_rougeL_r_horen", "orig_minilm_cosine", "sub_rougeL_r_horen",
        "orig_rougeL_r")


def wbe_row(method, N, rel, gen, loc, personas, mhop, n_mhop, **kw):
    return row(method, 0, N, rel, gen, loc, (rel * gen * loc) ** (1 / 3), data="wikibigedit", model="smollm2_135m",
               protocol_version=2, personas=personas, mhop=mhop, n_mhop=n_mhop, metric_names=list(WBE), **kw)


def zsre_row(method, N, rel, gen, loc=1.0, seed=0, **kw):
    return row(method, seed, N, rel, gen, loc, (rel * gen * loc) ** (1 / 3), model="smollm2_135m",
               protocol_version=2, **kw)


def unke_row(method, N, values, max_new_tokens=128):
    return row(method, 0, N, data="unke", model="smollm2_135m", protocol="unstructured_v1",
               max_new_tokens=max_new_tokens, metric_names=list(UNKE), **dict(zip(UNKE, values)),
               **{k: None for k in ("rel", "gen", "loc", "op")})


def tables(root) -> dict[str, report.Table]:
    agg = report.aggregate(report.load_rows(root))
    built = paper.paper_tables(agg[agg["tag"] == "main"], report.load_baselines(BASELINES))
    return {t.name.split("__")[0]: t for t in built} | {t.name: t for t in built}


def cells(table: report.Table, label: str) -> dict[str, str]:
    hit = [r for r in table.rows if r[0] == label]
    assert len(hit) == 1, (label, [r[0] for r in table.rows])
    return dict(zip(table.columns, hit[0]))


def test_table7_baselines_transcribed():
    df = report.load_baselines(BASELINES)
    t7 = df[df["table"] == "7"].set_index(["method", "column"])
    assert t7.loc[("UnKE", "pair 3"), "orig_minilm_cosine"] == pytest.approx(0.183)  # HoReN paper Table 7
    assert t7.loc[("HoReN", "pair 1"), "orig_rougeL_r_horen"] == pytest.approx(0.551)  # the rouge 1.0.1 recall
    assert t7.loc[("HoReN", "pair 2"), "para_bleu1_horen"] == pytest.approx(0.115)
    assert t7.loc[("UnKE", "pair 1"), "sub_rouge2_r_horen"] == pytest.approx(0.176)
    assert t7["N"].isna().all() and (t7.reset_index()["model"] == "").all()
    assert t7[list(report.PAPER_METRICS)].isna().all().all()  # Table 7 has no Rel / Gen / Loc / OP


def test_table6_rows_are_edit_counts_with_portability_and_published(tmp_path):
    write_run(tmp_path / "h", "r", [wbe_row("HoReN", 500, 0.9, 0.8, 0.7, 0.5, 0.25, 4)])
    write_run(tmp_path / "g", "r", [wbe_row("GRACE", 500, 0.95, 0.1, 1.0, 0.0, 0.0, 4),
                                    wbe_row("GRACE", 1000, 0.94, 0.1, 1.0, 0.0, 0.0, 9)])
    t6 = tables(tmp_path)["paper_table6"]
    assert t6.kind == "paper" and "smollm2_135m" in t6.name
    at500 = cells(t6, "500")
    assert at500["HoReN Rel / Gen / Loc"] == "0.900 / 0.800 / 0.700"
    assert at500["HoReN Personas / MHop (n)"] == "0.500 / 0.250 (4)"
    assert at500["HoReN (published, T6) Rel / Gen / Loc"] == "0.992 / 0.767 / 0.682"
    assert at500["AlphaEdit (published, T6) Rel / Gen / Loc"] == "0.825 / 0.605 / 0.267"
    assert cells(t6, "1000")["HoReN Rel / Gen / Loc"] == "—"
    assert cells(t6, "1000")["GRACE Personas / MHop (n)"] == "0.000 / 0.000 (9)"
    assert cells(t6, "3000")["GRACE Rel / Gen / Loc"] == "—"  # a published-only N keeps its row
    assert [block for block, _ in t6.header][1:3] == ["GRACE", "HoReN"]  # paper order: HoReN last


def test_table7_rows_are_split_metrics_and_bold_skips_unedited(tmp_path):
    write_run(tmp_path / "u", "r", [unke_row("UnKE", 10, (0.2, 0.05, 0.3, 0.6, 0.2, 0.5))])
    write_run(tmp_path / "h", "r", [unke_row("HoReN", 10, (0.1, 0.04, 0.4, 0.7, 0.3, 0.45))])
    write_run(tmp_path / "n", "r", [unke_row("Unedited", 10, (0.9, 0.9, 0.9, 0.9, 0.9, 0.9))])
    t7 = tables(tmp_path)["paper_table7"]
    assert t7.name.endswith("__gen128")
    # a metric gets a row when it was measured or published (bert-score F1: neither here); the
    # published ROUGE cells sit on the paper's ROUGE (rouge 1.0.1) rows, rouge-score's has its own
    paper = [f"ROUGE-{k} (paper's: rouge 1.0.1 recall)" for k in "12L"]
    split_rows = [(r[0], r[1]) for r in t7.rows]
    assert split_rows == [("Original", "BLEU (paper's unigram)"), ("", "sacreBLEU"), *[("", x) for x in paper],
                          ("", "ROUGE-L recall (rouge-score)"), ("", "BERTScore (paper's: MiniLM cosine)"),
                          ("Paraphrase", "BLEU (paper's unigram)"), *[("", x) for x in paper],
                          ("", "BERTScore (paper's: MiniLM cosine)"),
                          ("Sub-question", paper[0]), *[("", x) for x in paper[1:]]]
    assert [block for block, _ in t7.header][1:] == ["N=10"] + [f"published T7, pair {i}" for i in (1, 2, 3)]
    orig = {r[1]: dict(zip(t7.columns, r)) for r in t7.rows[:7]}
    assert orig[paper[2]]["N=10 HoReN"] == "0.400 (no CI)"  # the fixture run keeps no records
    assert orig[paper[2]]["N=10 Unedited"] == "0.900 (no CI)"
    assert orig[paper[2]]["published T7, pair 1 HoReN"] == "0.551"
    assert orig["ROUGE-L recall (rouge-score)"]["N=10 HoReN"] == "0.450 (no CI)"
    assert orig["ROUGE-L recall (rouge-score)"]["published T7, pair 1 HoReN"] == ""  # not the paper's metric
    assert orig["BERTScore (paper's: MiniLM cosine)"]["published T7, pair 3 UnKE"] == "0.183"
    assert orig["sacreBLEU"]["published T7, pair 1 UnKE"] == ""  # the paper has no sacreBLEU
    assert orig[paper[0]]["N=10 HoReN"] == "—"  # published only
    assert cells_at(t7, 14)["N=10 UnKE"] == "0.200 (no CI)"  # sub-question ROUGE-L
    bold = {(i, t7.columns[j]) for i, j in t7.bold}
    assert (4, "N=10 HoReN") in bold and (0, "N=10 UnKE") in bold and (14, "N=10 HoReN") in bold
    assert (5, "N=10 UnKE") in bold
    assert not any(column == "N=10 Unedited" for _, column in bold)  # the unedited model never wins
    assert not any(column.startswith("published") for _, column in bold)


def cells_at(table: report.Table, i: int) -> dict[str, str]:
    return dict(zip(table.columns, table.rows[i]))


def test_table8_gap_to_horen_at_largest_common_n(tmp_path):
    write_run(tmp_path / "hw", "r", [wbe_row("HoReN", 100, 0.9, 0.8, 0.5, 0, 0, 1)])
    write_run(tmp_path / "gw", "r", [wbe_row("GRACE", 100, 0.6, 0.05, 1.0, 0, 0, 1)])
    write_run(tmp_path / "hz", "r", [zsre_row("HoReN", 100, 0.95, 0.7), zsre_row("HoReN", 1000, 0.94, 0.75)])
    write_run(tmp_path / "gz", "r", [zsre_row("GRACE", 100, 0.97, 0.0), zsre_row("GRACE", 1000, 0.1, 0.1)])
    write_run(tmp_path / "fz", "r", [zsre_row("FT-L", 100, 0.5, 0.5)])  # not a Table 8 method
    t8 = tables(tmp_path)["paper_table8"]
    assert "N = 100" in t8.notes[0]  # HoReN has N = 1000 on ZsRE only
    grace = cells(t8, "GRACE")
    assert grace == {"Method": "GRACE", "WikiBigEdit Rel": "0.600 (+0.300)", "WikiBigEdit Gen": "0.050 (+0.750)",
                     "ZsRE Rel": "0.970 (-0.020)", "ZsRE Gen": "0.000 (+0.700)"}
    assert cells(t8, "HoReN")["ZsRE Gen"] == "0.700"
    assert cells(t8, "GRACE (published, T8)")["WikiBigEdit Rel"] == "0.63 (+0.33)"
    assert cells(t8, "REPAIR (published, T8)")["ZsRE Gen"] == "0.57 (+0.22)"  # unmeasured: paper row only
    assert cells(t8, "HoReN (published, T8)")["ZsRE Rel"] == "0.94"
    assert not any(r[0].startswith("FT-L") for r in t8.rows)
    assert [r[0] for r in t8.rows].index("GRACE") < [r[0] for r in t8.rows].index("HoReN")


def test_table8_labels_settings_across_both_datasets(tmp_path):
    """One WISE setting on WikiBigEdit and two on ZsRE: the shared setting is one row, not two."""
    a, b = {"act_ratio": 0.75, "seed": 0}, {"act_ratio": 0.88, "seed": 0}
    write_run(tmp_path / "hw", "r", [wbe_row("HoReN", 100, 0.9, 0.8, 0.5, 0, 0, 1)])
    write_run(tmp_path / "hz", "r", [zsre_row("HoReN", 100, 0.95, 0.7)])
    write_run(tmp_path / "ww", "r", [wbe_row("WISE", 100, 0.4, 0.3, 0.2, 0, 0, 1, hparams=a)])
    write_run(tmp_path / "wa", "r", [zsre_row("WISE", 100, 0.5, 0.4, hparams=a)])
    write_run(tmp_path / "wb", "r", [zsre_row("WISE", 100, 0.2, 0.1, hparams=b)])
    t8 = tables(tmp_path)["paper_table8"]
    assert [r[0] for r in t8.rows if r[0].startswith("WISE [")] == ["WISE [act_ratio=0.75]", "WISE [act_ratio=0.88]"]
    assert cells(t8, "WISE [act_ratio=0.75]") == {
        "Method": "WISE [act_ratio=0.75]", "WikiBigEdit Rel": "0.400 (+0.500)", "WikiBigEdit Gen": "0.300 (+0.500)",
        "ZsRE Rel": "0.500 (+0.450)", "ZsRE Gen": "0.400 (+0.300)"}
    assert cells(t8, "WISE [act_ratio=0.88]")["WikiBigEdit Rel"] == "—"
    assert cells(t8, "HoReN")["ZsRE Rel"] == "0.950"  # one HoReN setting: plain label


def test_table8_gap_to_horen_when_its_setting_differs_between_datasets(tmp_path):
    """HoReN run with another threshold on each dataset: two labelled HoReN rows, and the gaps are
    still to HoReN on each dataset (labelling across datasets must not lose the reference)."""
    write_run(tmp_path / "hw", "r", [wbe_row("HoReN", 100, 0.9, 0.8, 0.5, 0, 0, 1, hparams={"threshold": 0.5})])
    write_run(tmp_path / "hz", "r", [zsre_row("HoReN", 100, 0.95, 0.7, hparams={"threshold": 0.7})])
    write_run(tmp_path / "gw", "r", [wbe_row("GRACE", 100, 0.6, 0.05, 1.0, 0, 0, 1)])
    write_run(tmp_path / "gz", "r", [zsre_row("GRACE", 100, 0.97, 0.0)])
    t8 = tables(tmp_path)["paper_table8"]
    assert cells(t8, "HoReN [threshold=0.5]")["WikiBigEdit Rel"] == "0.900"
    assert cells(t8, "HoReN [threshold=0.7]")["ZsRE Gen"] == "0.700"
    assert cells(t8, "GRACE") == {"Method": "GRACE", "WikiBigEdit Rel": "0.600 (+0.300)",
                                  "WikiBigEdit Gen": "0.050 (+0.750)", "ZsRE Rel": "0.970 (-0.020)",
                                  "ZsRE Gen": "0.000 (+0.700)"}


def test_table8_needs_horen_on_both_datasets(tmp_path):
    write_run(tmp_path / "hz", "r", [zsre_row("HoReN", 100, 0.95, 0.7)])
    write_run(tmp_path / "gw", "r", [wbe_row("GRACE", 100, 0.6, 0.05, 1.0, 0, 0, 1)])
    assert "paper_table8" not in tables(tmp_path)


def test_generation_cap_separates_tables_and_old_rows_count_as_default(tmp_path):
    write_run(tmp_path / "a", "r", [unke_row("HoReN", 10, (0.1,) * 6, max_new_tokens=128)])
    write_run(tmp_path / "b", "r", [unke_row("HoReN", 10, (0.2,) * 6, max_new_tokens=512)])
    old = zsre_row("HoReN", 10, 0.9, 0.9)
    write_run(tmp_path / "c", "r", [old, zsre_row("HoReN", 10, 0.7, 0.7, seed=1, max_new_tokens=512)])
    agg = report.aggregate(report.load_rows(tmp_path))
    unke = agg[agg["data"] == "unke"].sort_values("max_new_tokens")
    assert list(unke["orig_bleu1_horen"]) == [pytest.approx(0.1), pytest.approx(0.2)]  # never averaged
    zsre = agg[agg["data"] == "zsre"]
    assert len(zsre) == 1 and int(zsre["n"].iloc[0]) == 2  # a row without the field is the default cap
    out = tmp_path / "out"
    report.render(tmp_path, out, BASELINES)
    names = sorted(p.name for p in (out / "tables").glob("paper_table7*.md"))
    assert names == ["paper_table7__smollm2_135m__unstructured_v1-v1__greedy.md",
                     "paper_table7__smollm2_135m__unstructured_v1-v1__greedy__gen128.md"]
    title = (out / "tables" / names[1]).read_text().splitlines()[0]
    assert "answers cut at 128 tokens" in title


def test_results_doc_includes_paper_tables_with_published_numbers(tmp_path):
    write_run(tmp_path / "results" / "h", "r", [wbe_row("HoReN", 500, 0.9, 0.8, 0.7, 0.5, 0.25, 4)])
    rows = report.load_rows(tmp_path / "results")
    out, docs = tmp_path / "out", tmp_path / "docs"
    rendered = report.render_rows(rows, out, report.load_baselines(BASELINES), "results")
    text = (report.write_results_doc(docs, rendered, out, "results", rows)).read_text()
    assert "## The paper's layouts (its Tables 2, 6, 7 and 8)" in text
    assert "### Paper Table 6 layout (WikiBigEdit, Rel / Gen / Loc)" in text
    assert "0.992 / 0.767 / 0.682" in text  # HoReN (published, T6) at N = 500
    block = report.readme_block(rendered.settings)
    assert "Paper Table" not in block and "| HoReN | 1 | **0.796 (no CI)** |" in block  # OP = (.9 x .8 x .7)^(1/3); no records


def test_table2_spans_models_only_when_two_have_zsre_rows(tmp_path):
    """Rows = model x method, a column per N, cells Rel / Gen / Loc / OP; one model: no table."""
    from editbench.report.paper import paper_tables
    from editbench.report.rows import aggregate, load_rows

    results = tmp_path / "results"
    for model in ("smollm2_135m", "gemma3_270m"):
        for method, op in (("HoReN", 0.9), ("GRACE", 0.3)):
            write_run(results, f"{model}_{method}", [row(method, 0, N, rel=1.0, gen=op, loc=0.99, op=op, model=model)
                                                     for N in (100, 1000)])
    agg = aggregate(load_rows(results))
    t2 = [t for t in paper_tables(agg, agg.iloc[0:0]) if t.name.startswith("paper_table2")]
    assert len(t2) == 1
    table = t2[0]
    assert [r[:2] for r in table.rows] == [["gemma3_270m", "GRACE"], ["", "HoReN"], ["smollm2_135m", "GRACE"],
                                           ["", "HoReN"]]
    assert table.rows[1][2:] == ["1.00 / 0.90 / 0.99 / 0.90"] * 2
    one = aggregate(load_rows(results))
    one = one[one["model"] == "smollm2_135m"]
    assert not [t for t in paper_tables(one, one.iloc[0:0]) if t.name.startswith("paper_table2")]
