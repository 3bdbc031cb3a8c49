"""The 50,000-edit rehearsal's parts: the synthetic fact generator (`data=synthetic`) and the growth
checks of `make stress` (`editbench.report.stress`). The rehearsal itself is `make stress`, not CI."""
from __future__ import annotations

import pytest

from editbench.data.synthetic import MAX_SIZE, SyntheticFacts
from editbench.errors import EditbenchError
from editbench.report.stress import growth_checks, stress_markdown, stress_table


@pytest.fixture(scope="module")
def full():
    return SyntheticFacts(size=50_000).stream(50_000)


def test_generator_facts_are_distinct_and_well_formed(full):
    assert len({c.request.subject for c in full}) == 50_000
    assert len({c.request.target for c in full}) == 50_000
    assert len({c.id for c in full}) == 50_000
    edit_prompts = {c.request.prompt for c in full} | {c.probes["gen"].probes[0].prompt for c in full}
    loc_prompts = {c.probes["loc"].probes[0].prompt for c in full}
    assert not edit_prompts & loc_prompts  # locality questions are about subjects no edit touches
    subjects = {c.request.subject for c in full}
    for c in full[:200]:
        assert c.request.subject in c.request.prompt and c.request.subject in c.probes["gen"].probes[0].prompt
        assert c.probes["rel"].probes[0].prompt == c.request.prompt
        assert c.probes["rel"].probes[0].answer == c.probes["gen"].probes[0].answer == c.request.target
        assert c.probes["loc"].probes[0].prompt.split(" ")[-1].rstrip("?") not in subjects
    # one pinned record: the generator is code, so a change to it must be deliberate
    first = full[0]
    assert (first.request.prompt, first.request.target, first.probes["gen"].probes[0].prompt,
            first.probes["loc"].probes[0].prompt) == ("Which company employs Besama?", "Velwikgal",
                                                      "Besama is employed by which company?",
                                                      "Who wrote the first book about Elmika?")


def test_generator_prefix_does_not_depend_on_size_and_seed_changes_it():
    small, large = SyntheticFacts(size=100).stream(50), SyntheticFacts(size=50_000).stream(50)
    assert [c.request for c in small[:50]] == [c.request for c in large]
    other = SyntheticFacts(size=100, seed=1).stream(50)
    assert [c.request.subject for c in other] != [c.request.subject for c in small]
    skipped = SyntheticFacts(size=100, skip=10).stream(5)
    assert [c.request for c in skipped] == [c.request for c in small[10:15]]


def test_generator_bad_sizes_are_one_line_errors():
    with pytest.raises(EditbenchError, match=r"data.size=.*more than the generator"):
        SyntheticFacts(size=MAX_SIZE + 1)
    with pytest.raises(EditbenchError, match=r"n_edits=11 but data=synthetic holds 10 records"):
        SyntheticFacts(size=10).stream(11)


def test_aux_prompts_are_outside_the_stream():
    data = SyntheticFacts(size=300)
    stream = data.stream(100)
    evaluated = {p.prompt for c in stream for ps in c.probes.values() for p in ps.probes}
    aux = data.aux(stream)
    assert len(aux) == 200 and not {p for p, _ in aux} & evaluated


GRID = [10, 100, 500, 1000, 2000, 5000, 10000, 20000, 30000, 40000, 50000]


GRID = [10, 100, 500, 1000, 2000, 5000, 10000, 20000, 30000, 40000, 50000]
NEW = {n: min(n, 2000) for n in GRID}  # cases a checkpoint scores for the first time (a 2,000 sample)


def scored(n: int) -> int:
    return sum(v for g, v in NEW.items() if g <= n)


def rows(edit_s, ckpt_mb, rss_gb, eval_per_case=lambda n: 0.01, cache_mb=lambda n: 10 + scored(n) * 1e-3,
         growth="per_edit"):
    """Rows as the runner writes them; `edit_s(n)` is the per-edit time around edit n; the cache
    grows by default by one entry per newly scored case."""
    out, total, prev = [], 0.0, 0
    for n in GRID:
        total += sum(edit_s(i) for i in range(prev, n, 10)) * 10
        prev = n
        n_eval = min(n, 2000)
        out.append({"N": n, "edit_s_total": total, "eval_s": eval_per_case(n) * n_eval, "n_eval": n_eval,
                    "resident_mem_gb": rss_gb(n), "ckpt_mb": ckpt_mb(n), "cache_mb": cache_mb(n),
                    "metric_names": ["rel"], "rel": 0.5, "state_growth": growth})
    return out


def verdicts(rs, growth):
    return {c["check"]: c["pass"] for c in growth_checks(stress_table(rs, NEW), growth)}


def test_growth_checks_pass_a_codebook_that_grows_linearly():
    rs = rows(edit_s=lambda n: 0.02 + 1e-8 * n, ckpt_mb=lambda n: 1 + n * 512 / 2**20,
              rss_gb=lambda n: 1 + n * 600 / 2**30, eval_per_case=lambda n: 0.01 + 1e-8 * n)
    assert verdicts(rs, "per_edit") == {"edit time": True, "eval time per case": True, "checkpoint": True,
                                        "memory": True, "cache": True}


def test_growth_checks_catch_quadratic_time_and_leaks():
    quadratic = rows(edit_s=lambda n: 0.02 + 1e-10 * n * n, ckpt_mb=lambda n: 1 + n * 512 / 2**20,
                     rss_gb=lambda n: 1.0)
    assert not verdicts(quadratic, "per_edit")["edit time"]
    leak = rows(edit_s=lambda n: 0.02, ckpt_mb=lambda n: 0.05, rss_gb=lambda n: 1 + n * 1e-5)  # 0.5 GB at 50K
    v = verdicts(leak, "fixed")
    assert not v["memory"] and v["edit time"] and v["checkpoint"]
    grows = rows(edit_s=lambda n: 0.02, ckpt_mb=lambda n: 0.05 + n * 1e-4, rss_gb=lambda n: 1.0)
    assert not verdicts(grows, "fixed")["checkpoint"]  # a "fixed" state that grows 100 B per edit
    slower = rows(edit_s=lambda n: 0.02 + 1e-6 * n, ckpt_mb=lambda n: 0.05, rss_gb=lambda n: 1.0)
    assert not verdicts(slower, "fixed")["edit time"]
    cache = rows(edit_s=lambda n: 0.02, ckpt_mb=lambda n: 0.05, rss_gb=lambda n: 1.0,
                 cache_mb=lambda n: 10 + 1e-3 * scored(n) * n / 1000)
    assert not verdicts(cache, "fixed")["cache"]


def test_growth_checks_refuse_a_short_run_and_the_markdown_names_failures():
    short = [r for r in rows(edit_s=lambda n: 0.02, ckpt_mb=lambda n: 0.05, rss_gb=lambda n: 1.0) if r["N"] <= 10000]
    checks = growth_checks(stress_table(short, NEW), "fixed")
    assert [c["check"] for c in checks] == ["coverage"] and not checks[0]["pass"]
    table = stress_table(short, NEW)
    assert table[3]["N"] == 1000 and table[3]["edit_s"] == pytest.approx(0.02)
    md = stress_markdown({"meta": {"time": "t", "model": "tiny_llama", "data": "synthetic", "threads": 1,
                                   "max_eval": 2000, "note": "n"},
                          "editors": [{"label": "FT-L", "state_growth": "fixed", "command": "python -m editbench",
                                       "table": table, "checks": checks}]})
    assert "growth checks **FAIL**" in md and "| 10,000 |" in md


def test_editors_declare_how_their_state_grows():
    from editbench.editors.ft import FineTune
    from editbench.editors.grace import GRACE
    from editbench.editors.horen import HoReN
    from editbench.editors.rome import ROME
    from editbench.editors.wise import WISE

    assert HoReN.state_growth == GRACE.state_growth == WISE.state_growth == "per_edit"  # entries per edit
    assert FineTune.state_growth == ROME.state_growth == "fixed"  # weights changed in place
