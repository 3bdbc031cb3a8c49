"""Rel / Gen / Loc / OP (docs/protocol.md#metrics): the pure formulas by hand, the tokenization edge cases on
the tiny model's byte-level BPE, and the evaluator's decoding conventions and batching."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from editbench import metrics
from editbench.data.zsre import make_case
from editbench.evaluate import Evaluator
from editbench.metrics import OP
from editbench.models import Pass


def enc(tok, s: str) -> list[int]:
    return tok.encode(s, add_special_tokens=False)


# ----------------------------------------------------------------------------------- token_em
@pytest.mark.parametrize("answer,target,expected", [
    ([5, 6, 7], [5, 6, 7], 1.0),
    ([5, 9, 7], [5, 6, 7], 2 / 3),
    ([9, 9, 7], [5, 6, 7], 1 / 3),
    ([1, 2], [3, 4], 0.0),
    ([5, 6], [5, 6, 7], 0.0),  # shorter: 0 even though the prefix matches
    ([5, 6, 7, 8], [5, 6, 7], 0.0),  # longer: 0 (answer_ids truncates, so this is the raw formula)
    ([], [5], 0.0),
    ([], [], 0.0),
])
def test_token_em(answer, target, expected):
    assert metrics.token_em(answer, target) == pytest.approx(expected)


# ----------------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("pre,post,expected", [
    ([1, 2, 3], [1, 2, 3], 1.0),
    ([1, 2, 3], [1, 9, 3], 2 / 3),
    ([1, 2, 3], [1, 2], 2 / 3),  # denominator = the longer length
    ([1, 2], [1, 2, 3, 4], 2 / 4),
    ([1, 2, 3, 4], [9, 2], 1 / 4),
    ([1], [], 0.0),
    ([], [], 1.0),
])
def test_agreement_uses_the_longer_length(pre, post, expected):
    assert metrics.agreement(pre, post) == pytest.approx(expected)
    assert metrics.agreement(post, pre) == pytest.approx(expected)  # symmetric


# ----------------------------------------------------------------------------------- token_accuracy
@pytest.mark.parametrize("pred,labels,expected", [
    ([1, 2, 3], [1, 2, 3], 1.0),
    ([1, 2, 4], [1, 2, 3], 2 / 3),
    ([0, 0, 0, 4], [1, 2, 3, 4], 1 / 4),
    ([], [], 0.0),
])
def test_token_accuracy(pred, labels, expected):
    assert metrics.token_accuracy(pred, labels) == pytest.approx(expected)


# ----------------------------------------------------------------------------------- overall
def test_overall_paper_check_values():
    # docs/protocol.md#op, checked against HoReN paper Table 1 rows
    assert round(metrics.overall(1.00, 0.81, 1.00), 2) == 0.93
    assert round(metrics.overall(0.99, 0.01, 1.00), 2) == 0.21


@pytest.mark.parametrize("rel,gen,loc,expected", [
    (1.0, 1.0, 1.0, 1.0),
    (0.5, 0.5, 0.5, 0.5),
    (0.2, 0.4, 0.8, (0.2 * 0.4 * 0.8) ** (1 / 3)),
    (1.0, 0.125, 1.0, 0.5),
    (0.0, 1.0, 1.0, 0.0),
    (1.0, 1.0, 0.0, 0.0),
    (-0.1, 1.0, 1.0, 0.0),
])
def test_overall_is_the_geometric_mean(rel, gen, loc, expected):
    assert metrics.overall(rel, gen, loc) == pytest.approx(expected)


def test_mean():
    assert metrics.mean([1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert math.isnan(metrics.mean([]))


# ----------------------------------------------------------------------------------- answer_ids
def test_answer_ids_strips_the_leading_space_before_re_encoding(tok):
    target = enc(tok, "Paris")
    generated = enc(tok, " Paris")
    assert generated != target  # premise: a leading space changes the BPE ids
    a = metrics.answer_ids(tok, generated, len(target))
    assert a == target
    assert metrics.token_em(a, target) == 1.0
    assert metrics.token_em(generated, target) < 1.0  # what comparing raw ids would have scored


def test_answer_ids_re_encoding_can_change_the_length(tok):
    # " French" is two tokens, "French" one: T = 2 new tokens, scored against 1 target id
    target = enc(tok, "French")
    generated = enc(tok, " French")
    assert (len(target), len(generated)) == (1, 2)
    assert metrics.answer_ids(tok, generated, len(target)) == target


def test_answer_ids_skips_special_tokens(tok):
    bos, eos = tok.bos_token_id, tok.eos_token_id
    target = enc(tok, "Paris")
    assert metrics.answer_ids(tok, [bos, *enc(tok, " Paris"), eos], len(target)) == target
    assert metrics.answer_ids(tok, [*enc(tok, " Paris"), eos, eos], len(target)) == target
    assert metrics.answer_ids(tok, [eos, eos, eos], len(target)) == []


def test_answer_ids_truncates_to_the_target_length(tok):
    target = enc(tok, "New York")
    generated = enc(tok, " New York is a city")
    a = metrics.answer_ids(tok, generated, len(target))
    assert len(a) == len(target) and a == target
    assert metrics.token_em(a, target) == 1.0


def test_shorter_re_encoding_scores_zero(tok):
    target = enc(tok, "Lecanorales")
    assert len(target) > 2
    generated = enc(tok, " Lec") + [tok.eos_token_id] * 4  # the model stopped early
    a = metrics.answer_ids(tok, generated, len(target))
    assert 0 < len(a) < len(target) and a == target[:len(a)]  # a correct prefix ...
    assert metrics.token_em(a, target) == 0.0  # ... still scores 0


def test_partial_match_after_re_encoding(tok):
    target = enc(tok, "New York")  # ["New", " York"]
    generated = enc(tok, " New Jersey")[:2]  # [" New", " J"]
    a = metrics.answer_ids(tok, generated, len(target))
    assert len(a) == 2 and a[0] == target[0] and a[1] != target[1]
    assert metrics.token_em(a, target) == 0.5


# ----------------------------------------------------------------------------------- the evaluator
# The evaluator has two greedy paths: the plain one (decode every row) and, for an editor that leaves
# the blocks below the edit site frozen, an exact shortcut that confirms expected outputs teacher-
# forced and decodes only the rows it cannot confirm. Hand-computed tests script `Evaluator.greedy`
# and take the plain path (shortcut=False); the shortcut must agree with the plain path.

@dataclasses.dataclass(frozen=True)
class Rec:
    """The ZsRE fields a test scripts outputs for, and the case the evaluator scores."""

    id: str
    prompt: str
    target: str
    rephrase: str
    loc_prompt: str
    loc_answer: str

    @property
    def case(self):
        return make_case(self.id, self.prompt, self.target, self.rephrase, self.loc_prompt, self.loc_answer)

    @classmethod
    def of(cls, case) -> "Rec":
        return cls(case.id, case.request.prompt, case.request.target, case.probes["gen"].probes[0].prompt,
                   case.probes["loc"].probes[0].prompt, case.probes["loc"].probes[0].answer)


def record(i: int, target: str, loc_answer: str) -> Rec:
    return Rec(id=f"r{i}", prompt=f"Question {i} is what?", target=target, rephrase=f"Rephrased {i}, what?",
               loc_prompt=f"nq question: locality {i}", loc_answer=loc_answer)


def cases(recs):
    return [r.case for r in recs]


def evaluate(ev, module, recs, refs, shortcut=True) -> dict:
    """The metrics of one evaluation (overall: OP), as a plain dict; `shortcut`: reuse unedited
    states from the edit-site layer (the exact shortcut), else decode every row."""
    return ev.evaluate(module, cases(recs), refs, ev.m.site.layer if shortcut else None, OP).metrics


class ScriptedGreedy:
    """Stands in for `Evaluator.greedy`: returns scripted ids per prompt and records the n_new asked."""

    def __init__(self, model, script: dict[str, list[int]]):
        self.model = model
        self.by_ids = {tuple(model.encode_prompt(text)): ids for text, ids in script.items()}
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def __call__(self, evaluator, module, prompts, n_new, prompt_lens=None):
        # a script stands for the whole decoding: the plain path, which never continues known tokens
        assert prompt_lens is None or prompt_lens == [len(p) for p in prompts]
        out = []
        for p, n in zip(prompts, n_new):
            self.calls.append((tuple(p), n))
            ids = self.by_ids[tuple(p)]
            assert len(ids) >= n
            out.append(list(ids[:n]))
        return out

    def install(self, monkeypatch) -> "ScriptedGreedy":
        monkeypatch.setattr(Evaluator, "greedy", lambda ev, module, prompts, n_new, prompt_lens=None, **kw:
                            self(ev, module, prompts, n_new, prompt_lens))
        return self

    def n_new_for(self, text: str) -> list[int]:
        key = tuple(self.model.encode_prompt(text))
        return [n for p, n in self.calls if p == key]


def test_decode_length_is_len_of_space_plus_target(tiny_model, zsre_records, monkeypatch):
    m, tok = tiny_model, tiny_model.tok
    # records whose T = len(encode(" " + y)) differs from len(encode(y)), so the convention is visible
    recs = [r for r in map(Rec.of, zsre_records)
            if len(enc(tok, " " + r.target)) != len(enc(tok, r.target))
            and len(enc(tok, " " + r.loc_answer)) != len(enc(tok, r.loc_answer))][:3]
    assert len(recs) >= 2
    script = {text: [m.eos_id] * 64 for r in recs for text in (r.prompt, r.rephrase, r.loc_prompt)}
    fake = ScriptedGreedy(m, script).install(monkeypatch)
    ev = Evaluator(m, "greedy", batch_size=2)
    pre = ev.reference(cases(recs))
    evaluate(ev, m.model, recs, pre, shortcut=False)
    for r, p in zip(recs, (x["loc"][0] for x in pre)):
        T = len(enc(tok, " " + r.target))
        assert fake.n_new_for(r.prompt) == [T]
        assert fake.n_new_for(r.rephrase) == [T]
        T_loc = len(enc(tok, " " + r.loc_answer))
        assert fake.n_new_for(r.loc_prompt) == [T_loc] * 2  # pre and post
        assert len(p) == T_loc


@pytest.mark.parametrize("answer", ["Paris", "30", "November 9, 1620", "July 9, 2017"])
def test_locality_compares_the_last_len_encode_g_new_tokens(tiny_model, monkeypatch, answer):
    """Loc decodes T = len(encode(" " + g)) tokens and compares the last k = len(encode(g)) of them.
    Pre and post differ only in the FIRST decoded token, so Loc = (T-1)/T when every token is
    compared (k >= T) and 1 when the first falls outside the tail (k < T). When g re-encodes *longer*
    without the space ("November 9, 1620": k=6, T=5) the tail of the full output sequence reaches
    k-T tokens back into the prompt (docs/protocol.md#loc: the last len(tok(g)) ids of the full output
    sequence), which pre and post share: Loc = (k-1)/k — not the k-T tokens a wrapped-around
    negative slice (ids[T-k:]) would leave."""
    m, tok = tiny_model, tiny_model.tok
    r = record(1, "Paris", answer)
    T, k = len(enc(tok, " " + answer)), len(enc(tok, answer))
    post = list(range(100, 100 + T))
    pre = [999] + post[1:]
    fake = ScriptedGreedy(m, {r.prompt: [m.eos_id] * 8, r.rephrase: [m.eos_id] * 8, r.loc_prompt: post})
    fake.install(monkeypatch)
    out = evaluate(Evaluator(m, "greedy"), m.model, [r], [{"loc": [pre]}], shortcut=False)
    assert fake.n_new_for(r.loc_prompt) == [T]
    expected = 1.0 if k < T else (k - 1) / k
    assert out["loc"] == pytest.approx(expected), f"T={T}, k={k}"


def test_evaluator_scores_computed_by_hand(tiny_model, monkeypatch):
    """Greedy output scripted per prompt; every number below is worked out by hand."""
    m, tok = tiny_model, tiny_model.tok
    eos = m.eos_id
    r1, r2 = record(1, "French", "Paris"), record(2, "New York", "New York")
    assert enc(tok, " French") != enc(tok, "French")
    script = {
        r1.prompt: enc(tok, " French"),  # -> "French" -> [French]                      acc 1
        r1.rephrase: [eos, eos],  # -> "" -> [] (shorter than the target)           acc 0
        r2.prompt: enc(tok, " New York"),  # -> "New York" -> [New, York]             acc 1
        r2.rephrase: enc(tok, " New Jersey"),  # 2 tokens: " New J" -> [New, J]       acc 1/2
        r1.loc_prompt: enc(tok, " Paris"),
        r2.loc_prompt: enc(tok, " New York"),
    }
    ScriptedGreedy(m, script).install(monkeypatch)
    ev = Evaluator(m, "greedy")
    pre = ev.reference(cases([r1, r2]))
    assert pre == [{"loc": [enc(tok, " Paris")]}, {"loc": [enc(tok, " New York")]}]

    # against the unedited model's own outputs: Loc 1
    scores = ev.evaluate(m.model, cases([r1, r2]), pre, None, OP)
    out = scores.metrics
    assert out == {"rel": 1.0, "gen": 0.25, "loc": 1.0, "op": pytest.approx(0.25 ** (1 / 3)), "n_eval": 2}
    assert scores.names == ["rel", "gen", "loc", "op"]
    # one record per probe: case, set, index, score, output (ids and text)
    by = {(r["case"], r["set"]): r for r in scores.records}
    assert len(scores.records) == 6
    assert by[("r2", "gen")] == {"case": "r2", "set": "gen", "i": 0, "score": 0.5, "ids": enc(tok, " New J"),
                                 "out": " New J"}
    assert by[("r1", "gen")]["ids"] == [eos] and by[("r1", "gen")]["score"] == 0.0  # cut after its first EOS

    # a hand-made pre-edit output: r1 agrees fully, r2 at 1 of its 2 positions
    pre2 = [pre[0], {"loc": [[pre[1]["loc"][0][0], pre[1]["loc"][0][1] + 1]]}]
    out = evaluate(ev, m.model, [r1, r2], pre2, shortcut=False)
    assert (out["rel"], out["gen"], out["loc"], out["n_eval"]) == (1.0, 0.25, 0.75, 2)
    assert out["op"] == pytest.approx((1.0 * 0.25 * 0.75) ** (1 / 3))


def test_an_evaluation_in_parts_aggregates_as_one(tiny_model, monkeypatch):
    """The runner scores a long evaluation in parts (`score_records` on consecutive cases) and
    aggregates their concatenated records: the same metrics and records as one `evaluate` (here
    with the greedy outputs scripted, so only the bookkeeping is compared); records out of step
    with the cases are refused."""
    from editbench.errors import EditbenchError

    m, tok = tiny_model, tiny_model.tok
    r1, r2, r3 = record(1, "French", "Paris"), record(2, "New York", "New York"), record(3, "Rome", "Milan")
    script = {r1.prompt: enc(tok, " French"), r1.rephrase: [m.eos_id, m.eos_id], r2.prompt: enc(tok, " New York"),
              r2.rephrase: enc(tok, " New Jersey"), r3.prompt: enc(tok, " Rome"), r3.rephrase: enc(tok, " Rome"),
              r1.loc_prompt: enc(tok, " Paris"), r2.loc_prompt: enc(tok, " New York"), r3.loc_prompt: enc(tok, " Milan")}
    ScriptedGreedy(m, script).install(monkeypatch)
    ev, cs = Evaluator(m, "greedy"), cases([r1, r2, r3])
    pre = ev.reference(cs)
    whole = ev.evaluate(m.model, cs, pre, None, OP)
    parts = ev.score_records(m.model, cs[:2], pre[:2]) + ev.score_records(m.model, cs[2:], pre[2:])
    assert [r["set"] for r in parts] == ["rel", "rel", "gen", "gen", "loc", "loc", "rel", "gen", "loc"]
    joined = Evaluator.aggregate(cs, parts, OP)
    assert joined.metrics == whole.metrics and joined.names == whole.names and joined.records == whole.records
    assert whole.metrics["rel"] == 1.0 and whole.metrics["gen"] == pytest.approx((0 + 0.5 + 1) / 3)
    with pytest.raises(EditbenchError, match="out of step"):
        Evaluator.aggregate(cs, parts[:1] + parts[2:], OP)
    with pytest.raises(EditbenchError, match="belong to no case"):
        Evaluator.aggregate(cs[:2], parts[:6] + parts[8:], OP)  # r3's loc record, and no r3


@pytest.mark.parametrize("shortcut", [True, False], ids=["shortcut", "plain"])
@pytest.mark.parametrize("scoring", ["greedy", "teacher_forced"])
def test_unedited_model_has_locality_one_against_its_own_outputs(tiny_model, zsre_records, scoring,
                                                                 shortcut):
    m = tiny_model
    recs = list(map(Rec.of, zsre_records[:12]))
    pre = Evaluator(m, scoring, batch_size=32).reference(cases(recs))
    out = evaluate(Evaluator(m, scoring, batch_size=5), m.model, recs, pre, shortcut)  # other batches
    assert out["loc"] == 1.0
    assert out["n_eval"] == 12
    for k in ("rel", "gen", "op"):
        assert 0.0 <= out[k] <= 1.0


def test_greedy_shortcut_equals_plain_decoding(tiny_model, zsre_records, monkeypatch):
    """The exact shortcut must give what decoding gives, row by row. Make it matter: script nothing,
    but make the targets the unedited model's own greedy outputs for half the records, so that the
    shortcut confirms those rows and decodes the others."""
    m = tiny_model
    recs = list(map(Rec.of, zsre_records[:16]))
    ev = Evaluator(m, "greedy", batch_size=4)
    own = ev.greedy(m.model, [m.encode_prompt(r.prompt) for r in recs[:8]], [3] * 8)
    for i, ids in enumerate(own):
        text = m.tok.decode(ids, skip_special_tokens=True)
        if text.strip() and m.eos_id not in ids:
            recs[i] = dataclasses.replace(recs[i], target=text.lstrip())
    pre = ev.reference(cases(recs))
    plain = Evaluator(m, "greedy", batch_size=4).evaluate(m.model, cases(recs), pre, None, OP)
    fast = Evaluator(m, "greedy", batch_size=4).evaluate(m.model, cases(recs), pre, m.site.layer, OP)
    low = Evaluator(m, "greedy", batch_size=4).evaluate(m.model, cases(recs), pre, 0, OP)  # from the embeddings
    assert low == plain
    assert fast == plain  # metrics and every record's output
    plain = plain.metrics
    assert plain["rel"] > 0  # some rows were confirmable


def test_greedy_shortcut_decodes_only_after_a_candidates_first_wrong_token(tiny_model, zsre_records, monkeypatch):
    """A candidate right up to position j and wrong there fixes the output's first j + 1 tokens (the
    teacher-forced argmax at j is what decoding emits next): the shortcut decodes only the tokens
    after them, continuing from prompt + those tokens, and nothing when they fill the output."""
    m = tiny_model
    ev = Evaluator(m, "greedy", batch_size=4)
    probes = [c.probes["loc"].probes[0] for c in zsre_records[:8]]
    pairs = [(p.prompt, p.answer) for p in probes]
    full = ev._generate_for(m.model, pairs, None, None)  # plain decoding
    assert min(map(len, full)) >= 2 and not any(set(g) & set(m.eos_ids) for g in full)
    calls = []
    real = m.greedy

    def counting(module, prompts, n_new, **kw):
        calls.append((prompts, n_new, kw.get("prompt_lens")))
        return real(module, prompts, n_new, **kw)

    monkeypatch.setattr(m, "greedy", counting)
    layer = m.site.layer
    assert ev._generate_for(m.model, pairs, full, layer) == full and not calls  # all confirmed
    last = [g[:-1] + [(g[-1] + 1) % len(m.tok)] for g in full]  # wrong in the last token only
    assert ev._generate_for(m.model, pairs, last, layer) == full and not calls
    second = [g[:1] + [(g[1] + 1) % len(m.tok)] + g[2:] for g in full]  # wrong in the second token
    assert ev._generate_for(m.model, pairs, second, layer) == full
    rows = [(r, n, k) for prompts, n_new, lens in calls for r, n, k in zip(prompts, n_new, lens)]
    longer = [(x, g) for (x, _), g in zip(pairs, full) if len(g) > 2]  # two tokens fill the others
    assert len(rows) == len(longer) >= 4
    for x, g in longer:  # each went on from prompt + its two known tokens
        p = m.encode_prompt(x)
        assert (p + g[:2], len(g) - 2, len(p)) in rows


def naive_greedy(m, module, prompt: list[int], n: int) -> list[int]:
    """One prompt, no padding, no KV cache: the full forward pass at every step."""
    ids, new, done = list(prompt), [], False
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids])
            with m.bind(Pass("prefill", torch.ones_like(x, dtype=torch.bool))):
                nxt = int(module(input_ids=x).logits[0, -1].argmax())
            nxt = m.eos_id if done else nxt
            done = done or nxt == m.eos_id
            new.append(nxt)
            ids.append(nxt)
    return new


def test_greedy_batching_invariance(tiny_model, zsre_records):
    m = tiny_model
    prompts = [m.encode_prompt(r.request.prompt) for r in zsre_records[:8]]
    assert len({len(p) for p in prompts}) >= 4  # different lengths -> real left padding
    n_new = [3, 6, 1, 4, 5, 2, 6, 3]
    ev = Evaluator(m, "greedy", batch_size=32)
    batched = ev.greedy(m.model, prompts, n_new)
    single = [ev.greedy(m.model, [p], [n])[0] for p, n in zip(prompts, n_new)]
    assert [len(g) for g in batched] == n_new
    assert batched == single
    assert single == [naive_greedy(m, m.model, p, n) for p, n in zip(prompts, n_new)]


def test_teacher_forced_matches_a_manual_unpadded_forward(tiny_model, zsre_records):
    """Mode TF: argmax at positions [prompt_len-1, L-2] vs the ids at [prompt_len, L-1], one record
    at a time and unpadded; the evaluator's left-padded batch must give the same Rel."""
    m = tiny_model
    recs = list(map(Rec.of, zsre_records[:6]))
    manual = []
    with torch.no_grad():
        for r in recs:
            ids = m.tok(r.prompt + " " + r.target).input_ids  # raw prompt: default special tokens (BOS)
            n_prompt = len(m.tok(r.prompt).input_ids)
            x = torch.tensor([ids])
            with m.bind(Pass("prefill", torch.arange(len(ids))[None] < n_prompt)):
                logits = m.model(input_ids=x).logits[0]
            pred = logits[n_prompt - 1:len(ids) - 1].argmax(-1).tolist()
            manual.append(metrics.token_accuracy(pred, ids[n_prompt:]))
    ev = Evaluator(m, "teacher_forced", batch_size=4)
    out = evaluate(ev, m.model, recs, ev.reference(cases(recs)))
    assert out["rel"] == pytest.approx(sum(manual) / len(manual), abs=1e-12)


def test_unknown_scoring_is_rejected(tiny_model):
    from editbench.errors import EditbenchError

    with pytest.raises(EditbenchError, match="scoring"):
        Evaluator(tiny_model, "nope")


def test_locality_output_ends_at_its_first_eos(tiny_model, monkeypatch):
    """HF `generate` (the reference decodes one prompt at a time) stops a sequence at its first EOS,
    so the compared tail of prompt + output reaches back into the prompt when the output ends early.
    Padding the output with EOS up to T tokens instead would shift the tail (docs/protocol.md#loc)."""
    m = tiny_model
    eos = m.eos_id
    r = record(1, "Paris", "New York City")  # T = len(" New York City") = k = len("New York City")
    T, k = len(enc(m.tok, " New York City")), len(enc(m.tok, "New York City"))
    assert T == k >= 3
    a = enc(m.tok, " Paris")[0]
    pre = [a, eos] + [eos] * (T - 2)  # "Paris" then stop
    post = [eos] * T  # stops at once
    ScriptedGreedy(m, {r.prompt: [eos] * 8, r.rephrase: [eos] * 8, r.loc_prompt: post}).install(monkeypatch)
    out = evaluate(Evaluator(m, "greedy"), m.model, [r], [{"loc": [pre]}], shortcut=False)
    prompt = m.encode_prompt(r.loc_prompt)
    pre_tail, post_tail = (prompt + [a, eos])[-k:], (prompt + [eos])[-k:]
    assert out["loc"] == pytest.approx(metrics.agreement(pre_tail, post_tail))
    # what comparing the EOS-padded outputs would have given: every position but the first agrees
    assert metrics.agreement(pre, post) == pytest.approx((T - 1) / T) != pytest.approx(out["loc"])


def test_greedy_stops_at_any_eos_id(tiny_model, zsre_records, monkeypatch):
    """A row that emits any of the model's EOS ids (generation config: one or a list) is finished:
    every later position holds `eos_id`, as HF `generate` pads finished rows."""
    m = tiny_model
    prompts = [m.encode_prompt(r.request.prompt) for r in zsre_records[:6]]
    free = Evaluator(m, "greedy").greedy(m.model, prompts, [6] * len(prompts))
    first = free[0][0]  # make the first token row 0 produces an EOS id
    stops = (m.eos_id, first)
    monkeypatch.setattr(m, "eos_ids", stops)
    out = Evaluator(m, "greedy").greedy(m.model, prompts, [6] * len(prompts))
    for g, f in zip(out, free):
        cut = next((i for i, t in enumerate(f) if t in stops), None)
        expected = f if cut is None else f[:cut + 1] + [m.eos_id] * (len(f) - cut - 1)
        assert g == expected
    assert out[0] == [first] + [m.eos_id] * 5
