"""The embedded model end to end (marked slow: `make test` and CI run them, `make test-fast`
skips them): the default job on a few edits, and the committed results reproduced exactly by
the code as it is now."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import read_rows, read_summary, run_cli, run_dirs  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "zsre" / "smollm2_135m"


def test_default_job_end_to_end(tmp_path):
    """`python -m editbench` with the defaults (HoReN, SmolLM2-135M-Instruct, ZsRE), 3 edits."""
    proc = run_cli("n_edits=3", "protocol.checkpoints=[1]", "threads=1", f"out_dir={tmp_path / 'out'}",
                   cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (d,) = run_dirs(tmp_path / "out")
    assert d.relative_to(tmp_path / "out").as_posix().startswith("zsre/smollm2_135m/horen/n3_s0")
    rows = read_rows(d)
    assert [r["N"] for r in rows] == [1, 3]
    for r in rows:
        assert (r["method"], r["model"], r["protocol_version"]) == ("HoReN", "smollm2_135m", 2)
        assert (r["hparams"]["threshold"], r["hparams"]["pooling_ratio"]) == (0.7, 0.6)  # editor_model pair
        assert r["metric_names"] == ["rel", "gen", "loc", "op"] and all(0 <= r[k] <= 1 for k in r["metric_names"])
        assert r["edit_layer"] == 26 and r["touched"] == ["26.mlp.down_proj"]
    assert read_summary(d)["status"] == "complete"
    assert "HoReN | smollm2_135m | zsre | greedy scoring" in proc.stdout
    assert (d / "records" / "step_000003.jsonl.gz").is_file()


def committed(editor_dir: str):
    runs = sorted((RESULTS / editor_dir).glob("n1000_s0_*")) if RESULTS.is_dir() else []
    return [pytest.param(r, id=f"{editor_dir}/{r.name}") for r in runs
            if any(row["N"] == 10 for row in read_rows(r))]


@pytest.mark.parametrize("run_dir", committed("horen") + committed("grace") + committed("ft"))
def test_committed_results_reproduce(run_dir, tmp_path):
    """The N=10 row of each committed 1K run (HoReN and its ablations, GRACE, FT-L) equals what
    the current code computes from the same command line, metric for metric."""
    ref = next(r for r in read_rows(run_dir) if r["N"] == 10)
    overrides = [o for o in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
                 if o.split("=")[0] not in ("n_edits", "out_dir", "threads", "resume")]
    proc = run_cli(*overrides, "n_edits=10", "threads=1", f"out_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (d,) = run_dirs(tmp_path / "out")
    (row,) = read_rows(d)
    assert row["method"] == ref["method"] and row["hparams"] == ref["hparams"]
    assert {k: row[k] for k in ("rel", "gen", "loc", "op", "n_eval")} == \
           {k: ref[k] for k in ("rel", "gen", "loc", "op", "n_eval")}
