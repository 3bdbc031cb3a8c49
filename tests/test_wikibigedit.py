"""The WikiBigEdit adapter (docs/protocol.md#portability-wikibigedit): the shipped records, the portability probe sets kept
out of OP, the unrelated prompts for editors that train on them, and one-line errors."""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import read_rows, run_cli, run_dirs
from editbench.data.wikibigedit import PACKAGED, WikiBigEdit
from editbench.errors import EditbenchError


@pytest.fixture(scope="module")
def wbe():
    d = WikiBigEdit()
    return d, d.records()


def test_shipped_records_and_probe_sets(wbe):
    d, recs = wbe
    raw = [json.loads(x) for x in PACKAGED.read_text().splitlines()]
    assert len(recs) == 1000 and d.info == {"source": "editbench:data/wikibigedit_first1000.jsonl",
                                            "sha256": hashlib.sha256(PACKAGED.read_bytes()).hexdigest(),
                                            "records_total": 1000, "usable": 1000, "with_mhop": 32}
    r0, c0 = raw[0], recs[0]
    assert (c0.id, c0.request.prompt, c0.request.target, c0.request.subject) == \
        ("wbe-00000", r0["update"], r0["ans"], r0["subject"])
    assert [(n, ps.scorer) for n, ps in c0.probes.items()] == \
        [("rel", "accuracy"), ("gen", "accuracy"), ("loc", "locality"), ("personas", "accuracy")]
    assert c0.probes["gen"].probes[0].prompt == r0["rephrase"]
    assert (c0.probes["loc"].probes[0].prompt, c0.probes["loc"].probes[0].answer) == (r0["loc"], r0["loc_ans"])
    assert c0.probes["personas"].probes[0].answer == r0["ans"]  # portability: the edit's own target
    with_mhop = [(c, r) for c, r in zip(recs, raw) if "mhop" in c.probes]
    assert len(with_mhop) == 32
    assert all(c.probes["mhop"].probes[0].answer == r["mhop_ans"] for c, r in with_mhop)
    assert WikiBigEdit.overall.parts == ("rel", "gen", "loc")  # portability never enters OP


def test_stream_is_file_order_by_default(wbe):
    _, recs = wbe
    assert [c.id for c in WikiBigEdit().stream(50)] == [c.id for c in recs[:50]]
    assert [c.id for c in WikiBigEdit(skip=10).stream(5)] == [c.id for c in recs[10:15]]
    assert [c.id for c in WikiBigEdit(order_seed=0).stream(50)] != [c.id for c in recs[:50]]
    with pytest.raises(EditbenchError, match="n_edits=1001 but only 1000 usable wikibigedit records"):
        WikiBigEdit().stream(1001)


def test_aux_prompts_come_from_zsre_nq_and_never_from_the_stream():
    stream = WikiBigEdit().stream(1000)
    evaluated = {p.prompt for c in stream for ps in c.probes.values() for p in ps.probes}
    aux = WikiBigEdit().aux(stream)
    assert len(aux) > 9_000 and not {q for q, _ in aux} & evaluated
    assert all(q.startswith("nq question: ") for q, _ in aux)
    assert WikiBigEdit(aux="outside_stream").aux(stream) == []  # the whole file is evaluated
    with pytest.raises(EditbenchError, match="data.aux='everything' is not one of"):
        WikiBigEdit(aux="everything")


@pytest.mark.parametrize("field", ["update", "ans", "rephrase", "personas", "loc", "loc_ans"])
def test_missing_fields_name_the_record_and_field(tmp_path, field):
    rec = json.loads(PACKAGED.read_text().splitlines()[3])
    rec[field] = ""
    p = tmp_path / "w.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    with pytest.raises(EditbenchError, match=f"wikibigedit record 0 \\(id=wbe-00003\\).*field '{field}' is missing"):
        WikiBigEdit(path=str(p)).records()


def test_a_run_reports_portability_beside_op(tmp_path):
    proc = run_cli("model=tiny_llama", "data=wikibigedit", "editor=grace", "n_edits=10", "protocol.checkpoints=[10]",
                   f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = run_dirs(tmp_path / "out")
    row = read_rows(run)[-1]
    assert row["metric_names"] == ["rel", "gen", "loc", "personas", "mhop", "op"]
    n_mhop = sum("mhop" in c.probes for c in WikiBigEdit().stream(10))
    assert row["n_mhop"] == n_mhop == 1 and row["n_eval"] == 10  # the portability set only some cases have
    assert row["data"] == "wikibigedit" and 0 <= row["personas"] <= 1 and 0 <= row["mhop"] <= 1
    from editbench.metrics import OP
    assert row["op"] == OP({k: row[k] for k in ("rel", "gen", "loc")})  # portability is not in OP
