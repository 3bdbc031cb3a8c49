"""`editbench rescore`: a run's kept checkpoints scored under another scoring mode equal a run
scored that way from the start, row for row and record for record."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_in_process, read_rows, read_summary, run_dirs  # noqa: E402

BASE = ["model=tiny_llama", "editor=horen", "n_edits=6", "protocol.checkpoints=[3]", "threads=1"]


def editbench(*args: str) -> tuple[int, str]:
    """`python -m editbench <args>` in this process: exit code and stderr."""
    p = run_in_process(*args)
    return p.returncode, p.stderr


def records(run: Path, n: int) -> list[dict]:
    with gzip.open(run / "records" / f"step_{n:06d}.jsonl.gz", "rt") as f:
        return [json.loads(x) for x in f]


@pytest.mark.parametrize("part", [1000, 4], ids=["one-piece", "in-parts"])
def test_rescored_checkpoints_equal_a_run_scored_that_way(tmp_path, monkeypatch, part):
    """Also when the evaluations come in parts (`run.EVAL_PART`; here N=6 is scored as 4 + 2
    cases): a rescore scores in the same parts as a run."""
    from editbench import run

    monkeypatch.setattr(run, "EVAL_PART", part)
    cache = f"cache_dir={tmp_path / 'cache'}"
    assert editbench(*BASE, "keep_checkpoints=grid", f"out_dir={tmp_path / 'g'}", cache)[0] == 0
    assert editbench(*BASE, "protocol=lifelong_v1_tf", f"out_dir={tmp_path / 't'}", cache)[0] == 0
    (greedy,), (tf,) = run_dirs(tmp_path / "g"), run_dirs(tmp_path / "t")
    assert sorted(p.name for p in (greedy / "ckpt").glob("step_*")) == ["step_000003", "step_000006"]
    rows_file = greedy / "metrics.jsonl"  # as if an older version of editbench had run the edits
    rows_file.write_text("".join(json.dumps({**r, "code_version": "0.0.1+old"}) + "\n" for r in read_rows(greedy)))
    code, err = editbench("rescore", str(greedy), "scoring=teacher_forced")
    assert code == 0, err
    out = greedy / "rescore" / "teacher_forced"
    from editbench.provenance import code_version
    assert {r["code_version"] for r in read_rows(out)} == {code_version()}  # what scored them: this code
    got, want = read_rows(out), read_rows(tf)
    keys = ("N", "rel", "gen", "loc", "op", "n_eval", "scoring")
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in want]
    assert got[0]["rescored_from"] == read_rows(greedy)[0]["run_id"] and read_summary(out)["status"] == "complete"
    for n in (3, 6):
        assert records(out, n) == records(tf, n)
    assert not (out / "eval_parts").exists()
    # one checkpoint again (step=N, the stream built to N only): its row replaced, the other's kept
    code, err = editbench("rescore", str(greedy), "scoring=teacher_forced", "step=3")
    assert code == 0, err
    assert [{k: r[k] for k in keys} for r in read_rows(out)] == [{k: r[k] for k in keys} for r in want]
    assert records(out, 3) == records(tf, 3) and (out / "references.json.gz").is_file()


def test_rescore_refuses_bad_input_in_one_line(tmp_path):
    assert editbench("rescore", str(tmp_path), "scoring=free")[0] == 2
    code, err = editbench("rescore", str(tmp_path), "scoring=fuzzy")
    assert code == 2 and err.strip().count("\n") == 0 and "fuzzy" in err
    assert editbench(*BASE, f"out_dir={tmp_path / 'g'}", f"cache_dir={tmp_path / 'cache'}")[0] == 0
    (run,) = run_dirs(tmp_path / "g")
    code, err = editbench("rescore", str(run), "scoring=free", "step=4")
    assert code == 2 and "no checkpoint at step 4" in err
    code, err = editbench("rescore", str(run), "scoring=greedy")
    assert code == 2 and "scored greedy already" in err
