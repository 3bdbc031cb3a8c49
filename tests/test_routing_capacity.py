"""The routing capacity study (scripts/routing_capacity.py): its replay rebuilds a real HoReN run's
codebook, its batched cached queries are the editor's, and its rates count what they say."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from editbench.cache import StateCache
from editbench.data import EditRequest
from conftest import build_editor, load_script  # noqa: E402  (pytest puts tests/ on sys.path)

cap = load_script("routing_capacity")


def requests(cases):
    """The stream's requests, then one repeated (same label: reuses its entry) and one prompt with
    another target (a conflict): on tiny_llama at τ 0.7 every insertion case occurs."""
    reqs = [c.request for c in cases]
    return reqs + [reqs[0], EditRequest("conflict", reqs[1].prompt, "Lyon")]


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_replay_rebuilds_the_codebook_of_a_real_run(steps):
    over = (f"editor.hopfield_steps={steps}", "editor.n_iter=2")
    m, real, cases = build_editor("horen", *over, n_cases=12)
    reqs = requests(cases)
    for r in reqs:
        real.edit([r])
    assert all(v > 0 for v in real.cases.values()), real.cases

    # the editor's own q0 per request: the replay is the same codebook, bit for bit
    m2, exact, _ = build_editor("horen", *over, n_cases=12)
    for r in reqs:
        batch = m2.batch([m2.encode_example(r.prompt, r.target)])
        cap.replay_edit(exact, cap.edit_query(m2, exact, r), *cap.edit_labels(batch))
    assert torch.equal(exact.book.K, real.book.K)
    assert exact.book.labels == real.book.labels
    assert np.array_equal(exact.book.ref_labels, real.book.ref_labels, equal_nan=True)  # the dummy's is NaN
    assert exact.cases == real.cases

    # the study's path: batched, cached prompt queries
    m3, replay, _ = build_editor("horen", *over, n_cases=12)
    examples = [m3.encode_example(r.prompt, r.target) for r in reqs]
    ids = [tuple(ex[:n_prompt]) for ex, n_prompt in examples]
    have, cost = cap.pooled_queries(m3, replay, ids, StateCache(None), batch_size=4)
    assert cost["computed"] == len(set(ids))
    rows = []
    for r, s in zip(reqs, ids):
        labels = cap.edit_labels(m3.batch([m3.encode_example(r.prompt, r.target)]))
        rows.append(cap.replay_edit(replay, have[s], *labels))
    assert torch.allclose(replay.book.K, real.book.K, atol=1e-6)
    assert replay.book.labels == real.book.labels and replay.cases == real.cases
    assert rows[len(cases)] == rows[0]  # the repeated request went to its first entry


def test_batched_pooled_query_is_the_editors_query_on_one_unpadded_prompt():
    m, ed, cases = build_editor("horen", n_cases=16)
    prompts = [p.prompt for c in cases for ps in c.probes.values() for p in ps.probes]
    ids = [tuple(m.encode_prompt(p)) for p in prompts]
    assert len({len(s) for s in ids}) > 3  # the batches are padded
    cache = StateCache(None)
    have, _ = cap.pooled_queries(m, ed, ids, cache, batch_size=8)
    for p, s in zip(prompts, ids):
        assert torch.allclose(have[s], cap.prompt_query(m, ed, p), atol=1e-5)
    for c in cases:  # the edit path: prompt + target, unpadded, as HoReN.edit computes q0
        ex, n_prompt = m.encode_example(c.request.prompt, c.request.target)
        assert torch.allclose(have[tuple(ex[:n_prompt])], cap.edit_query(m, ed, c.request), atol=1e-5)
    again, cost = cap.pooled_queries(m, ed, ids, cache)
    assert cost["computed"] == 0 and all(torch.equal(again[s], have[s]) for s in ids)


def test_rates_on_a_hand_built_codebook():
    """GRACE+Norm (M = 0) over orthonormal keys e1..e3 (entry 0: the random dummy): each probe's
    routing is read off by hand."""
    m, ed, _ = build_editor("horen", "editor.hopfield_steps=0", "editor.threshold=0.5", n_cases=1)
    d = ed.book.keys.shape[1]
    e = torch.eye(d)
    for row, label in ((1, (7,)), (2, (8,)), (3, (7,))):  # entry 3 shares entry 1's label
        assert ed.book.add(e[row], 0.0, label=label, ref_label=0.0) == row
    own = [1, 1, 1, 1]  # four cases, all editing entry 1
    Q = torch.stack([F.normalize(e[1] + 0.1 * e[10], dim=0),  # own entry
                     e[2],                                      # another entry, another label
                     e[3],                                      # another entry, the same label
                     e[20],                                     # nothing above τ
                     e[1], e[30]])                              # locality: retrieved / not
    sid = cap.StreamIds(edit=[], labels=[], scorer={"gen": "accuracy", "loc": "locality"},
                        probes={"gen": [(i, 0, (i,)) for i in range(4)], "loc": [(0, 0, (4,)), (1, 0, (5,))]})
    index = {(i,): i for i in range(6)}
    routed = cap.evaluate(ed, 4, sid, index, Q, own)
    assert routed["gen"].cat.tolist() == [cap.OWN, cap.WRONG, cap.WRONG, cap.NO_MATCH]
    assert routed["gen"].entry[:3].tolist() == [1, 2, 3]
    rates = cap.summarize(routed, sid)
    assert rates["gen"] == {"n": 4, "own": 0.25, "wrong": 0.5, "wrong_same_label": 0.25, "no_match": 0.25}
    assert rates["loc"] == {"n": 2, "false_retrieval": 0.5, "own_case_entry": 0.5}  # case 0 edited entry 1
    # only the first 2 cases' probes at N = 2
    assert cap.summarize(cap.evaluate(ed, 2, sid, index, Q, own), sid)["gen"]["n"] == 2


def test_a_codebook_with_only_the_dummy_routes_nothing():
    m, ed, _ = build_editor("horen", n_cases=1)
    s, _ = cap.route(ed, torch.eye(ed.book.keys.shape[1])[:3])
    cat = cap.classify(s, torch.zeros(3, dtype=torch.long), np.array([-1, -1, -1]), ed.tau)
    assert cat.tolist() == [cap.NO_MATCH] * 3


def test_fit_recovers_a_cloglog_curve_and_brackets_its_projection():
    a, b, n_max = -9.0, 0.8, 4000
    grid = [100, 200, 500, 1000, 2000, 4000]
    rng = np.random.default_rng(0)
    u = rng.random(n_max)
    points = [(N, np.arange(N), (u[:N] < cap.inv_cloglog(a + b * np.log(N))).astype(float)) for N in grid]
    fit = cap.fit_rate(points, n_max, boot=200)
    truth = float(cap.inv_cloglog(a + b * np.log(cap.PROJECT_N)))
    p = fit["projection"]
    assert p["lo"] <= p["estimate"] <= p["hi"]
    assert p["lo"] < truth < p["hi"]
    exact = cap.fit_curve(grid, [cap.inv_cloglog(a + b * np.log(N)) for N in grid], [10**9] * len(grid))
    assert exact == pytest.approx((a, b), abs=1e-6)


def test_capacity_figures_render_a_study_file(tmp_path):
    """The report module draws every study file under <results>/capacity/ (png + pdf)."""
    import json

    from editbench.report.capacity import capacity_figures

    def fit(v):
        band = [{"N": N, "estimate": v, "lo": v - 0.05, "hi": v + 0.05} for N in (1000, 50000)]
        return {"fit_N": [100, 500, 1000], "projection": {**band[-1], "boot": 10}, "band": band}

    per_n = [{"N": N, "entries": N, "rel": {"own": 1.0}, "gen": {"own": 0.8, "wrong": 0.1, "no_match": 0.1},
              "loc": {"false_retrieval": 0.02, "own_case_entry": 0.0}} for N in (10, 100, 500, 1000)]
    var = {"name": "HoReN", "routing": {"threshold": 0.7, "hopfield_steps": 1, "pooling_ratio": 0.6, "beta": 20.0,
                                        "alpha": 0.1},
           "per_N": per_n, "fit": {"gen": {k: fit(0.5) for k in ("own", "wrong", "no_match")},
                                   "loc": {"false_retrieval": fit(0.1)}},
           "runs": [{"run": "n1000_s0", "method": "HoReN",
                     "checkpoints": [{"N": 100, "run": {"gen": 0.75, "loc": 0.99}}]}]}
    study = {"data": "zsre", "model": "tiny", "n_cases": 1000, "pool": 1000, "variants": [var, dict(var, name="B")]}
    (tmp_path / "capacity").mkdir()
    (tmp_path / "capacity" / "zsre_tiny.json").write_text(json.dumps(study))
    written = capacity_figures(tmp_path, tmp_path / "figures")
    assert sorted(p.name for p in written) == ["capacity_zsre_tiny.pdf", "capacity_zsre_tiny.png"]
    assert all(p.stat().st_size > 0 for p in written)


def test_rate_intervals_bracket_the_rate_and_collapse_when_every_case_agrees():
    """Bootstrap over cases: a case's probes move together; all-equal indicators give a zero-width
    interval at that value."""
    sid = cap.StreamIds(edit=[], labels=[], scorer={"gen": "accuracy", "loc": "locality"}, probes={})
    n = 200
    case = np.arange(n)
    own = np.where(np.arange(n) % 4 == 0, cap.NO_MATCH, cap.OWN).astype(np.int8)  # 75 % own entry
    z = np.zeros(n)
    routed = {"gen": cap.Routed(case, z, own, z, z, z.astype(bool), z.astype(bool)),
              "loc": cap.Routed(case, z, np.full(n, cap.NO_MATCH, dtype=np.int8), z, z, z.astype(bool),
                                z.astype(bool))}
    ci = cap.rate_intervals(routed, sid, n, boot=500)
    lo, hi = ci["gen"]["own"]
    assert lo < 0.75 < hi and hi - lo < 0.2
    assert ci["loc"]["false_retrieval"] == [0.0, 0.0]


def test_damping_plan_and_figure(tmp_path):
    import json

    from editbench.report.capacity import capacity_figures

    plan = cap.damping_variants()
    assert len(plan) == 16 and plan[-1] == ("GRACE+Norm", ["experiment=grace_norm"])
    assert ("alpha=0.5 M=2", ["editor.alpha=0.5", "editor.hopfield_steps=2"]) in plan
    variants = []
    for name, _ in plan:
        a, m = (0.1, 0) if name == "GRACE+Norm" else (float(name.split()[0][6:]), int(name.split()[1][2:]))
        per_n = [{"N": N, "gen": {"own": 0.7 + 0.01 * m}, "loc": {"false_retrieval": 0.01 * m},
                  "ci": {"gen": {"own": [0.65, 0.75]}, "loc": {"false_retrieval": [0.0, 0.05]}}} for N in (1000, 2000)]
        variants.append({"name": name, "alpha": a, "steps": m, "per_N": per_n})
    study = {"study": "damping", "data": "zsre", "model": "tiny", "n_cases": 2000, "checkpoints": [1000, 2000],
             "variants": variants}
    (tmp_path / "capacity").mkdir()
    (tmp_path / "capacity" / "zsre_tiny_damping.json").write_text(json.dumps(study))
    written = capacity_figures(tmp_path, tmp_path / "figures")
    assert sorted(p.name for p in written) == ["damping_zsre_tiny.pdf", "damping_zsre_tiny.png"]
