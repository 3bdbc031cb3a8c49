"""editbench.report intervals and paired comparisons: bootstrap over edit cases from records/,
the paired bootstrap and the exact sign test; and how the report shows them."""

from __future__ import annotations

import contextlib
import io
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from editbench import report
from editbench.metrics import OP

sys.path.insert(0, str(Path(__file__).parent))  # works with or without tests/__init__.py
from report_fixtures import row, write_records, write_recorded_run, write_run  # noqa: E402

STEM = "zsre__qwen25_7b__lifelong_v1-v1__greedy"
NAMES = ["rel", "gen", "loc", "op"]


def scores(cases: dict[str, dict[str, list]]) -> report.CaseScores:
    return report.case_scores({"case": case, "set": name, "i": i, "score": score}
                              for case, sets in cases.items() for name, probes in sets.items()
                              for i, score in enumerate(probes))


def zsre_cases(rel, gen, loc, prefix="c") -> dict[str, dict[str, list]]:
    """One probe per set per case, as ZsRE has; case ids sort in the given order."""
    return {f"{prefix}{i:05d}": {"rel": [r], "gen": [g], "loc": [l]} for i, (r, g, l) in enumerate(zip(rel, gen, loc))}


def read_md_table(path: Path) -> dict[str, dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    return {cells[0]: dict(zip(header, cells)) for cells in map(split, lines[2:])}


def render(results: Path, tmp_path: Path) -> Path:
    out = tmp_path / "reports"
    with contextlib.redirect_stdout(io.StringIO()):
        assert report.main(["--results", str(results), "--out", str(out), "--baselines", str(tmp_path / "none"),
                            "--docs", str(tmp_path / "docs")]) == 0
    return out


# ------------------------------------------------------------------------------- the bootstrap

def test_identical_case_scores_give_a_zero_width_interval():
    result = report.bootstrap([scores(zsre_cases([0.8] * 40, [0.5] * 40, [1.0] * 40))], NAMES)
    for name, value in (("rel", 0.8), ("gen", 0.5), ("loc", 1.0), ("op", OP({"rel": 0.8, "gen": 0.5, "loc": 1.0}))):
        interval = result.interval(name)
        assert result.point[name] == pytest.approx(value)
        assert interval.low == pytest.approx(value, abs=1e-12) and interval.high == pytest.approx(value, abs=1e-12)
        assert interval.half_width == pytest.approx(0.0, abs=1e-12)


def test_the_bootstrap_distribution_of_three_cases_matches_its_enumeration():
    """Cases scoring 0, 0 and 1: a resample's mean is k/3 with k ~ Binomial(3, 1/3), i.e. 0, 1/3,
    2/3, 1 with probabilities 8, 12, 6, 1 in 27 -- so the 95 % percentile interval is [0, 1]."""
    resamples = 20_000
    result = report.bootstrap([scores(zsre_cases([0, 0, 1], [1, 1, 1], [1, 1, 1]))], NAMES, resamples=resamples)
    draws = result.draws["rel"]
    assert result.point["rel"] == pytest.approx(1 / 3)
    for k, ways in enumerate((8, 12, 6, 1)):
        p = ways / 27
        frequency = np.mean(np.isclose(draws, k / 3))
        assert frequency == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / resamples)), k
    interval = result.interval("rel")
    assert (interval.low, interval.high) == (0.0, pytest.approx(1.0))


def test_a_drawn_case_brings_all_its_probes():
    # Each case scores the same on rel and gen: whole cases drawn -> equal means in every resample.
    same = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    result = report.bootstrap([scores(zsre_cases(same, same, [1] * len(same)))], NAMES, resamples=500)
    assert np.array_equal(result.draws["rel"], result.draws["gen"])
    # A case's probes of one set are averaged first, then cases: case a = mean(1, 0) = 0.5, case b
    # = 1 -> Rel = 0.75 (not the probe mean 2/3), and a resample's Rel is one of 0.5, 0.75, 1.
    two = scores({"a": {"rel": [1, 0], "gen": [1], "loc": [1]}, "b": {"rel": [1], "gen": [1], "loc": [1]}})
    result = report.bootstrap([two], NAMES, resamples=2000)
    assert result.point["rel"] == pytest.approx(0.75)
    assert set(np.round(result.draws["rel"], 12)) == {0.5, 0.75, 1.0}


def test_a_set_only_some_cases_have_is_averaged_over_those_cases():
    cases = {f"c{i}": {"rel": [1.0], "gen": [1.0], "loc": [1.0]} for i in range(10)}
    cases["c0"]["mhop"] = [1.0]
    cases["c1"]["mhop"] = [0.0]
    result = report.bootstrap([scores(cases)], ["rel", "gen", "loc", "mhop", "op"], resamples=3000)
    assert result.point["mhop"] == pytest.approx(0.5)
    drawn = result.draws["mhop"][~np.isnan(result.draws["mhop"])]
    # Over the drawn cases that have it (c0 and c1), not over all drawn cases (which would give <= 0.3).
    assert drawn.mean() == pytest.approx(0.5, abs=0.03) and drawn.max() == 1.0
    assert np.isnan(result.draws["mhop"]).mean() == pytest.approx(0.8 ** 10, abs=0.03)  # neither drawn: left out
    assert result.interval("mhop") == report.Interval(0.0, 1.0)


def test_op_is_recomputed_from_each_resamples_means():
    # Per-case OP is 0 for every case (each misses one part), but OP of the means is not.
    cases = zsre_cases([1, 0, 1, 0, 1, 1], [0, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1])
    result = report.bootstrap([scores(cases)], NAMES, resamples=1000)
    assert result.point["op"] == pytest.approx(OP({"rel": 4 / 6, "gen": 3 / 6, "loc": 1.0})) and result.point["op"] > 0
    for b in range(0, 1000, 37):
        means = {name: result.draws[name][b] for name in ("rel", "gen", "loc")}
        assert result.draws["op"][b] == OP(means)
    interval = result.interval("op")
    assert interval.low > 0 and interval.low < result.point["op"] < interval.high


def test_the_bootstrap_is_seeded():
    rng = random.Random(0)
    cases = zsre_cases(*([rng.random() for _ in range(30)] for _ in range(3)))
    first = report.bootstrap([scores(cases)], NAMES)
    again = report.bootstrap([scores(dict(reversed(list(cases.items()))))], NAMES)  # record order is irrelevant
    other = report.bootstrap([scores(cases)], NAMES, seed=1)
    assert len(first.draws["op"]) == report.RESAMPLES >= 1000
    for name in NAMES:
        assert np.array_equal(first.draws[name], again.draws[name])
        assert not np.array_equal(first.draws[name], other.draws[name])


def test_ten_thousand_cases_give_the_binomial_width():
    """Rel of 10,000 cases half 1 and half 0: the 95 % interval is ±1.96 · sqrt(0.25 / 10,000) ≈ ±0.0098."""
    n = 10_000
    rel = [1.0] * (n // 2) + [0.0] * (n // 2)
    result = report.bootstrap([scores(zsre_cases(rel, rel[::-1], [1.0] * n))], NAMES)
    interval = result.interval("rel")
    assert result.n_cases == n
    assert interval.half_width == pytest.approx(1.96 * math.sqrt(0.25 / n), rel=0.1)
    assert interval.low < 0.5 < interval.high


def test_several_seeds_are_resampled_each_on_its_own_and_averaged():
    a = scores(zsre_cases([1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]))
    b = scores(zsre_cases([0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 1]))
    both = report.bootstrap([a, b], NAMES, resamples=500)
    alone = [report.bootstrap([s], NAMES, resamples=500) for s in (a, b)]
    assert both.point["rel"] == pytest.approx((0.75 + 0.25) / 2)
    assert both.point["op"] == pytest.approx((alone[0].point["op"] + alone[1].point["op"]) / 2)
    # The first seed's run draws as a lone run does; the second on a stream of its own.
    b_second = report.bootstrap([b, b], NAMES, resamples=500).draws["rel"] * 2 - alone[1].draws["rel"]
    assert np.allclose(both.draws["rel"], (alone[0].draws["rel"] + b_second) / 2)
    assert not np.allclose(b_second, alone[1].draws["rel"])


# ----------------------------------------------------------------------------- the sign test

@pytest.mark.parametrize("differences, p", [
    ([1] * 9 + [-1], 2 * (1 + 10) / 2 ** 10),           # 2 * P(X <= 1), X ~ Bin(10, 1/2) = 22 / 1024
    ([-0.5] * 9 + [0.2] + [0.0] * 5, 22 / 1024),         # ties are dropped; the sign is what counts
    ([1] * 10, 2 / 2 ** 10),
    ([1] * 5 + [-1] * 5, 1.0),
    ([1, 1, 1], 0.25),                                    # 2 * (1/2)^3
    ([0.0, 0.0], 1.0),                                    # nothing but ties: no evidence
])
def test_sign_test_p_by_hand(differences, p):
    result = report.sign_test(differences)
    assert result.p == pytest.approx(p, rel=1e-12)
    assert result.positive + result.negative + result.ties == len(differences)


def test_sign_test_is_exact_for_thousands_of_cases():
    result = report.sign_test([1.0] * 2600 + [-1.0] * 2400)
    tail = sum(math.comb(5000, i) for i in range(2401))
    assert result.p == pytest.approx(2 * tail / 2 ** 5000, rel=1e-12)


# ------------------------------------------------------------------------ paired comparisons

def test_a_method_against_itself_differs_by_exactly_zero():
    a = scores(zsre_cases([1, 0, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 0.5, 1, 1]))
    paired = report.paired_bootstrap([(a, a)], NAMES, resamples=500)
    for name in NAMES:
        interval = paired.difference.interval(name)
        assert paired.difference.point[name] == 0.0 and (interval.low, interval.high) == (0.0, 0.0)
        assert not paired.significant(name)
    assert paired.sign["rel"] == report.SignTest(0, 0, 5, 1.0) and "op" not in paired.sign


def test_the_paired_bootstrap_draws_the_same_cases_for_both_methods():
    rng = random.Random(1)
    a_cases = zsre_cases(*([rng.random() for _ in range(50)] for _ in range(3)))
    b_cases = zsre_cases(*([rng.random() for _ in range(50)] for _ in range(3)))
    b_cases["zz-only-in-b"] = {"rel": [0.0], "gen": [0.0], "loc": [0.0]}  # not a common case: left out
    paired = report.paired_bootstrap([(scores(a_cases), scores(b_cases))], NAMES, resamples=800)
    del b_cases["zz-only-in-b"]
    alone = [report.bootstrap([scores(c)], NAMES, resamples=800) for c in (a_cases, b_cases)]
    assert paired.n_cases == 50
    for name in NAMES:  # same seed and number of cases -> the same draws as each run alone
        assert np.allclose(paired.difference.draws[name], alone[0].draws[name] - alone[1].draws[name])
        assert paired.difference.point[name] == pytest.approx(alone[0].point[name] - alone[1].point[name])


def test_paired_differences_are_significant_only_when_interval_and_sign_test_agree():
    # 20 cases, A better on every one: interval above 0 and p = 2 / 2^20.
    a = scores(zsre_cases([1] * 20, [1] * 20, [1] * 20))
    b = scores(zsre_cases([0] * 20, [1] * 20, [1] * 20))
    paired = report.paired_bootstrap([(a, b)], NAMES, resamples=1000)
    assert paired.sign["rel"].p == pytest.approx(2 / 2 ** 20)
    assert paired.significant("rel") and paired.significant("op") and not paired.significant("gen")
    # 10 cases, A better on 3 and tied on 7: the percentile interval excludes 0, but the exact
    # test (p = 2 / 2^3 = 0.25) cannot tell: not significant.
    a = scores(zsre_cases([1] * 10, [1] * 10, [1] * 10))
    b = scores(zsre_cases([0] * 3 + [1] * 7, [1] * 10, [1] * 10))
    paired = report.paired_bootstrap([(a, b)], NAMES, resamples=2000)
    assert paired.difference.interval("rel").excludes(0.0) and paired.sign["rel"].p == 0.25
    assert not paired.significant("rel")


# ----------------------------------------------------------------------------- in the report

def recorded_tree(root: Path) -> Path:
    """ZsRE-like runs on the same 60 cases at N = 10 (first 10) and 60: HoReN and GRACE+Norm
    with records/, GRACE without, HoReN-LoRA with records but another stream."""
    rng = random.Random(7)
    probes = {method: [(float(rng.random() < p_rel), float(rng.random() < p_gen), float(rng.random() < 0.97))
                       for _ in range(60)] for method, p_rel, p_gen in
              (("HoReN", 0.95, 0.8), ("GRACE+Norm", 0.95, 0.5), ("HoReN-LoRA", 0.9, 0.7))}

    def by_n(method):
        return {N: zsre_cases(*zip(*probes[method][:N])) for N in (10, 60)}

    write_recorded_run(root, "horen", "HoReN", by_n("HoReN"),
                       hparams={"normalize": True, "value_adaptor": "vector"}, data_info={"order_seed": 0, "skip": 0})
    write_recorded_run(root, "grace_norm", "GRACE+Norm", by_n("GRACE+Norm"), hparams={"normalize": True},
                       data_info={"order_seed": 0, "skip": 0})
    write_recorded_run(root, "lora", "HoReN-LoRA", by_n("HoReN-LoRA"), hparams={"value_adaptor": "lora"},
                       data_info={"order_seed": 1, "skip": 0})
    write_run(root / "grace", "s0", [row("GRACE", 0, N, 0.9, 0.1, 1.0, 0.45, data_info={"order_seed": 0, "skip": 0})
                                     for N in (10, 60)])
    return root


def test_every_cell_shows_its_interval_or_no_ci(tmp_path):
    results = recorded_tree(tmp_path / "results")
    out = render(results, tmp_path)
    rows = read_md_table(out / "tables" / f"{STEM}.md")
    expected = report.bootstrap([report.RecordStore().get(results / "horen", 60)], NAMES).interval("op")
    assert rows["HoReN"]["N=60 OP"].strip("*").endswith(f" (±{expected.half_width:.3f})")
    assert rows["GRACE"]["N=60 OP"].strip("*") == "0.450 (no CI)"
    bounds = read_md_table(out / "tables" / f"{STEM}__ci.md")
    # long table: one row per (method, N); the first key wins in read_md_table, so look at the text
    text = (out / "tables" / f"{STEM}__ci.md").read_text()
    assert "| HoReN | 60 | 1 | 60 | " in text and f"[{expected.low:.3f}, {expected.high:.3f}] |" in text
    assert bounds["GRACE"]["OP"] == "no CI"
    docs = (tmp_path / "docs" / "results.md").read_text()
    assert "(±" in docs and "(no CI)" in docs and f"{STEM}__ci.md" in docs


def test_records_that_do_not_reproduce_the_row_give_no_interval(tmp_path):
    results = tmp_path / "results"
    run = write_run(results, "horen", [row("HoReN", 0, 10, 0.9, 0.9, 1.0, OP({"rel": 0.9, "gen": 0.9, "loc": 1.0}))])
    write_records(run, 10, zsre_cases([1.0] * 10, [0.9] * 10, [1.0] * 10))  # rel 1.0, not 0.9
    agg = report.aggregate(report.load_rows(results))
    with pytest.warns(report.ResultsWarning) as caught:
        agg = report.add_intervals(agg, report.RecordStore())
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        "records at N=10 give rel = 1.000000, metrics.jsonl 0.900000; no interval",
        "records at N=10 give op = 0.965489, metrics.jsonl 0.932170; no interval"]
    assert np.isnan(agg["rel_ci_low"].iloc[0]) and np.isnan(agg["op_ci_low"].iloc[0])
    assert agg["gen_ci_low"].iloc[0] == pytest.approx(0.9)  # gen's records agree: zero-width interval


def test_paired_comparisons_are_the_declared_list_on_common_cases(tmp_path):
    results = recorded_tree(tmp_path / "results")
    out = render(results, tmp_path)
    path = out / "tables" / f"paired__{STEM}.md"
    text = path.read_text()
    store = report.RecordStore()
    expected = report.paired_bootstrap([(store.get(results / "horen", 60), store.get(results / "grace_norm", 60))],
                                       NAMES)
    gen = expected.difference.interval("gen")
    cell = f"{expected.difference.point['gen']:+.3f} [{gen.low:+.3f}, {gen.high:+.3f}] "
    line = next(line for line in text.splitlines() if line.startswith("|  | Δ Gen |"))
    assert "| HoReN vs GRACE+Norm | cases | 10 | 60 |" in text and cell in line
    assert line.endswith("(sig.)** |") == bool(expected.significant("gen"))
    assert ("p<0.001" if expected.sign["gen"].p < 0.001 else f"p={expected.sign['gen'].p:.3f}") in line
    # GRACE kept no records; HoReN-LoRA edited another stream: listed, not computed.
    assert "HoReN vs GRACE (no records/ for GRACE)" in text
    assert "HoReN vs HoReN-LoRA (different (or unknown) edit streams)" in text
    docs = (tmp_path / "docs" / "results.md").read_text()
    assert "## Paired comparisons" in docs and "| HoReN vs GRACE+Norm | cases | 10 | 60 |" in docs


def test_sides_match_by_method_and_config():
    assert [c.b.method for c in report.COMPARISONS][:2] == ["GRACE+Norm", "FT-L"]
    lora = next(c for c in report.COMPARISONS if c.b.method == "HoReN-LoRA")
    agg_row = {"method": "HoReN-LoRA", "hparams_key": '{"value_adaptor": "vector"}'}
    assert not lora.b.matches(agg_row)
    assert lora.b.matches({**agg_row, "hparams_key": '{"lora_lr": 0.01, "value_adaptor": "lora"}'})
    assert lora.a.matches({"method": "HoReN", "hparams_key": '{"value_adaptor": "vector"}'})


def test_n_plots_shade_the_interval_and_mark_runs_without_one(tmp_path):
    results = recorded_tree(tmp_path / "results")
    agg = report.add_intervals(report.aggregate(report.load_rows(results)), report.RecordStore())
    fig = report.plot_op_vs_n(agg, None, "title")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "HoReN" in labels and "GRACE (no CI)" in labels
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3  # HoReN, GRACE+Norm, HoReN-LoRA: not GRACE
    horen = agg[(agg["method"] == "HoReN") & (agg["N"] == 60)].iloc[0]
    ys = np.concatenate([path.vertices[:, 1] for band in bands for path in band.get_paths()])
    assert np.isclose(ys, horen["op_ci_low"]).any() and np.isclose(ys, horen["op_ci_high"]).any()
    title = " ".join(f.get_suptitle() for f in [fig, *fig.subfigs] if f.get_suptitle())
    assert "shaded: 95% bootstrap interval over edit cases" in title and "(no CI): the run kept no records/" in title
