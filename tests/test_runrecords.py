"""The run-records format: where each checkpoint's records live, and their bytes."""
import gzip
import json

from editbench import runrecords
from editbench.checkpoint import RunStore

RECORDS = [{"case": "zsre-00007", "set": "rel", "i": 0, "score": 1.0, "ids": [412, 13], "out": " Paris."},
           {"case": "zsre-00007", "set": "loc", "i": 0, "score": 0.5, "ids": [9], "out": " é"}]


def test_store_writes_what_readers_read(tmp_path):
    store = RunStore(tmp_path)
    store.write_records(1000, RECORDS)
    store.write_records(20, RECORDS[:1])
    path = tmp_path / "records" / "step_001000.jsonl.gz"
    assert runrecords.path(tmp_path, 1000) == path
    with gzip.open(path, "rt", encoding="utf-8") as f:  # the documented format, read without the module
        assert [json.loads(line) for line in f] == RECORDS
    assert runrecords.read(path) == RECORDS
    assert runrecords.steps(tmp_path) == {20: runrecords.path(tmp_path, 20), 1000: path}
    assert list(runrecords.steps(tmp_path)) == [20, 1000]


def test_equal_records_give_equal_bytes():
    assert runrecords.encode(RECORDS) == runrecords.encode([dict(r) for r in RECORDS])
    assert runrecords.encode(RECORDS) != runrecords.encode(RECORDS[::-1])


def test_a_run_without_records_has_no_steps(tmp_path):
    assert runrecords.steps(tmp_path) == {}
