"""editbench.report: synthetic results trees -> tables, figures, index; baselines; notebook."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from editbench import report

sys.path.insert(0, str(Path(__file__).parent))  # works with or without tests/__init__.py
from report_fixtures import VALUES, add_calibration, make_tree, row, write_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASELINES = REPO / "baselines"
STEM = "zsre__qwen25_7b__lifelong_v1-v1__greedy"
METRIC_COLUMNS = {"rel": "Rel", "gen": "Gen", "loc": "Loc", "op": "OP"}


def read_md_table(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Header and {row label: {column: cell text}} of a table written by the report."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    return header, {cells[0]: dict(zip(header, cells)) for cells in map(split, lines[2:])}


def parse_cell(text: str) -> tuple[float, float | None]:
    """(mean, seeds' std) of a measured cell, its interval part (`` (±h)``, `` (no CI)``) dropped."""
    mean, _, std = text.strip("*").split(" (")[0].partition(" ± ")
    return float(mean), float(std) if std else None


def is_bold(text: str) -> bool:
    return text.startswith("**") and text.endswith("**")


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "results")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, dict, str]:
    """The standard tree plus a calibration sweep, a protocol-v2 run and a teacher-forced run,
    rendered once through the CLI: (out dir, paths written by kind, stdout)."""
    root = tmp_path_factory.mktemp("shared")
    tree = add_calibration(make_tree(root / "results"))
    write_run(tree / "horen_v2", "seed0", [row("HoReN", 0, 10, 0.5, 0.5, 0.5, 0.5, protocol_version=2)])
    write_run(tree / "horen_tf", "seed0", [row("HoReN", 0, 10, 0.2, 0.2, 0.2, 0.2, scoring="teacher_forced")])
    out = root / "reports"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert report.main(["--results", str(tree), "--out", str(out), "--baselines", str(BASELINES)]) == 0
    written = {"tables": sorted((out / "tables").iterdir()), "figures": sorted((out / "figures").iterdir()),
               "index": [out / "index.md"]}
    return out, written, stdout.getvalue()


@pytest.fixture(scope="module")
def rendered(shared) -> tuple[Path, dict]:
    return shared[0], shared[1]


# ------------------------------------------------------------------------------------- baselines

PAPER_CELLS = [  # (table, model, method, data, N) -> rel, gen, loc, op, hand-copied from the HoReN paper
    (("1", "qwen25_7b", "HoReN", "zsre", 1000), (1.00, 0.93, 0.98, 0.97)),
    (("1", "llama3_8b", "ROME", "zsre", 100), (0.17, 0.16, 0.01, 0.06)),
    (("1", "sea_lion_32b", "GRACE", "zsre", 500), (0.41, 0.02, 1.00, 0.20)),
    (("1", "qwen25_7b", "AlphaEdit", "zsre", 1000), (0.99, 0.88, 0.88, 0.92)),
    (("1", "llama31_8b", "WISE", "zsre", 500), (0.71, 0.66, 1.00, 0.78)),
    (("2", "gpt_oss_20b", "WISE", "zsre", 2000), (0.14, 0.14, 0.08, 0.12)),
    (("2", "deepseek_r1_llama_8b", "GRACE", "zsre", 10000), (1.00, 0.02, 1.00, 0.27)),  # "same"
    (("2", "sea_lion_32b", "HoReN", "zsre", 5000), (1.00, 0.90, 0.97, 0.96)),
    (("4", "llama31_8b", "AlphaEdit", "zsre", 5000), (0.18, 0.15, 0.03, 0.10)),
    (("4", "llama31_8b", "UltraEdit", "zsre", 10000), (0.86, 0.84, 0.42, 0.67)),
    (("9", "llama31_8b", "GRACE+Norm", "zsre", 1000), (1.0, 0.33, 1.0, 0.69)),
    (("9", "llama31_8b", "GRACE", "zsre", 100), (1.0, 0.06, 1.0, 0.40)),
    (("9", "llama31_8b", "HoReN", "zsre", 500), (1.00, 0.92, 1.00, 0.97)),
    (("10", "llama31_8b", "HoReN w/o norm", "zsre", 100), (1.00, 0.92, 0.08, 0.43)),
    (("10", "llama31_8b", "HoReN", "zsre", 1000), (0.99, 0.93, 0.99, 0.97)),
    (("11", "llama31_8b", "HoReN-LoRA", "zsre", 1000), (1.00, 0.93, 1.00, 0.98)),
    (("6", "", "HoReN", "wikibigedit", 3000), (0.986, 0.754, 0.631, None)),
    (("6", "", "AlphaEdit", "wikibigedit", 500), (0.825, 0.605, 0.267, None)),
]


def test_baselines_spot_checks():
    df = report.load_baselines(BASELINES)
    for (table, model, method, data, N), expected in PAPER_CELLS:
        hit = df[(df["table"] == table) & (df["model"] == model) & (df["method"] == method)
                 & (df["data"] == data) & (df["N"] == N)]
        assert len(hit) == 1, (table, model, method, N)
        for metric, value in zip(report.PAPER_METRICS, expected):
            got = hit.iloc[0][metric]
            ok = pd.isna(got) if value is None else got == pytest.approx(value)
            assert ok, (table, model, method, N, metric)
    repair = df[(df["table"] == "8") & (df["method"] == "REPAIR") & (df["data"] == "zsre")].iloc[0]
    assert (repair["rel"], repair["gen"]) == (pytest.approx(0.59), pytest.approx(0.57))
    assert pd.isna(repair["loc"]) and pd.isna(repair["N"])


def test_baselines_structure():
    df = report.load_baselines(BASELINES)
    assert df.groupby("table").size().to_dict() == {
        "1": 72, "2": 36, "4": 15, "6": 6, "7": 6, "8": 8, "9": 9, "10": 6, "11": 6}
    assert not df.duplicated(["table", "model", "method", "data", "N", "column"]).any()
    assert df.loc[df["table"].isin(["1", "2", "4", "9", "10", "11"]), "N_inferred"].all()
    assert not df.loc[df["table"].isin(["6", "7", "8"]), "N_inferred"].any()
    assert set(df["model"]) <= {"", "llama3_8b", "llama31_8b", "qwen25_7b", "sea_lion_32b",
                                "deepseek_r1_llama_8b", "gpt_oss_20b"}
    assert set(df["method"]) <= {"ROME", "GRACE", "WISE", "AlphaEdit", "UltraEdit", "HoReN",
                                 "GRACE+Norm", "HoReN w/o norm", "HoReN-LoRA", "REPAIR", "UnKE"}
    metrics = [c for c in df.columns if c not in report.BASELINE_TEXT + ["N", "N_inferred"]]
    values = df[metrics].stack().dropna()
    assert ((values >= 0) & (values <= 1)).all()
    assert df["source"].str.match(r"HoReN paper Table \d+$").all()
    # Tables 9-11 repeat Table 1's LLaMA-3.1 HoReN rows, once per table.
    t1 = df[(df["table"] == "1") & (df["model"] == "llama31_8b") & (df["method"] == "HoReN")]
    for table in ("9", "10", "11"):
        rows = df[(df["table"] == table) & (df["method"] == "HoReN")]
        assert rows[list(report.PAPER_METRICS)].to_numpy().tolist() == t1[list(report.PAPER_METRICS)].to_numpy().tolist()


# ---------------------------------------------------------------------------------------- tables

def test_table_cells_are_mean_and_sample_std(rendered):
    out, _ = rendered
    header, rows = read_md_table(out / "tables" / f"{STEM}.md")
    assert header[:2] == ["Method", "n"] and "N=10 Rel" in header and "N=100 OP" in header
    for method in ("HoReN", "GRACE"):
        assert rows[method]["n"] == "2"
        for N in (10, 100):
            for i, (metric, name) in enumerate(METRIC_COLUMNS.items()):
                seeds = [VALUES[(method, seed, N)][i] for seed in (0, 1)]
                mean, std = parse_cell(rows[method][f"N={N} {name}"])
                assert mean == pytest.approx(statistics.mean(seeds), abs=5e-4)
                assert std == pytest.approx(statistics.stdev(seeds), abs=5e-4)
    # One cell written out by hand: HoReN N=100 Rel over seeds 0.96, 0.98 (runs without records/: no CI).
    assert rows["HoReN"]["N=100 Rel"].strip("*") == "0.970 ± 0.014 (no CI)"


def test_best_per_column_is_bold_and_ties_all_bold(rendered):
    out, _ = rendered
    _, rows = read_md_table(out / "tables" / f"{STEM}.md")
    assert is_bold(rows["HoReN"]["N=10 Gen"]) and not is_bold(rows["GRACE"]["N=10 Gen"])
    assert is_bold(rows["GRACE"]["N=100 Rel"]) and not is_bold(rows["HoReN"]["N=100 Rel"])
    assert is_bold(rows["HoReN"]["N=10 Loc"]) and is_bold(rows["GRACE"]["N=10 Loc"])  # tie at 1.000
    published = rows["HoReN (published, T1)*"]
    assert not any(is_bold(text) for text in published.values())
    tex = (out / "tables" / f"{STEM}.tex").read_text()
    assert r"\textbf{0.880 $\pm$ 0.028 (no CI)}" in tex and r"\begin{tabular}" in tex


def test_published_row_sits_under_the_measured_method(rendered):
    out, _ = rendered
    header, rows = read_md_table(out / "tables" / f"{STEM}.md")
    labels = list(rows)
    assert labels.index("HoReN (published, T1)*") == labels.index("HoReN") + 1
    assert labels.index("GRACE (published, T1)*") == labels.index("GRACE") + 1
    published = rows["HoReN (published, T1)*"]  # paper Table 1: Qwen2.5-7B HoReN N1 = .99/.93/1.00/.97
    assert [published[f"N=100 {m}"] for m in ("Rel", "Gen", "Loc", "OP")] == ["0.99", "0.93", "1.00", "0.97"]
    assert published["N=10 Rel"] == ""  # the paper has no N=10 column


def test_published_rows_with_identical_numbers_are_merged(tmp_path):
    results = tmp_path / "results"
    write_run(results, "llama", [row("HoReN", 0, 100, model="llama31_8b")])
    write_run(results, "unedited", [row("Unedited", 0, 100, model="llama31_8b", hparams={})])
    out = tmp_path / "reports"
    report.render(results, out, BASELINES)
    _, rows = read_md_table(out / "tables" / "zsre__llama31_8b__lifelong_v1-v1__greedy.md")
    assert "HoReN (published, T1/T9/T10/T11)*" in rows
    assert rows["HoReN"]["N=100 Rel"] == "**1.000 (no CI)**"  # n = 1: mean only
    assert rows["Unedited"]["N=100 Rel"] == "1.000 (no CI)"  # a reference row, never bold


def test_protocol_versions_and_scoring_never_merge(rendered):
    out, _ = rendered
    _, v1 = read_md_table(out / "tables" / f"{STEM}.md")
    _, v2 = read_md_table(out / "tables" / "zsre__qwen25_7b__lifelong_v1-v2__greedy.md")
    _, tf = read_md_table(out / "tables" / "zsre__qwen25_7b__lifelong_v1-v1__teacher_forced.md")
    assert v1["HoReN"]["n"] == "2" and parse_cell(v1["HoReN"]["N=10 Rel"]) == (0.99, 0.014)
    assert v2["HoReN"]["n"] == "1" and v2["HoReN"]["N=10 Rel"] == "**0.500 (no CI)**"
    assert tf["HoReN"]["N=10 Rel"] == "**0.200 (no CI)**"


def test_aggregate_keeps_protocol_versions_apart(tree):
    write_run(tree / "horen_v2", "seed0", [row("HoReN", 0, 10, protocol_version=2)])
    write_run(tree / "horen_tf", "seed0", [row("HoReN", 0, 10, scoring="teacher_forced")])
    agg = report.aggregate(report.load_rows(tree))
    horen = agg[(agg["method"] == "HoReN") & (agg["N"] == 10)]
    assert sorted(zip(horen["protocol_version"], horen["scoring"], horen["n"])) == [
        (1, "greedy", 2), (1, "teacher_forced", 1), (2, "greedy", 1)]


def test_hparam_variants_get_separate_labelled_rows(tmp_path):
    results = tmp_path / "results"
    for threshold, rel in ((0.7, 0.9), (0.8, 0.6)):
        for seed in (0, 1):
            hp = {"threshold": threshold, "pooling_ratio": 0.6, "seed": seed}
            write_run(results, f"t{threshold}_s{seed}", [row("HoReN", seed, 10, rel=rel, hparams=hp)])
    out = tmp_path / "reports"
    report.render(results, out, BASELINES)
    _, rows = read_md_table(out / "tables" / f"{STEM}.md")
    assert rows["HoReN [threshold=0.7]"]["N=10 Rel"] == "**0.900 ± 0.000 (no CI)**"
    assert rows["HoReN [threshold=0.8]"]["N=10 Rel"] == "0.600 ± 0.000 (no CI)"


def test_cost_table(rendered):
    out, _ = rendered
    header, rows = read_md_table(out / "tables" / f"{STEM}__cost.md")
    assert header == ["Method", "N", "n", "edit time (ms/edit)", "eval time (s)", "mem_device",
                      "peak mem (GB)", "resident mem (GB)", "editor params"]
    assert rows["HoReN"]["edit time (ms/edit)"] == "15.0 ± 7.1"  # seeds 10 ms and 20 ms per edit
    assert rows["HoReN"]["mem_device"] == "unknown"  # the fixture rows predate mem_device


# --------------------------------------------------------------------------------------- figures

def test_figures_and_index_are_written(rendered):
    out, written = rendered
    names = {p.name for p in written["figures"]}
    for kind in ("op_vs_n", "metrics_vs_n", "cost_vs_n"):
        assert {f"{kind}__{STEM}.png", f"{kind}__{STEM}.pdf"} <= names
    for path in written["figures"] + written["tables"] + written["index"]:
        assert path.is_file() and path.stat().st_size > 0, path
    index = (out / "index.md").read_text()
    assert f"tables/{STEM}.md" in index and f"figures/op_vs_n__{STEM}.png" in index
    assert "| T1 | qwen25_7b | HoReN | zsre | 500, 1000 |" in index  # N=100 is measured
    assert "| T1 | llama3_8b | ROME | zsre | 100, 500, 1000 |" in index


def test_calibration_heatmap_and_pareto(rendered):
    out, written = rendered
    names = {p.name for p in written["figures"]}
    assert f"calibration__{STEM}__HoReN.png" in names and f"pareto__{STEM}__HoReN.png" in names
    assert (out / "figures" / f"calibration__{STEM}__HoReN.png").stat().st_size > 0
    # Calibration rows stay out of the main tables.
    _, rows = read_md_table(out / "tables" / f"{STEM}.md")
    assert rows["HoReN"]["n"] == "2"


def figure_title(fig) -> str:
    """The figure's title, whether on the figure or on the sub-figure holding its panels."""
    return " ".join(f.get_suptitle() for f in [fig, *fig.subfigs] if f.get_suptitle()).replace("\n", " ")


def layout_problems(fig) -> list[str]:
    """What a reader would see as broken: a panel, title, annotation or legend reaching past the
    figure's edge (clipped), or a legend over a panel's data area."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    parts = [(f"panel {ax.get_title()!r}", ax.get_tightbbox(renderer)) for ax in fig.axes]
    legends = list(fig.findobj(Legend))
    parts += [("legend", legend.get_window_extent(renderer)) for legend in legends]
    texts = [c for f in [fig, *fig.subfigs] for c in f.get_children() if isinstance(c, Text)]
    texts += [t for ax in fig.axes for t in ax.texts]
    parts += [(f"text {t.get_text()[:40]!r}", t.get_window_extent(renderer)) for t in texts if t.get_text().strip()]
    problems = [f"{what} clipped" for what, box in parts
                if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1]
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    problems += [f"legend over panel {ax.get_title()!r}" for legend in legends for ax in panels
                 if legend.get_window_extent(renderer).overlaps(ax.bbox)]
    return problems


def test_pareto_front():
    points = pd.DataFrame({"loc": [0.9, 0.8, 0.7, 0.6, 0.85], "gen": [0.5, 0.7, 0.6, 0.9, 0.4]})
    front = report.pareto_front(points)
    assert list(front.index) == [0, 1, 3]


def test_method_colours_are_fixed_and_deterministic():
    assert report.method_color("HoReN") == report.METHOD_COLORS["HoReN"]
    assert report.method_color("MyNewEditor") == report.method_color("MyNewEditor")
    code = "from editbench.report import method_color; print(method_color('MyNewEditor'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == report.method_color("MyNewEditor")


# ------------------------------------------------------------------------------- loading and CLI

@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nope", "does not exist"),
    (lambda root: root, "no metrics.jsonl under"),
])
def test_missing_or_empty_results_exit_2_with_one_line(tmp_path, capsys, make, message):
    results = make(tmp_path)
    assert report.main(["--results", str(results), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editbench.report: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_no_usable_rows_exit_2(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("garbage\n")
    assert report.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no usable rows" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    done = subprocess.run([sys.executable, "-m", "editbench.report", "--results", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_partial_run_still_renders(shared):
    out, _, stdout = shared
    assert "1 of 12 runs are partial" in stdout
    _, rows = read_md_table(out / "tables" / f"{STEM}.md")
    assert rows["GRACE"]["n"] == "2"  # the partial run's rows are used
    assert "grace/seed1" in (out / "index.md").read_text()


def test_malformed_lines_are_skipped_with_a_warning(tree, capsys, tmp_path):
    with open(tree / "horen" / "seed0" / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({k: v for k, v in row().items() if k != "N"}) + "\n")
    with pytest.warns(report.ResultsWarning) as caught:
        rows = report.load_rows(tree)
    assert len(rows) == 8
    messages = [str(w.message) for w in caught]
    assert any("metrics.jsonl:3" in m for m in messages)
    assert any("metrics.jsonl:4" in m and "missing N" in m for m in messages)


def test_cli_prints_warnings_for_malformed_lines(tmp_path, capsys):
    run = write_run(tmp_path / "results", "run", [row("HoReN", 0, 10)])
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")
    assert report.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "editbench.report: warning:" in err and "metrics.jsonl:2" in err and "not a JSON object" in err


def test_rerun_of_the_same_seed_counts_once(tmp_path):
    results = tmp_path / "results"
    write_run(results, "old", [row("HoReN", 0, 10, rel=0.1, time="2025-01-01T00:00:00")])
    write_run(results, "new", [row("HoReN", 0, 10, rel=0.9, time="2025-02-01T00:00:00")])
    agg = report.aggregate(report.load_rows(results))
    assert agg["n"].tolist() == [1] and agg["rel"].tolist() == [0.9]


def test_extra_metric_columns_pass_through(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        r = row("HoReN", seed, 10, data="unke", orig_rouge1=0.4 + 0.1 * seed, para_bleu=0.2)
        for metric in report.PAPER_METRICS:
            del r[metric]
        write_run(results, f"s{seed}", [r])
    agg = report.aggregate(report.load_rows(results))
    assert agg["orig_rouge1"].iloc[0] == pytest.approx(0.45)
    assert agg["orig_rouge1_std"].iloc[0] == pytest.approx(math.sqrt(0.005))
    written = report.render(results, tmp_path / "out", BASELINES)  # no Rel/Gen/Loc/OP: cost only
    assert [p.name for p in written["tables"]] == ["unke__qwen25_7b__lifelong_v1-v1__greedy__cost.md",
                                                   "unke__qwen25_7b__lifelong_v1-v1__greedy__cost.tex"]


# ------------------------------------------------------------------------ metric names from rows

PERSONAS = ["rel", "gen", "loc", "personas", "mhop", "op"]


def aggregated(results: Path):
    return report.aggregate(report.load_rows(results))


def panel_titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]  # colour bars have no title


def test_rows_metric_names_become_columns_and_are_bolded(tmp_path):
    results = tmp_path / "results"
    for seed, personas in ((0, 0.8), (1, 0.6)):
        write_run(results, f"horen{seed}", [row("HoReN", seed, 10, metric_names=PERSONAS,
                                                personas=personas, mhop=0.3)])
    write_run(results, "grace", [row("GRACE", 0, 10, metric_names=PERSONAS, personas=0.4, mhop=0.5)])
    out = tmp_path / "reports"
    report.render(results, out, BASELINES)
    header, rows = read_md_table(out / "tables" / f"{STEM}.md")
    assert header == ["Method", "n", "N=10 Rel", "N=10 Gen", "N=10 Loc", "N=10 personas",
                      "N=10 mhop", "N=10 OP"]
    assert rows["HoReN"]["N=10 personas"] == "**0.700 ± 0.141 (no CI)**"  # seeds 0.8, 0.6
    assert rows["GRACE"]["N=10 personas"] == "0.400 (no CI)"
    assert rows["GRACE"]["N=10 mhop"] == "**0.500 (no CI)**" and rows["HoReN"]["N=10 mhop"] == "0.300 ± 0.000 (no CI)"
    tex = (out / "tables" / f"{STEM}.tex").read_text()
    assert r"personas & mhop & OP" in tex and r"\textbf{0.500 (no CI)}" in tex
    agg = aggregated(results)
    assert panel_titles(report.plot_metrics_vs_n(agg)) == ["Rel", "Gen", "Loc", "personas", "mhop"]
    assert (out / "figures" / f"op_vs_n__{STEM}.png").is_file()


def test_rows_without_metric_names_keep_the_paper_columns(tree, tmp_path):
    # New rows with an extra metric sit in the same table as old rows without metric_names.
    write_run(tree / "wise", "seed0", [row("WISE", 0, 10, metric_names=["rel", "gen", "loc", "op", "personas"],
                                           personas=0.9)])
    out = tmp_path / "reports"
    report.render(tree, out, BASELINES)
    header, rows = read_md_table(out / "tables" / f"{STEM}.md")
    paper = ["Rel", "Gen", "Loc", "OP"]
    assert header == ["Method", "n", *(f"N=10 {m}" for m in paper), "N=10 personas",
                      *(f"N=100 {m}" for m in paper), "N=100 personas"]
    assert rows["HoReN"]["N=10 personas"] == "—" and rows["WISE"]["N=10 personas"] == "**0.900 (no CI)**"
    assert rows["HoReN"]["N=100 Rel"].strip("*") == "0.970 ± 0.014 (no CI)"
    assert report.metric_names(report.load_rows(tree / "horen")) == list(report.PAPER_METRICS)


def test_metrics_without_op_get_panels_but_no_op_figure(tmp_path):
    results = tmp_path / "results"
    names = ["orig_bleu", "orig_rouge1"]
    write_run(results, "run", [row("HoReN", 0, N, data="unke", metric_names=names, orig_bleu=12.5,
                                   orig_rouge1=0.25 * N / 10) for N in (10, 20)])
    out = tmp_path / "reports"
    written = report.render(results, out, BASELINES)
    stem = "unke__qwen25_7b__lifelong_v1-v1__greedy"
    header, rows = read_md_table(out / "tables" / f"{stem}.md")
    assert header == ["Method", "n", "N=10 orig_bleu", "N=10 orig_rouge1", "N=20 orig_bleu",
                      "N=20 orig_rouge1"]
    assert rows["HoReN"]["N=20 orig_bleu"] == "**12.500 (no CI)**"
    assert rows["HoReN"]["N=20 orig_rouge1"] == "**0.500 (no CI)**"
    figures = {p.name for p in written["figures"]}
    assert f"metrics_vs_n__{stem}.png" in figures and f"op_vs_n__{stem}.png" not in figures
    fig = report.plot_metrics_vs_n(aggregated(results))
    assert panel_titles(fig) == names
    assert fig.axes[0].get_ylabel() == "orig_bleu" and fig.axes[0].get_ylim()[1] > 12.5  # no 0-1 clip


def test_calibration_panels_follow_the_rows_metrics(tmp_path):
    results = add_calibration(tmp_path / "results")
    calib = aggregated(results)
    assert panel_titles(report.plot_calibration(calib)) == ["Rel", "Gen", "Loc", "OP"]
    write_run(tmp_path / "other", "run", [
        row("HoReN", 0, 10, tag="calibration", metric_names=["gen", "personas"], personas=p,
            hparams={"threshold": t, "pooling_ratio": 0.5}) for t, p in ((0.6, 0.2), (0.7, 0.4))])
    calib = aggregated(tmp_path / "other")
    assert panel_titles(report.plot_calibration(calib)) == ["Gen", "personas"]
    assert report.plot_pareto(calib) is None  # needs loc, gen and op


@pytest.mark.parametrize("names, message", [
    ("rel", "metric_names is not a list of column names"),
    (["rel", "personas"], "metric_names lists personas but the row has no such field"),
    (["N", "rel"], "metric_names lists N, which identify a row"),
])
def test_bad_metric_names_skip_the_row_with_a_warning(tmp_path, names, message):
    write_run(tmp_path, "run", [row("HoReN", 0, 10), row("HoReN", 0, 100, metric_names=names)])
    with pytest.warns(report.ResultsWarning) as caught:
        rows = report.load_rows(tmp_path)
    assert rows["N"].tolist() == [10]
    assert [str(w.message).split(" (")[-1] for w in caught] == [message + ")"]


# ---------------------------------------------------------------------------------------- README

README = """# Project

Intro text.
<!-- table:begin -->
| old | table |
| --- | --- |
<!-- table:end -->

![figure](reports/figures/x.png)
"""


def run_report(results: Path, out: Path, readme: Path, *extra: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return report.main(["--results", str(results), "--out", str(out), "--baselines", str(BASELINES),
                            "--readme", str(readme), *extra])


def test_readme_block_is_op_per_method_and_n(tree, tmp_path):
    write_run(tree / "horen_v2", "seed0", [row("HoReN", 0, 10, 0.5, 0.5, 0.5, 0.5, protocol_version=2)])
    readme = tmp_path / "README.md"
    readme.write_text(README)
    readme.chmod(0o640)
    out = tmp_path / "reports"
    assert run_report(tree, out, readme) == 0
    head, tail = README.split("| old | table |\n| --- | --- |\n")
    text = readme.read_text()
    assert text.startswith(head) and text.endswith(tail)
    block = text[len(head):-len(tail)]
    # One compact table per setting, in table order: rows = methods, columns = N, cells = OP.
    v1 = block.index("**zsre · qwen25_7b · lifelong_v1 (v1) · greedy scoring**\n\n| Method | n | N=10 | N=100 |\n")
    assert v1 < block.index("**zsre · qwen25_7b · lifelong_v1 (v2) · greedy scoring**\n\n| Method | n | N=10 |\n")
    lines = block.splitlines()
    assert "| GRACE | 2 | 0.350 ± 0.071 (no CI) | 0.250 ± 0.071 (no CI) |" in lines  # seeds .40/.30 and .30/.20
    assert "| HoReN | 2 | **0.950 ± 0.014 (no CI)** | **0.910 ± 0.014 (no CI)** |" in lines
    assert "| HoReN (published, T1)* |  |  | 0.97 |" in lines  # the paper's OP at N = 100 only
    assert lines.index("| HoReN (published, T1)* |  |  | 0.97 |") == lines.index(
        "| HoReN | 2 | **0.950 ± 0.014 (no CI)** | **0.910 ± 0.014 (no CI)** |") + 1
    # No per-metric, cost or calibration tables; a pointer to where they are (no --docs: index.md).
    assert "Rel" not in block and "Cost" not in block and "calibration" not in block.split("\n\n", 1)[1]
    assert "[reports/index.md](reports/index.md)" in block
    assert oct(readme.stat().st_mode & 0o777) == oct(0o640)
    assert run_report(tree, out, readme) == 0 and readme.read_text() == text  # idempotent
    assert not list(tmp_path.glob(".README.md.*"))  # no temp file left behind


def test_readme_points_to_docs_results_and_notes_settings_without_op(tree, tmp_path):
    write_run(tree / "unke", "seed0", [row("HoReN", 0, 10, data="unke", metric_names=["orig_bleu"], orig_bleu=0.3)])
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert run_report(tree, tmp_path / "reports", readme, "--docs", str(tmp_path / "docs")) == 0
    text = readme.read_text()
    assert "[docs/results.md](docs/results.md)" in text
    assert "**unke · qwen25_7b · lifelong_v1 (v1) · greedy scoring**\n\nNo OP in these rows" in text
    assert (tmp_path / "docs" / "results.md").is_file()


def test_overview_cells_leave_room_for_an_interval():
    assert report.format_value(0.9, 0.01, 3) == "0.900 ± 0.010"
    assert report.format_value(0.9) == "0.900" and report.format_value(None) == "—"
    assert report.format_value(0.9, 0.01, 3, interval=(0.88, 0.92)) == "0.900 ± 0.010 [0.880, 0.920]"


@pytest.mark.parametrize("marker", ["<!-- table:begin -->", "<!-- table:end -->"])
def test_readme_without_a_marker_exits_2_and_is_unchanged(tree, tmp_path, capsys, marker):
    readme = tmp_path / "README.md"
    readme.write_text(README.replace(marker + "\n", ""))
    before = readme.read_bytes()
    out = tmp_path / "reports"
    assert report.main(["--results", str(tree), "--out", str(out), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editbench.report: ") and err.count("\n") == 1
    assert f"{readme} has no {marker} line" in err
    assert readme.read_bytes() == before and not out.exists()  # fails before writing anything


def test_readme_note_when_there_are_no_main_rows(tmp_path):
    results = add_calibration(tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert run_report(results, tmp_path / "reports", readme) == 0
    head, tail = README.split("| old | table |\n| --- | --- |\n")
    assert readme.read_text() == head + "No results yet: run `make figures` after a run.\n" + tail


def test_make_figures_updates_the_repository_readme_and_docs():
    figures = (REPO / "Makefile").read_text().split("\nfigures:")[1].split("\n\n")[0]
    assert "-m editbench.report" in figures and "--readme README.md" in figures and "--docs docs" in figures
    report.check_readme(REPO / "README.md")  # both markers are there


# ------------------------------------------------------------------------------ docs/results.md

def test_results_doc_has_every_table(tmp_path):
    results = add_calibration(make_tree(tmp_path / "results"))
    write_run(results / "horen_v2", "seed0", [row("HoReN", 0, 10, 0.5, 0.5, 0.5, 0.5, protocol_version=2)])
    out, docs = tmp_path / "reports", tmp_path / "docs"
    with contextlib.redirect_stdout(io.StringIO()):
        assert report.main(["--results", str(results), "--out", str(out), "--baselines", str(BASELINES),
                            "--docs", str(docs)]) == 0
    text = (docs / "results.md").read_text()
    main_tables = [p for p in (out / "tables").glob("*.md")
                   if not p.name.startswith(("calibration__", "paper_table", "paired__")) and "__cost" not in p.name]
    assert len(main_tables) == 2
    for path in main_tables:  # each main table under its heading, every metric per N, as in reports/
        title, body = path.read_text().split("\n\n", 1)
        assert f"### {title[3:]}\n" in text and body in text
        cost_body = (out / "tables" / f"{path.stem}__cost.md").read_text().split("\n\n", 1)[1]
        assert cost_body in text
    calibration = (out / "tables" / f"calibration__{STEM}__HoReN.md").read_text().split("\n\n", 1)
    assert f"### {calibration[0][3:]}\n" in text and calibration[1] in text
    assert "[results-notes.md](results-notes.md)" in text
    assert f"](../reports/figures/op_vs_n__{STEM}.png)" in text and "](../reports/index.md)" in text
    assert text.index("## Main tables") < text.index("## Calibration sweeps")
    assert "HoReN (published, T1)*" in text


def test_results_doc_shows_a_wide_table_one_n_at_a_time(tmp_path):
    names = [f"m{i}" for i in range(report.MAX_COLUMNS // 2)]
    values = {name: 0.5 for name in names}
    write_run(tmp_path / "results", "run", [row("HoReN", 0, N, data="unke", metric_names=names,
                                                **(values | {"m0": 0.25 * N / 10})) for N in (10, 20)])
    write_run(tmp_path / "results", "grace", [row("GRACE", 0, 10, data="unke", metric_names=names, **values)])
    docs = tmp_path / "docs"
    with contextlib.redirect_stdout(io.StringIO()):
        assert report.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out"),
                            "--docs", str(docs)]) == 0
    text = (docs / "results.md").read_text()
    assert "#### N = 10\n\n| Metric | GRACE | HoReN |\n" in text and "#### N = 20\n\n| Metric | HoReN |\n" in text
    n10, n20 = text.split("#### N = 20")
    assert "| m0 | **0.500 (no CI)** | 0.250 (no CI) |" in n10 and "| m0 | **0.500 (no CI)** |" in n20  # bold = best per N
    assert "| n | 1 | 1 |" in n10  # seeds per method


def test_unwritable_docs_folder_exits_2(tree, tmp_path, capsys):
    blocker = tmp_path / "docs"
    blocker.write_text("a file, not a folder")
    assert report.main(["--results", str(tree), "--out", str(tmp_path / "out"), "--docs", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editbench.report: cannot write") and err.count("\n") == 1


# -------------------------------------------------------------------------------- memory labels

def panels(results: Path) -> dict[str, dict[str, list[float]]]:
    """{panel title: {legend label: y values}} of the cost figure of the rows under ``results``."""
    fig = report.plot_cost_vs_n(aggregated(results))
    return {ax.get_title().replace("\n", " "): {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()
                                                if not line.get_label().startswith("_")}
            for ax in fig.axes}


def test_cuda_rows_plot_peak_and_allocated(tmp_path):
    write_run(tmp_path, "run", [row("HoReN", 0, N, mem_device="cuda", peak_mem_gb=2.0,
                                    resident_mem_gb=1.5) for N in (10, 100)])
    assert panels(tmp_path) == {
        "Edit time per edit": {"HoReN": [pytest.approx(10.0), pytest.approx(10.0)]},  # ms
        "CUDA memory: peak allocated over all devices": {"HoReN": [2.0, 2.0]},
        "CUDA memory: allocated at the checkpoint": {"HoReN": [1.5, 1.5]}}


def test_cpu_rows_plot_resident_and_growth_not_peak(tmp_path):
    write_run(tmp_path / "results", "run", [
        row("HoReN", 0, N, mem_device="cpu", peak_mem_gb=9.0, resident_mem_gb=1.0 + N / 100,
            mem_growth_gb=N / 100) for N in (10, 100)])
    got = panels(tmp_path / "results")
    assert list(got) == ["Edit time per edit", "CPU memory: resident set",
                         "CPU memory: growth over the unedited model"]
    assert got["CPU memory: resident set"] == {"HoReN": [1.1, 2.0]}
    assert got["CPU memory: growth over the unedited model"] == {"HoReN": [0.1, 1.0]}
    out = tmp_path / "reports"
    report.render(tmp_path / "results", out, BASELINES)
    header, rows = read_md_table(out / "tables" / f"{STEM}__cost.md")
    assert header[5:9] == ["mem_device", "peak mem (GB)", "resident mem (GB)", "mem growth (GB)"]
    assert [rows["HoReN"][c] for c in header[5:9]] == ["cpu", "9.00", "2.00", "1.00"]  # last row: N=100


@pytest.mark.parametrize("devices, title_part, cost_cell", [
    ((None, None), "device unknown: rows without mem_device", "unknown"),
    (("cpu", "cuda"), "mixed devices: cpu/cuda", "cpu/cuda"),
    (("cuda", None), "mixed devices: cuda/unknown", "cuda/unknown"),
])
def test_unknown_or_mixed_devices_get_a_neutral_label(tmp_path, devices, title_part, cost_cell):
    for seed, device in enumerate(devices):  # two seeds of one setting
        extra = {"mem_device": device} if device else {}
        write_run(tmp_path, f"s{seed}", [row("HoReN", seed, 10, **extra)])
    got = panels(tmp_path)
    assert got[f"peak memory ({title_part})"] == {"HoReN": [pytest.approx(1.05)]}
    assert got[f"resident memory ({title_part})"] == {"HoReN": [pytest.approx(0.51)]}
    table = report.cost_table(aggregated(tmp_path), "cost", "Cost")
    assert table.columns[5] == "mem_device" and table.rows[0][5] == cost_cell


def test_cost_plot_leaves_the_unedited_model_out_and_says_so(tmp_path):
    write_run(tmp_path, "horen", [row("HoReN", 0, N, mem_device="cuda") for N in (10, 100)])
    write_run(tmp_path, "unedited", [row("Unedited", 0, N, mem_device="cuda", edit_s_mean=1e-6, hparams={})
                                     for N in (10, 100)])
    fig = report.plot_cost_vs_n(aggregated(tmp_path), "Cost — x")
    labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    assert "HoReN" in labels and "Unedited" not in labels
    assert "Unedited left out (no edits)" in figure_title(fig)
    assert fig.axes[0].get_yscale() == "linear"  # 1e-3 ms would have forced a log axis
    only_unedited = tmp_path / "u"
    write_run(only_unedited, "run", [row("Unedited", 0, 10, hparams={})])
    assert report.plot_cost_vs_n(aggregated(only_unedited)) is None


# ----------------------------------------------------------------------------------------- wandb

class FakeRun:
    def __init__(self):
        self.calls = []

    def log(self, payload, **kwargs):
        self.calls.append(payload)


def test_wandb_is_not_imported_with_the_report():
    code = "import sys, editbench.report; print('wandb' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_log_to_wandb_with_a_fake_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb = pytest.importorskip("wandb")
    results = tmp_path / "results"
    write_run(results, "run", [row("HoReN", 0, 10), row("HoReN", 0, 100)])
    run = FakeRun()
    written = report.log_to_wandb(run, results, tmp_path / "out", BASELINES)
    assert len(run.calls) == 1
    payload = run.calls[0]
    table = payload[f"report/tables/{STEM}"]
    assert isinstance(table, wandb.Table)
    assert table.columns[:3] == ["Method", "n", "N=10 Rel"]
    assert isinstance(payload[f"report/tables/{STEM}__cost"], wandb.Table)
    pngs = [p for p in written["figures"] if p.suffix == ".png"]
    assert pngs and all(isinstance(payload[f"report/figures/{p.stem}"], wandb.Image) for p in pngs)
    # A frame from load_rows works too.
    report.log_to_wandb(run, report.load_rows(results), tmp_path / "out2", BASELINES)
    assert run.calls[1].keys() == payload.keys()


# -------------------------------------------------------------------------------------- notebook

def test_notebook_executes_headlessly(tree, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel", reason="the python3 kernel needs ipykernel in this interpreter")
    monkeypatch.setenv("EDITBENCH_RESULTS", str(tree))
    monkeypatch.setenv("EDITBENCH_BASELINES", str(BASELINES))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = REPO / "notebooks" / "results.ipynb"
    nb = nbformat.read(path, as_version=4)
    # kernel "python3" resolves to this interpreter (jupyter_client maps argv "python" to sys.executable).
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("HoReN" in o.get("data", {}).get("text/plain", "") for o in outputs)


def test_chat_template_rows_get_their_own_table(tmp_path):
    """The same method with and without the chat template sees other inputs: never one table row."""
    results = tmp_path / "results"
    write_run(results, "raw", [row("FT-L", 0, 10, 0.7, 0.5, 0.4, 0.5)])
    write_run(results, "chat", [row("FT-L", 0, 10, 0.4, 0.3, 0.1, 0.2, chat_template=True)])
    report.render(results, tmp_path / "out", tmp_path / "none")
    tables = sorted(p.name for p in (tmp_path / "out" / "tables").glob("*.md") if "cost" not in p.name
                    and not p.name.startswith("paired__"))
    assert tables == [f"{STEM}.md", f"{STEM}__chat.md"]
    raw, chat = (tmp_path / "out" / "tables" / t for t in tables)
    assert "(chat template)" in chat.read_text() and "(chat template)" not in raw.read_text()
    assert read_md_table(chat)[1]["FT-L"]["N=10 Rel"].strip("*") == "0.400 (no CI)"
    assert read_md_table(raw)[1]["FT-L"]["N=10 Rel"].strip("*") == "0.700 (no CI)"


def test_calibration_sweeps_of_any_hyper_parameters(tmp_path):
    """The calibration table, heat-map and Pareto labels follow whatever was swept (WISE's list-valued
    act_margin x act_ratio here), never a fixed pair of names."""
    rows = []
    for margin in ([5, 20, 10], [5, 40, 20]):
        for ratio in (0.6, 0.88):
            gen, loc = round(0.3 + ratio / 2, 3), round(1.0 - ratio / 4 - margin[1] / 200, 3)
            rows.append(row("WISE", 0, 30, 1.0, gen, loc, round((gen + loc) / 2, 3), tag="calibration",
                            hparams={"lr": 1.0, "act_margin": margin, "act_ratio": ratio}))
    for i, r in enumerate(rows):
        write_run(tmp_path / "results" / "calibration", f"s{i}", [r])
    calib = aggregated(tmp_path / "results")
    table = report.calibration_table(calib, "calibration__x", "WISE calibration")
    assert table.columns == ["act_margin", "act_ratio", "N", "Rel", "Gen", "Loc", "OP"]
    assert [r[:2] for r in table.rows] == [["[5,20,10]", "0.6"], ["[5,20,10]", "0.88"],
                                          ["[5,40,20]", "0.6"], ["[5,40,20]", "0.88"]]
    assert all(r[-1].strip("*").endswith(" (no CI)") for r in table.rows)  # no records/ in this tree
    ops = [parse_cell(r[-1])[0] for r in table.rows]
    assert {i for i, _ in table.bold} == {ops.index(max(ops))}
    fig = report.plot_calibration(calib)
    assert fig.axes[0].get_ylabel() in ("act_margin", "act_ratio") and fig.axes[0].get_xlabel() in ("act_margin", "act_ratio")
    assert report.plot_pareto(calib) is not None
    # one swept value: a single column, and the unchanged hyper-parameters are not columns
    one = aggregated(tmp_path / "results").pipe(lambda f: f[f["hparams_key"].str.contains('"act_margin": \\[5, 20, 10\\]')])
    table = report.calibration_table(one, "calibration__y", "WISE calibration")
    assert table is not None and table.columns[:2] == ["act_ratio", "N"]
    assert report.plot_calibration(one) is not None


# ------------------------------------------------------------------------------- how plots look

def variants_tree(root: Path) -> Path:
    """HoReN and two variants, GRACE and GRACE+Norm, two WISE settings (one stopped at N = 100),
    the unedited model; N = 10, 100, 1000 on qwen25_7b (so the paper's HoReN / GRACE points show)."""
    for method in ("HoReN", "HoReN-LoRA", "HoReN w/o norm", "GRACE", "GRACE+Norm", "Unedited"):
        write_run(root / method, "s0", [row(method, 0, N, 0.9, 0.8, 0.7, 0.8) for N in (10, 100, 1000)])
    write_run(root / "wise_a", "s0", [row("WISE", 0, N, op=0.3, hparams={"act_ratio": 0.88}) for N in (10, 100, 1000)])
    write_run(root / "wise_b", "s0", [row("WISE", 0, N, op=0.2, hparams={"act_ratio": 0.75}) for N in (10, 100)])
    return root


def test_a_family_shares_a_colour_and_each_variant_has_its_own_dash_and_marker(tmp_path):
    agg = aggregated(variants_tree(tmp_path))
    fig = report.plot_op_vs_n(agg, report.load_baselines(BASELINES), "title")
    labels = [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert all(label.endswith((" (no CI)", " (published)")) for label in labels)  # no records/ in this tree
    lines = {label.removesuffix(" (no CI)"): line for label, line in zip(labels, (
        line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")))}
    style = {label: (line.get_color(), line.get_linestyle(), line.get_marker()) for label, line in lines.items()}
    red, blue = report.METHOD_COLORS["HoReN"], report.METHOD_COLORS["GRACE"]
    horen = [style[m] for m in ("HoReN", "HoReN-LoRA", "HoReN w/o norm")]
    assert {colour for colour, _, _ in horen} == {red} and len(set(horen)) == 3
    assert style["HoReN"][1:] == ("-", "o")  # the family's own method: solid, circles
    assert {style["GRACE"][0], style["GRACE+Norm"][0]} == {blue} and style["GRACE"] != style["GRACE+Norm"]
    wise = [style[label] for label in lines if label.startswith("WISE [")]
    assert len(wise) == 2 and wise[0][0] == wise[1][0] and wise[0][1:] != wise[1][1:]
    # Published numbers: the method's colour and marker, dotted and hollow.
    published = lines["HoReN (published)"]
    assert (published.get_color(), published.get_linestyle(), published.get_marker()) == (red, ":", "o")
    assert published.get_markerfacecolor() == "none"
    # The legend shows every line with its dash pattern, outside the data area.
    (legend,) = fig.legends + [leg for sub in fig.subfigs for leg in sub.legends]
    assert [t.get_text() for t in legend.get_texts()] == labels
    assert legend.handlelength >= 3
    # A run that stopped early ends at its last checkpoint, which has a marker.
    stopped = lines["WISE [act_ratio=0.75]"]
    assert list(stopped.get_xdata()) == [10, 100] and stopped.get_marker() not in ("", "None", None)
    assert fig.axes[0].get_xscale() == "log"
    assert layout_problems(fig) == []


def test_family_and_colour_of_unknown_methods():
    assert report.method_family("HoReN-LoRA") == "HoReN" and report.method_family("GRACE+Norm") == "GRACE"
    assert report.method_family("HoReN-XL") == "HoReN" and report.method_family("FT-L") == "FT-L"
    assert report.method_color("HoReN-XL") == report.METHOD_COLORS["HoReN"]
    assert report.method_family("MyNewEditor") == "MyNewEditor"


def test_every_figure_fits_its_canvas(tmp_path):
    """Long titles and legend labels (hyper-parameter variants) are never clipped, and legends
    never cover a panel: checked on every kind of figure."""
    agg = aggregated(variants_tree(tmp_path / "main"))
    long = " · ".join(["a very long setting title that would run past the edge of the figure"] * 3)
    baselines = report.load_baselines(BASELINES)
    figures = {"op": report.plot_op_vs_n(agg, baselines, long),
               "metrics": report.plot_metrics_vs_n(agg, baselines, long),
               "cost": report.plot_cost_vs_n(agg, long)}
    calib = aggregated(add_calibration(tmp_path / "calib"))
    figures |= {"calibration": report.plot_calibration(calib, long), "pareto": report.plot_pareto(calib, long)}
    for name, fig in figures.items():
        assert layout_problems(fig) == [], name


def test_calibration_plots_state_n(tmp_path):
    calib = aggregated(add_calibration(tmp_path / "results"))
    for fig in (report.plot_calibration(calib, "setting"), report.plot_pareto(calib, "setting")):
        assert figure_title(fig).startswith("HoReN calibration at N = 10") and "setting" in figure_title(fig)


# ------------------------------------------------------------------------------ package structure

def test_report_package_has_no_import_cycle_and_no_private_cross_imports():
    """Each module of editbench.report imports only public names of its siblings (never from the
    package itself, which re-exports them), and the sibling imports form no cycle."""
    import ast

    package = Path(report.__file__).parent
    modules = {path.stem: ast.parse(path.read_text()) for path in package.glob("*.py")}
    assert {"rows", "baselines", "tables", "paper", "figures", "writer", "cli", "__main__"} <= set(modules)
    edges: dict[str, set[str]] = {}
    for name, tree in modules.items():
        if name == "__init__":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = ("editbench.report." + node.module if node.level == 1 and node.module
                          else "editbench.report" if node.level == 1 else node.module or "")
                if not source.startswith("editbench.report"):
                    continue
                sibling = source.removeprefix("editbench.report").lstrip(".")
                assert sibling and sibling in modules, f"{name} imports from the package itself: {source}"
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{name} imports private {private} from {sibling}"
                edges.setdefault(name, set()).add(sibling)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("editbench.report") for a in node.names), name
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert not (node.value.id in modules and node.attr.startswith("_")), (name, node.attr)
    order = []

    def visit(name, path=()):
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name in order:
            return
        for sibling in sorted(edges.get(name, ())):
            visit(sibling, path + (name,))
        order.append(name)

    for name in sorted(edges):
        visit(name)
    assert not (Path(report.__file__).parents[1] / "report.py").exists()
    assert not (Path(report.__file__).parents[1] / "paper_tables.py").exists()


def test_cells_past_a_shorter_stream_say_not_run_and_a_running_stream_stays_dash(tmp_path):
    """GRACE asked for 100 edits (its cell at N = 1,000 is "n/r"); HoReN asked for 10,000 and has
    reached 100 so far (its cell at N = 1,000 is "—", not measured yet)."""
    results = tmp_path / "results"
    write_run(results, "horen", [row("HoReN", 0, N, n_edits=10_000) for N in (10, 100)], complete=False)
    write_run(results, "grace", [row("GRACE", 0, N, op=0.2) for N in (10, 100)])
    write_run(results, "ft", [row("FT-L", 0, N, op=0.3, n_edits=1000) for N in (10, 100, 1000)])
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert run_report(results, tmp_path / "reports", readme, "--docs", str(tmp_path / "docs")) == 0
    text = readme.read_text()
    grace = next(line for line in text.splitlines() if line.startswith("| GRACE |"))
    horen = next(line for line in text.splitlines() if line.startswith("| HoReN |"))
    assert grace.split("|")[-2].strip() == "n/r" and "n/r = not run" in text
    assert horen.split("|")[-2].strip() == "—"
    docs = (tmp_path / "docs" / "results.md").read_text()
    assert "n/r = not run: every run of that row asked for a shorter stream" in docs


def test_routing_diagnostics_get_a_figure_only_where_rows_have_them(tmp_path):
    results = tmp_path / "results"
    routed = {"route_gen_own": 0.6, "route_gen_wrong": 0.1, "route_gen_none": 0.3, "route_loc_retrieved": 0.05,
              "route_gen_disp": 0.2, "route_loc_disp": 0.05, "route_keys_nn_median": 0.7, "route_keys_nn_p01": 0.4}
    write_run(results, "horen", [row("HoReN", 0, N, **routed) for N in (10, 100)])
    write_run(results, "ft", [row("FT-L", 0, N) for N in (10, 100)])
    out = tmp_path / "reports"
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert run_report(results, out, readme) == 0
    figures = sorted(p.name for p in (out / "figures").glob("routing_vs_n__*.png"))
    assert figures == ["routing_vs_n__zsre__qwen25_7b__lifelong_v1-v1__greedy.png"]
    write_run(results, "horen", [row("HoReN", 0, N) for N in (10, 100)])  # no diagnostics at all
    out2 = tmp_path / "reports2"
    assert run_report(results, out2, readme) == 0 and not list((out2 / "figures").glob("routing_vs_n__*"))


def test_scoring_modes_side_by_side_with_ranks(tmp_path):
    """Two editors under greedy and free scoring: one table, rows method x scoring, the OP rank
    within each scoring (the ranking flips under free generation here)."""
    results = tmp_path / "results"
    write_run(results, "horen_g", [row("HoReN", 0, N, op=0.9) for N in (10, 100)])
    write_run(results, "grace_g", [row("GRACE", 0, N, op=0.3) for N in (10, 100)])
    write_run(results, "horen_f", [row("HoReN", 0, N, op=0.2, scoring="free", rel_prefix=0.5, gen_prefix=0.4,
                                       metric_names=["rel", "rel_prefix", "gen", "gen_prefix", "loc", "op"])
                                   for N in (10, 100)])
    write_run(results, "grace_f", [row("GRACE", 0, N, op=0.25, scoring="free", rel_prefix=0.6, gen_prefix=0.1,
                                       metric_names=["rel", "rel_prefix", "gen", "gen_prefix", "loc", "op"])
                                   for N in (10, 100)])
    out = tmp_path / "reports"
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert run_report(results, out, readme, "--docs", str(tmp_path / "docs")) == 0
    text = (out / "tables" / "scorings__zsre__qwen25_7b__v1.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| GRACE") or line.startswith("| HoReN")]
    assert [line.split(" | ")[1] for line in lines] == ["greedy (fixed length)", "free generation"] * 2
    grace_free, horen_greedy = lines[1], lines[2]
    assert grace_free.rstrip(" |").endswith("1/2") and horen_greedy.rstrip(" |").endswith("1/2")
    assert "| 0.600 |" in grace_free  # Rel by prefix match, free scoring only
    assert "## Scoring modes side by side" in (tmp_path / "docs" / "results.md").read_text()
