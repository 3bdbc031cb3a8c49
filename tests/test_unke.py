"""UnKE (docs/protocol.md#free-text-metrics): the shipped records, free-text probe sets and their aggregation,
the unstructured protocol end to end, and long KV-cached generation through codebook editors."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import build_editor, read_rows, run_cli, run_dirs, spy
from editbench.data.records import EditCase, EditRequest, Probe, ProbeSet
from editbench.data.unke import SHIPPED, UnKE
from editbench.errors import EditbenchError


def test_shipped_sources():
    d = UnKE()
    recs = d.records()
    raw = [json.loads(x) for x in SHIPPED["unkebench"].read_text().splitlines()]
    assert len(recs) == 1002 and d.info["with_sub"] == d.info["with_para"] == 1002
    c, r = recs[0], raw[0]
    assert (c.request.prompt, c.request.target) == (r["question"], r["answer"])
    assert {n: ps.scorer for n, ps in c.probes.items()} == {"orig": "freetext", "para": "freetext",
                                                            "sub": "freetext_rouge"}
    assert c.probes["para"].probes[0] == Probe(r["para_question"], r["answer"])
    assert [(p.prompt, p.answer) for p in c.probes["sub"].probes] == list(zip(r["sub_question"], r["sub_answer"]))
    contest = UnKE(source="contest")
    assert len(contest.records()) == 200 and contest.info["with_sub"] == 10  # only 10 carry sub-answers
    assert contest.info["with_para"] == 100  # test set b has no paraphrases
    assert UnKE.overall is None


def test_bad_records_and_sources(tmp_path):
    rec = json.loads(SHIPPED["unkebench"].read_text().splitlines()[0])
    rec["sub_answer"] = rec["sub_answer"][:-1]
    p = tmp_path / "u.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    with pytest.raises(EditbenchError, match="sub_question and sub_answer must be lists .* of equal length"):
        UnKE(path=str(p)).records()
    rec["sub_answer"] = rec["sub_question"] = None
    rec["answer"] = " "
    p.write_text(json.dumps(rec) + "\n")
    with pytest.raises(EditbenchError, match="field 'answer' is missing or empty"):
        UnKE(path=str(p)).records()
    with pytest.raises(EditbenchError, match="data.source='v3' is not one of"):
        UnKE(source="v3")


def test_free_text_sets_average_within_a_case_first(tiny_model, monkeypatch):
    """Per metric: mean over a case's probes, then over cases (docs/protocol.md#free-text-metrics, sub)."""
    from editbench import textmetrics
    from editbench.evaluate import Evaluator

    given = iter([{"rouge1_r": 1.0}, {"rouge1_r": 0.0}, {"rouge1_r": 0.0},  # case a: 3 probes
                  {"rouge1_r": 0.5}])                                       # case b: 1 probe

    def fake(hyps, refs, encoder_path=None, embeddings=True):
        return [next(given) for _ in hyps]

    monkeypatch.setattr(textmetrics, "score_pairs", fake)
    sub = lambda n: ProbeSet("freetext_rouge", tuple(Probe(f"q{i}?", f"a{i}") for i in range(n)))  # noqa: E731
    cases = [EditCase(EditRequest("a", "q", "a"), {"sub": sub(3)}), EditCase(EditRequest("b", "q", "a"), {"sub": sub(1)})]
    ev = Evaluator(tiny_model, "greedy", batch_size=8, max_new_tokens=4)
    monkeypatch.setattr(ev, "_batched", lambda seqs, fn: [[5, 6, 7, 8]] * len(seqs))  # any 4 tokens
    s = ev.evaluate(tiny_model.model, cases, [{}, {}], None, None)
    assert s.metrics["sub_rouge1_r"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert s.names == ["sub_rouge1_r"] and "op" not in s.metrics


@pytest.fixture(scope="module")
def unke_run(tmp_path_factory):
    """A 3-edit GRACE run under the unstructured protocol on tiny_llama, records kept at N = 2 and 3."""
    tmp = tmp_path_factory.mktemp("unke")
    proc = run_cli("model=tiny_llama", "data=unke", "protocol=unstructured_v1", "editor=grace", "n_edits=3",
                   "protocol.max_new_tokens=12", "protocol.checkpoints=[2,3]", f"out_dir={tmp / 'out'}",
                   cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = run_dirs(tmp / "out")
    return run


def test_unstructured_protocol_end_to_end(unke_run):
    row = read_rows(unke_run)[-1]
    assert row["protocol"] == "unstructured_v1" and row["max_new_tokens"] == 12
    names = row["metric_names"]
    texts = ("sacrebleu", "bleu1_horen", "rouge1_r", "rouge2_r", "rougeL_r", "rouge1_f", "rouge2_f", "rougeL_f",
             "rouge1_r_horen", "rouge2_r_horen", "rougeL_r_horen")
    for split in ("orig", "para"):
        assert [n for n in names if n.startswith(split + "_")] == [
            f"{split}_{m}" for m in (*texts, "minilm_cosine", "bertscore_f")]
    assert [n for n in names if n.startswith("sub_")] == [f"sub_{m}" for m in texts if m.startswith("rouge")]
    assert "op" not in names and all(0 <= row[n] <= 1 + 1e-6 for n in names)


def _records(path):
    import gzip

    return [json.loads(x) for x in gzip.decompress(path.read_bytes()).decode().splitlines()]


def _strip(run, metrics):
    """`run` as if scored before `metrics` existed: gone from its records and rows."""
    import gzip

    for path in (run / "records").glob("step_*.jsonl.gz"):
        recs = [json.loads(x) for x in gzip.decompress(path.read_bytes()).decode().splitlines()]
        for r in recs:
            if isinstance(r["score"], dict):
                r["score"] = {k: v for k, v in r["score"].items() if k not in metrics}
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in recs).encode()))
    rows = read_rows(run)
    for row in rows:
        for k in [k for k in row if k.split("_", 1)[-1] in metrics]:
            del row[k]
        row["metric_names"] = [n for n in row["metric_names"] if n.split("_", 1)[-1] not in metrics]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_retext_adds_missing_metrics_from_kept_texts_and_refuses_texts_that_disagree(unke_run, tmp_path):
    """`editbench retext`: a run scored before the paper's ROUGE existed gets it from its kept
    output ids, equal to what scoring at run time gives; nothing else moves; a second pass adds
    nothing; a record whose text no longer gives its kept score is refused with nothing written."""
    import shutil

    from editbench.retext import retext

    run = tmp_path / "run"
    shutil.copytree(unke_run, run)
    full = read_rows(run)
    records = {p.name: _records(p) for p in (run / "records").glob("*.gz")}
    new = {"rouge1_r_horen", "rouge2_r_horen", "rougeL_r_horen"}
    _strip(run, new)
    assert "orig_rouge1_r_horen" not in read_rows(run)[-1]
    rows = retext(run, log=lambda *_: None)
    for before, after in zip(full, rows):
        assert after["retexted"]["added"] and set(after["retexted"]["added"]) == {
            f"{s}_{m}" for s in ("orig", "para", "sub") for m in new}
        assert after["metric_names"] == before["metric_names"]  # in the place scoring puts them
        assert {k: v for k, v in after.items() if k != "retexted"} == before  # the same values scoring gave
    assert read_rows(run) == rows
    for name, recs in records.items():  # records as scoring wrote them, metrics in scoring's order
        again = _records(run / "records" / name)
        assert again == recs and [list(r["score"]) for r in again] == [list(r["score"]) for r in recs]
    again = (run / "metrics.jsonl").read_bytes()
    retext(run, log=lambda *_: None)
    assert (run / "metrics.jsonl").read_bytes() == again  # nothing left to add
    _strip(run, new)
    import gzip

    path = run / "records" / "step_000003.jsonl.gz"
    recs = [json.loads(x) for x in gzip.decompress(path.read_bytes()).decode().splitlines()]
    recs[0]["score"]["rouge1_r"] += 0.25  # a kept score its text does not give
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in recs).encode()))
    kept = {p.name: p.read_bytes() for p in (run / "records").glob("*.gz")} | {"rows": (run / "metrics.jsonl").read_bytes()}
    with pytest.raises(EditbenchError, match="do not reproduce the run's scores; rescore or re-run"):
        retext(run, log=lambda *_: None)
    assert kept == {p.name: p.read_bytes() for p in (run / "records").glob("*.gz")} | {
        "rows": (run / "metrics.jsonl").read_bytes()}
    with pytest.raises(EditbenchError, match="is not a run directory"):
        retext(tmp_path, log=lambda *_: None)


@pytest.mark.parametrize("name", ["grace", "horen"])
def test_long_cached_generation_equals_uncached_through_codebook_editors(name, zsre_records):
    """Codebook editors inject at the query's last prompt token on the prefill pass only: a long
    KV-cached answer equals the uncached one token for token."""
    m, ed, _ = build_editor(name)
    for c in zsre_records[:3]:
        ed.edit([c.request])
    prompts = [m.encode_prompt(c.request.prompt) for c in zsre_records[:6]]
    cached = m.greedy(ed.module(), prompts, [48] * len(prompts))
    assert cached == m.greedy(ed.module(), prompts, [48] * len(prompts), use_cache=False)
    assert all(len(g) == 48 for g in cached)


# ----------------------------------------------------------------------------- the UnKE editor
def test_run_block_equals_the_block_inside_a_full_forward(tiny_model, zsre_records):
    m = tiny_model
    b = m.batch([m.encode_example(c.request.prompt, c.request.target) for c in zsre_records[:3]])
    h_in, h_out = m.prefix(b, layer=1).h, m.prefix(b, layer=2).h
    real = b.attention_mask.bool()
    torch.testing.assert_close(m.run_block(1, h_in, b)[real], h_out[real], rtol=1e-5, atol=1e-6)


def test_unke_writes_z_star_into_the_block_and_keeps_preservation_outputs(zsre_records, monkeypatch):
    m, ed, cases = build_editor("unke", "editor.optim_num_step=200", "editor.lr=1e-3")
    r = cases[0].request
    ids, n_prompt = m.encode_example(r.prompt, r.target)
    q = m.batch([(ids[:n_prompt], n_prompt)])
    X_q = m.prefix(q, layer=1).h
    with torch.no_grad():
        before = m.run_block(1, X_q, q)
    import editbench.editors.unke as unke_mod
    captured = spy(monkeypatch, unke_mod, "optimise_delta")
    ed.edit([r])
    with torch.no_grad():
        after = m.run_block(1, X_q, q)
    z_star = before[0, -1] + captured["result"].delta
    # the question's last position moved most of the way to z*; the other positions stayed close
    assert (after[0, -1] - z_star).norm() < 0.5 * (before[0, -1] - z_star).norm()
    assert (after[0, :-1] - before[0, :-1]).norm() < (after[0, -1] - before[0, -1]).norm()
    assert set(ed.deltas.delta) == {f"1.{n}" for n, _ in m.blocks[1].named_parameters()}
    assert ed.report()["preservation"] == "aux" and ed.report()["preservation_pool"] > 20


def test_unke_refuses_bad_preservation_settings():
    with pytest.raises(EditbenchError, match="editor.preservation='alpaca' is not 'aux' or 'hub:<dataset>'"):
        build_editor("unke", "editor.preservation=alpaca")
    with pytest.raises(EditbenchError, match="needs 50000 preservation examples but has"):
        build_editor("unke", "editor.ex_data_num=50000", n_cases=2)
