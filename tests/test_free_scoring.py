"""Free-generation scoring (`protocol.scoring=free`, docs/protocol.md#free-generation): the metrics
by hand, and the evaluator's exact shortcut against plain decoding on the tiny model."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from editbench import metrics  # noqa: E402
from editbench.evaluate import Evaluator  # noqa: E402


@pytest.mark.parametrize("text, norm", [
    ("The Beatles!", "beatles"),
    ("  Rock-'n'-roll,   an era ", "rocknroll era"),
    ("A. Lincoln", "lincoln"),          # "a" (after the full stop goes) is an article
    ("Theodore", "theodore"),           # ... but only as a whole word
    ("1998.", "1998"),
    ("", ""),
])
def test_normalize_answer_is_squads(text, norm):
    assert metrics.normalize_answer(text) == norm


def test_exact_and_prefix_match():
    assert metrics.text_em("the Beatles.", "Beatles") == 1.0
    assert metrics.text_em("Beatles and Stones", "Beatles") == 0.0
    assert metrics.prefix_match("Beatles and Stones", "the Beatles") == 1.0
    assert metrics.prefix_match("Beatlesque", "Beatles") == 0.0     # a leading word, not a leading string
    assert metrics.prefix_match("anything", "The") == 0.0            # an empty normalised target never matches
    assert metrics.free_cap(3) == 14


def test_free_text_cuts_at_the_first_stop(tok):
    ids = tok.encode(" Paris, France", add_special_tokens=False)
    eos = tok.eos_token_id
    assert metrics.free_text(tok, ids + [eos] + ids, frozenset({eos})) == "Paris, France"
    nl = tok.encode("\n", add_special_tokens=False)
    assert metrics.free_text(tok, ids + nl + ids, frozenset({eos, *nl})) == "Paris, France"
    assert metrics.free_text(tok, ids, frozenset({eos})) == "Paris, France"  # the cap, no stop


def test_stop_ids_are_eos_and_every_token_holding_a_newline(tiny_model):
    ev = Evaluator(tiny_model, "free")
    tok = tiny_model.tok
    assert set(tiny_model.eos_ids) <= ev.stop_ids
    assert {i for i in range(len(tok)) if "\n" in tok.decode([i])} == ev.stop_ids - set(tiny_model.eos_ids)


def test_fast_path_equals_decoding(tiny_model, zsre_records, monkeypatch):
    """A candidate confirmed from cached states is the free generation itself; a wrong candidate
    falls back to decoding; either way the outputs equal plain decoding, with or without stops."""
    m = tiny_model
    ev = Evaluator(m, "free", batch_size=4)
    probes = [c.probes["rel"].probes[0] for c in zsre_records[:6]]
    pairs = [(p.prompt, p.answer) for p in probes]
    layer = m.site.layer
    decoded = []
    real = m.greedy

    def counting(*a, **kw):
        decoded.append(len(a[1]))
        return real(*a, **kw)

    full = ev._generate_free(m.model, pairs, None, None)
    assert [len(g) for g in full] == ev._free_caps(pairs)  # the random model never stops: each row runs to its cap
    monkeypatch.setattr(m, "greedy", counting)
    assert ev._generate_free(m.model, pairs, full, layer) == full and not decoded  # all confirmed

    ev._stop_ids = frozenset(m.eos_ids) | {g[2] for g in full}  # each row's third token now ends it
    monkeypatch.setattr(m, "greedy", real)
    stopped = ev._generate_free(m.model, pairs, None, None)
    assert all(len(s) <= 3 and s[-1] in ev.stop_ids for s in stopped)
    monkeypatch.setattr(m, "greedy", counting)
    assert ev._generate_free(m.model, pairs, stopped, layer) == stopped and not decoded
    # a candidate wrong only in its last token: the teacher-forced pass gives that token (a stop), no decoding
    wrong = [s[:-1] + [s[-1] + 1] for s in stopped]
    assert ev._generate_free(m.model, pairs, wrong, layer) == stopped and not decoded
    # wrong in its second token: the pass gives the first two tokens, decoding goes on after them
    ev._stop_ids = frozenset(m.eos_ids)
    wrong = [g[:1] + [g[1] + 1] + g[2:] for g in full]
    assert ev._generate_free(m.model, pairs, wrong, layer) == full and sum(decoded) == len(pairs)


def test_evaluate_free_records_both_metrics(tiny_model, zsre_records):
    m = tiny_model
    ev = Evaluator(m, "free", batch_size=4)
    cases = zsre_records[:4]
    refs = ev.reference(cases)
    scores = ev.evaluate(m.model, cases, refs, reuse_layer=m.site.layer, overall=metrics.OP)
    assert {"rel", "rel_prefix", "gen", "gen_prefix", "loc", "op"} <= set(scores.metrics)
    assert scores.metrics["loc"] == 1.0  # the unedited model against itself
    rel = [r for r in scores.records if r["set"] == "rel"]
    assert all("prefix" in r for r in rel)
    for r, c in zip(rel, cases):
        text = metrics.free_text(m.tok, r["ids"], ev.stop_ids)
        assert r["score"] == metrics.text_em(text, c.probes["rel"].probes[0].answer)
