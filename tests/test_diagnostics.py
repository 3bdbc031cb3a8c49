"""Routing diagnostics (`editbench.diagnostics`): the codebook editors' `route`, the own-entry
bookkeeping, the nearest-key cosines, and the `route_*` fields of a run's rows — checked against
values computed by hand from the codebook."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import build_editor, run_in_process  # noqa: E402
from editbench.diagnostics import nearest_key_cosines, routing_diagnostics


def test_nearest_key_cosines_by_hand():
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # cosines: k0·k1 = 0, k0·k2 = k1·k2 = 1/√2
    got = nearest_key_cosines(keys)
    assert got["route_keys_nn_min"] == pytest.approx(2 ** -0.5)
    assert got["route_keys_nn_median"] == pytest.approx(2 ** -0.5)
    assert nearest_key_cosines(keys[:1]) == dict.fromkeys(got)  # one key: no neighbour


@pytest.mark.parametrize("name", ["horen", "grace"])
def test_route_is_the_site_wrappers_decision_and_edits_record_their_entry(name):
    model, editor, cases = build_editor(name, model="tiny_llama", n_cases=6)
    editor.edit([c.request for c in cases[:5]])
    entries = editor.edit_entries()
    assert len(entries) == 5 and all(0 <= e < editor.book.n for e in entries)
    prompts = [model.encode_prompt(c.probes[s].probes[0].prompt) for c in cases for s in ("rel", "gen", "loc")]
    routed = editor.routing(prompts)
    # by hand: the query, refinement and threshold (HoReN) / nearest key within its radius (GRACE)
    assert (routed.displacement is None) == (name == "grace")  # GRACE does not refine its queries
    disps = routed.displacement.tolist() if routed.displacement is not None else [None] * len(prompts)
    for ids, entry, disp in zip(prompts, routed.entry.tolist(), disps):
        batch = model.batch([(ids, len(ids))])
        with torch.no_grad():
            x, _ = model.site_io(batch)
            if name == "horen":
                q = editor.query(x, batch.prompt_mask)
                r = editor.refine(q)
                s, j = editor.match(r)
                want = int(j) if float(s) > editor.tau else -1
                assert disp == pytest.approx(float((r - q).norm()), abs=1e-6)
            else:
                key = x[0, len(ids) - 1]
                d = (editor.book.K - key).norm(dim=-1)
                j = int(d.argmin())
                want = j if float(d[j]) <= float(editor.book.R[j]) else -1
        assert entry == want
    # an edit prompt routes to the entry its edit was written to (its key is that prompt's query)
    own = editor.routing([model.encode_prompt(c.request.prompt) for c in cases[:5]]).entry.tolist()
    assert own == entries
    # the state carries the entries: a resumed editor knows them
    _, fresh, _ = build_editor(name, model="tiny_llama", n_cases=1)
    fresh.load_state_dict(editor.state_dict())
    assert fresh.edit_entries() == entries


def test_diagnostics_rates_are_the_routed_shares():
    model, editor, cases = build_editor("horen", model="tiny_llama", n_cases=8)
    editor.edit([c.request for c in cases])
    d = routing_diagnostics(editor, model.encode_prompt, cases, list(range(8)))
    entries = editor.edit_entries()
    gen = editor.routing([model.encode_prompt(c.probes["gen"].probes[0].prompt) for c in cases]).entry.tolist()
    loc = editor.routing([model.encode_prompt(c.probes["loc"].probes[0].prompt) for c in cases]).entry.tolist()
    assert d["route_gen_own"] == sum(g == e for g, e in zip(gen, entries)) / 8
    assert d["route_gen_none"] == sum(g < 0 for g in gen) / 8
    assert d["route_gen_own"] + d["route_gen_wrong"] + d["route_gen_none"] == pytest.approx(1.0)
    assert d["route_loc_retrieved"] == sum(g >= 0 for g in loc) / 8
    assert d["route_rel_own"] == 1.0 and d["route_entries"] == len(set(entries)) and d["route_s"] > 0


def test_side_memory_router_shares_and_false_retrieval():
    model, editor, cases = build_editor("wise", model="tiny_llama", n_cases=4)
    for c in cases[:2]:
        editor.edit([c.request])  # one edit per call (batch_size 1)
    d = routing_diagnostics(editor, model.encode_prompt, cases[:2], [0, 1])
    loc = editor.routing([model.encode_prompt(c.probes["loc"].probes[0].prompt) for c in cases[:2]])
    assert loc.displacement is None and editor.edit_entries() is None
    assert d["route_loc_retrieved"] == float((loc.entry >= 0).float().mean())
    assert "route_gen_none" in d and "route_gen_own" not in d and "route_gen_disp" not in d
    assert d["route_keys_nn_median"] is None and d["route_entries"] is None


def test_weight_editors_do_not_route():
    model, editor, cases = build_editor("ft", model="tiny_llama", n_cases=2)
    assert routing_diagnostics(editor, model.encode_prompt, cases, [0, 1]) == {}


def test_a_run_logs_routing_fields_at_every_checkpoint(tmp_path):
    done = run_in_process("editor=horen", "model=tiny_llama", "n_edits=6", "protocol.checkpoints=[3]",
                          f"out_dir={tmp_path}", "threads=1")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in next(tmp_path.rglob("metrics.jsonl")).read_text().splitlines()]
    assert [r["N"] for r in rows] == [3, 6]
    for r in rows:
        assert {"route_rel_own", "route_gen_own", "route_gen_wrong", "route_gen_none", "route_loc_retrieved",
                "route_gen_disp", "route_loc_disp", "route_keys_nn_median", "route_entries"} <= set(r)
        assert r["editor_info"]["cases"] and r["route_entries"] <= r["N"]


def test_diagnostics_false_leaves_them_out(tmp_path):
    done = run_in_process("editor=horen", "model=tiny_llama", "n_edits=3", "protocol.checkpoints=[3]",
                          f"out_dir={tmp_path}", "threads=1", "diagnostics=false")
    assert done.returncode == 0, done.stderr
    row = json.loads(next(tmp_path.rglob("metrics.jsonl")).read_text().splitlines()[-1])
    assert not [k for k in row if k.startswith("route_")]


def test_cache_reads_a_prompts_states_from_a_stored_sequence_that_starts_with_it():
    from editbench.cache import StateCache

    cache = StateCache(None)
    long = torch.arange(12.0).reshape(4, 3)  # states of (layer 2; ids 5, 7, 9, 11)
    cache.put_site({(2, 5, 7, 9, 11): long, (2, 5, 8): torch.ones(2, 3)})
    got = cache.get_site_extending([(2, 5, 7), (2, 5, 7, 9, 11), (2, 5), (3, 5, 7), (2, 7), (2, 5, 7, 9, 11, 13)])
    assert torch.equal(got[(2, 5, 7)], long[:2]) and torch.equal(got[(2, 5, 7, 9, 11)], long)
    assert got[(2, 5)].shape == (1, 3)  # the first extension in key order, (2, 5, 7, ...) < (2, 5, 8)
    assert set(got) == {(2, 5, 7), (2, 5, 7, 9, 11), (2, 5)}  # another layer, not a prefix, longer: not found


@pytest.mark.parametrize("name", ["horen", "grace", "wise"])
def test_routing_from_the_evaluators_cached_states_is_the_full_pass_routing(name, monkeypatch):
    from editbench.editors._common import site_batches
    from editbench.evaluate import Evaluator

    model, editor, cases = build_editor(name, model="tiny_llama", n_cases=6)
    for c in cases[:4]:
        editor.edit([c.request])
    ev = Evaluator(model, "greedy", batch_size=4)
    ev.evaluate(editor.module(), cases[:4], ev.reference(cases[:4]), reuse_layer=model.site.layer)
    prompts = [model.encode_prompt(c.probes[s].probes[0].prompt) for c in cases for s in ("rel", "gen", "loc")]
    computed = []
    real = ev._site_states
    monkeypatch.setattr(ev, "_site_states", lambda seqs, layer: computed.extend(seqs) or real(seqs, layer))
    # the site's input and unedited output at every prompt position, from the cache or through every block
    for (x, y, mask), (xc, yc, maskc) in zip(site_batches(model, prompts, size=5),
                                            site_batches(model, prompts, size=5, states=ev.prompt_states)):
        assert torch.equal(mask, maskc)
        torch.testing.assert_close(xc[mask], x[mask], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(yc[mask], y[mask], rtol=1e-5, atol=1e-5)
    # only the two cases the evaluation did not score were run through the blocks below the site
    assert sorted(map(tuple, computed)) == sorted(map(tuple, prompts[12:]))
    full, cached = editor.routing(prompts), editor.routing(prompts, ev.prompt_states)
    assert cached.entry.tolist() == full.entry.tolist() and (full.entry >= 0).any()
    if full.displacement is not None:
        torch.testing.assert_close(cached.displacement, full.displacement, rtol=1e-4, atol=1e-5)
    d, dc = (routing_diagnostics(editor, model.encode_prompt, cases[:4], range(4), s) for s in (None, ev.prompt_states))
    for k in d:
        if k != "route_s":
            assert dc[k] == (d[k] if d[k] is None else pytest.approx(d[k], rel=1e-4, abs=1e-5)), k
