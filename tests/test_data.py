"""The ZsRE adapter: the packaged pool, usable-record accounting, the seeded stream, and one-line
errors for bad files."""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import probe
from editbench.data import EditCase, Probe
from editbench.data.zsre import PACKAGED_POOL, ZsRE
from editbench.errors import EditbenchError

POOL_TOTAL = 10_550
USABLE_ANSWER = 10_037  # records with an NQ locality question (zsre_pool.md)
NO_LOCALITY = 513  # the KnowEdit-only records
# Usable with target=alt: 2,550 records have an `alt` string, but two of them are "" (ids
# zsre-train-01661, zsre-train-04491), so 2,548 have a non-empty alt and 2,035 of those have
# locality. zsre_pool.md says 2,037 (it counts the two empty strings).
USABLE_ALT = 2_035


def good(i: int, **over) -> dict:
    r = {"id": f"t{i}", "src": f"Question {i}?", "rephrase": f"Rephrased question {i}?", "answers": [f"answer {i}"],
         "alt": f"alt {i}", "loc": f"nq question: loc {i}", "loc_ans": f"loc answer {i}", "subject": f"S{i}"}
    r.update(over)
    return {k: v for k, v in r.items() if v is not ...}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def pool():
    d = ZsRE()
    return d, d.records()


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    return msg


# ----------------------------------------------------------------------------- the packaged pool
def test_packaged_pool_loads(pool):
    d, recs = pool
    assert PACKAGED_POOL.is_file()
    assert len(d.raw) == POOL_TOTAL
    assert len(recs) == USABLE_ANSWER
    assert all(isinstance(r, EditCase) for r in recs)
    assert all(r.request.prompt and r.request.target and probe(r, "gen").prompt and probe(r, "loc").prompt
               and probe(r, "loc").answer for r in recs)
    assert len({r.id for r in recs}) == len(recs)
    first = d.raw[0]
    c = recs[0]
    assert c.request.prompt == first["src"] and c.request.target == first["answers"][0]  # target=answer: answers[0]
    assert c.request.subject == first["subject"] and c.id == first["id"]
    # the probe sets the evaluator scores, each naming its scorer; the request carries none of them
    assert {k: (v.scorer, v.probes) for k, v in c.probes.items()} == {
        "rel": ("accuracy", (Probe(first["src"], first["answers"][0]),)),
        "gen": ("accuracy", (Probe(first["rephrase"], first["answers"][0]),)),
        "loc": ("locality", (Probe(first["loc"], first["loc_ans"]),))}
    assert set(vars(c.request)) == {"id", "prompt", "target", "subject"}


def test_order_seed_null_streams_in_file_order(pool):
    d, recs = pool
    assert [c.id for c in ZsRE(order_seed=None).stream(30)] == [c.id for c in recs[:30]]
    assert [c.id for c in ZsRE(order_seed=None, skip=5).stream(10)] == [c.id for c in recs[5:15]]


def test_records_lacking_locality_are_counted_not_silent(pool):
    d, _ = pool
    assert d.info["records_total"] == POOL_TOTAL
    assert d.info["skipped_no_locality"] == NO_LOCALITY
    assert d.info["skipped_no_answer"] == 0
    assert d.info["usable"] == USABLE_ANSWER
    assert d.info["usable"] + d.info["skipped_no_locality"] + d.info["skipped_no_answer"] == POOL_TOTAL


def test_provenance_names_the_shipped_copy_by_package_place_and_any_file_by_content(pool, tmp_path, monkeypatch):
    d, _ = pool  # the shipped copy: not this checkout's absolute path (it differs per machine)
    assert d.info["source"] == "editbench:data/zsre_pool.jsonl"
    assert d.info["sha256"] == hashlib.sha256(PACKAGED_POOL.read_bytes()).hexdigest()
    path = write_jsonl(tmp_path / "z.jsonl", [good(0), good(1)])
    mine = ZsRE(path=path)
    mine.records()
    assert mine.info["source"] == str(path)
    assert mine.info["sha256"] == hashlib.sha256((tmp_path / "z.jsonl").read_bytes()).hexdigest()
    write_jsonl(tmp_path / "z.jsonl", [good(0), good(2)])  # same path, other records: another digest
    other = ZsRE(path=path)
    other.records()
    assert other.info["source"] == mine.info["source"] and other.info["sha256"] != mine.info["sha256"]
    monkeypatch.setenv("HOME", str(tmp_path))  # a ~ path: the digest is of the file the loader read
    home = ZsRE(path="~/z.jsonl")
    home.records()
    assert home.info == {**other.info, "source": "~/z.jsonl"}


def test_locality_accounting_in_a_small_file(tmp_path):
    path = write_jsonl(tmp_path / "z.jsonl", [good(0), good(1, loc=None), good(2, loc_ans=""), good(3)])
    d = ZsRE(path=path)
    assert [r.id for r in d.records()] == ["t0", "t3"]
    assert d.info["skipped_no_locality"] == 2 and d.info["usable"] == 2
    with pytest.raises(EditbenchError) as e:
        d.stream(3)
    msg = one_line(e)
    assert "n_edits=3" in msg and "only 2 usable" in msg and "2 lack a locality question" in msg


def test_stream_order_is_seeded():
    a = [r.id for r in ZsRE(order_seed=0).stream(50)]
    b = [r.id for r in ZsRE(order_seed=0).stream(50)]
    c = [r.id for r in ZsRE(order_seed=1).stream(50)]
    assert a == b
    assert a != c
    assert len(set(a)) == 50


def test_stream_is_a_permutation_not_file_order(pool):
    _, recs = pool
    assert [r.id for r in ZsRE().stream(20)] != [r.id for r in recs[:20]]


def test_a_longer_stream_extends_a_shorter_one():
    short, long_ = ZsRE().stream(10), ZsRE().stream(100)
    assert long_[:10] == short


def test_skip_gives_a_disjoint_slice():
    head = ZsRE(skip=0).stream(40)
    tail = ZsRE(skip=20).stream(20)
    assert {r.id for r in tail}.isdisjoint({r.id for r in head[:20]})
    assert tail == head[20:40]


def test_info_records_order_seed_and_skip():
    d = ZsRE(order_seed=3, skip=7)
    d.stream(5)
    assert d.info["order_seed"] == 3 and d.info["skip"] == 7


def test_whole_pool_can_be_streamed_but_not_one_more():
    assert len(ZsRE().stream(USABLE_ANSWER)) == USABLE_ANSWER
    with pytest.raises(EditbenchError) as e:
        ZsRE().stream(USABLE_ANSWER + 1)
    msg = one_line(e)
    assert f"n_edits={USABLE_ANSWER + 1}" in msg and f"only {USABLE_ANSWER} usable" in msg


def test_skip_reduces_what_is_available():
    with pytest.raises(EditbenchError) as e:
        ZsRE(skip=USABLE_ANSWER - 5).stream(6)
    msg = one_line(e)
    assert "only 5 usable" in msg and f"skip={USABLE_ANSWER - 5}" in msg


# ----------------------------------------------------------------------------- target=alt
def test_alt_targets(pool):
    d = ZsRE(target="alt")
    recs = d.records()
    assert len(recs) == USABLE_ALT == d.info["usable"]
    assert d.info["skipped_no_alt"] == 8_002  # 8,000 null + 2 empty-string alts
    assert d.info["skipped_no_alt"] + d.info["skipped_no_locality"] + d.info["usable"] == POOL_TOTAL
    by_id = {r["id"]: r for r in pool[0].raw}
    assert all(r.request.target == by_id[r.id]["alt"] for r in recs)


def test_alt_refuses_a_stream_longer_than_the_records_with_alt():
    assert len(ZsRE(target="alt").stream(USABLE_ALT)) == USABLE_ALT
    with pytest.raises(EditbenchError) as e:
        ZsRE(target="alt").stream(USABLE_ALT + 1)
    msg = one_line(e)
    assert f"n_edits={USABLE_ALT + 1}" in msg
    assert f"only {USABLE_ALT} usable" in msg and "'alt'" in msg
    assert "lack the target" in msg


def test_unknown_target_is_rejected():
    with pytest.raises(EditbenchError, match="data.target"):
        ZsRE(target="gold")


# ----------------------------------------------------------------------------- bad files
def test_malformed_record_names_index_and_field(tmp_path):
    rows = [good(0), good(1), good(2, rephrase=...), good(3)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    d = ZsRE(path=path)
    with pytest.raises(EditbenchError) as e:
        d.stream(2)
    msg = one_line(e)
    assert "record 2" in msg and "id=t2" in msg and "'rephrase'" in msg and path in msg


@pytest.mark.parametrize("field,value", [("src", ""), ("answers", []), ("answers", ...), ("rephrase", "   ")])
def test_missing_or_empty_required_fields(tmp_path, field, value):
    path = write_jsonl(tmp_path / "bad.jsonl", [good(0), good(1, **{field: value})])
    with pytest.raises(EditbenchError) as e:
        ZsRE(path=path).stream(1)
    msg = one_line(e)
    assert "record 1" in msg and f"'{field}'" in msg


def test_json_list_files_are_read(tmp_path):
    p = tmp_path / "list.json"
    p.write_text(json.dumps([good(0), good(1, answers="plain string")], indent=2))
    recs = ZsRE(path=str(p)).records()
    assert [r.request.target for r in recs] == ["answer 0", "plain string"]


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(EditbenchError) as e:
        ZsRE(path=str(missing))
    msg = one_line(e)
    assert str(missing) in msg and "not found" in msg


@pytest.mark.parametrize("text", ["{not json}\n", '[{"src": "a",}]', '{"id": 1}\n{"id": 2\n'])
def test_invalid_json(tmp_path, text):
    p = tmp_path / "broken.jsonl"
    p.write_text(text)
    with pytest.raises(EditbenchError) as e:
        ZsRE(path=str(p))
    msg = one_line(e)
    assert str(p) in msg and "not valid JSON" in msg


def test_invalid_jsonl_names_the_bad_line(tmp_path):
    """A JSONL file is parsed line by line, so the error must give the *file* line of the bad record
    (json's own lineno is always 1 for a one-line string)."""
    p = tmp_path / "broken.jsonl"
    p.write_text(json.dumps(good(0)) + "\n" + json.dumps(good(1)) + "\n" + '{"id": "t2", "src": \n')
    with pytest.raises(EditbenchError) as e:
        ZsRE(path=str(p))
    assert "line 3" in one_line(e)


def test_rows_must_be_objects(tmp_path):
    p = tmp_path / "scalars.json"
    p.write_text("[1, 2, 3]")
    with pytest.raises(EditbenchError, match="JSON objects"):
        ZsRE(path=str(p))


def test_empty_file_gives_an_n_edits_error(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    with pytest.raises(EditbenchError) as e:
        ZsRE(path=str(p)).stream(1)
    assert "only 0 usable" in one_line(e)


def test_aux_prompts_are_disjoint_from_the_stream_unless_reuse_is_asked_for():
    stream = ZsRE().stream(200)
    evaluated = {p.prompt for c in stream for ps in c.probes.values() for p in ps.probes}
    aux = ZsRE().aux(stream)
    assert len(aux) > 9_000 and len(set(aux)) == len(aux) and not {q for q, _ in aux} & evaluated
    assert aux == ZsRE().aux(stream)  # seeded order
    own = ZsRE(aux="own_loc").aux(stream)
    assert own == [(probe(c, "loc").prompt, probe(c, "loc").answer) for c in stream]
    with pytest.raises(EditbenchError, match="data.aux"):
        ZsRE(aux="everything")
