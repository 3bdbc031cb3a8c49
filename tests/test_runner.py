"""The runner end to end on the tiny models: result files, FT-L vs the unedited model, and resume
as a contract (STYLE G6): "run 0->N" equals "run 0->k, kill, resume->N", in-process and with a real
SIGKILL of `python -m editbench`."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from conftest import (CACHE_DIR, CONF, cli_cmd, cli_env, compose_config, read_rows, read_summary,  # noqa: E402
                      run_cli, run_dirs)

from editbench.data.zsre import ZsRE  # noqa: E402
from editbench.editors.ft import FineTune  # noqa: E402
from editbench.errors import EditbenchError  # noqa: E402
from editbench.run import checkpoint_grid, config_hash, eval_indices, run  # noqa: E402

BASE = ["model=tiny_llama", "n_edits=8", "protocol.checkpoints=[4]"]
FT = ["editor=ft", "editor.lr=0.01", "editor.n_iter=50"]  # strong enough to move Rel on a random model
FT_OTHER = ["editor=ft", "editor.lr=0.02", "editor.n_iter=50"]
EDITORS = sorted(p.stem for p in (CONF / "editor").glob("*.yaml"))
METRIC_FIELDS = ("N", "rel", "gen", "loc", "op", "n_eval")
SCHEMA_KEYS = {
    "N", "rel", "gen", "loc", "op", "n_eval", "edit_s_mean", "edit_s_total", "eval_s", "peak_mem_gb",
    "resident_mem_gb", "editor_params", "protocol_version", "scoring", "config_hash", "git_hash", "versions",
    "hardware", "hparams", "method", "schema", "run_id", "tag", "editor", "model", "data", "protocol", "seed", "n_edits",
    "edit_layer", "edit_module", "chat_template", "data_info", "time", "metric_names", "mem_device",
    "mem_growth_gb", "ckpt_mb", "cache_mb", "state_growth",
}


def metrics_of(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in METRIC_FIELDS} for r in rows]


def assert_same(a, b, where: str) -> None:
    """Recursive bit-exact equality of checkpoint payloads (tensors, containers, plain data)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                      and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b, where


def do_run(overrides: list[str], run_dir: Path) -> dict:
    return run(compose_config([*BASE, *overrides], out_dir=run_dir.parent), run_dir)


@pytest.fixture(autouse=True)
def _restore_sigterm():
    """run() installs a SIGTERM handler; keep it from outliving the test."""
    prev = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, prev)


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory) -> Path:
    """FT-L, tiny_llama, 8 edits, checkpoints at 4 and 8, uninterrupted (shared, read-only)."""
    prev = signal.getsignal(signal.SIGTERM)
    d = tmp_path_factory.mktemp("ft") / "run"
    do_run(FT, d)
    signal.signal(signal.SIGTERM, prev)
    return d


class SimulatedKill(BaseException):
    """A process death in the middle of an edit: nothing in editbench catches it (a SIGTERM or
    Ctrl-C is a clean stop instead: tests/test_faults.py)."""


@pytest.fixture
def interrupt_at(monkeypatch):
    """interrupt_at(k, cls=FineTune): cls.edit raises SimulatedKill on its k-th call (None: never);
    returns the log of record ids passed to edit."""
    calls: list[str] = []
    originals: dict[type, object] = {}

    def arm(k: int | None, cls=FineTune) -> list[str]:
        orig = originals.setdefault(cls, cls.edit)

        def edit(self, requests):
            calls.append(requests[0].id)
            if k is not None and len(calls) == k:
                raise SimulatedKill(f"killed during edit {k}")
            return orig(self, requests)

        monkeypatch.setattr(cls, "edit", edit)
        calls.clear()
        return calls

    return arm


# ----------------------------------------------------------------------------- unit pieces
@pytest.mark.parametrize("grid,n,expected", [
    ([10, 100, 500, 1000], 100, [10, 100]),
    ([10, 100, 500, 1000], 250, [10, 100, 250]),
    ([10, 100], 5, [5]),
    ([4], 8, [4, 8]),
    ([0, 4, 4, 8, 12], 8, [4, 8]),
    (["4", "2"], 8, [2, 4, 8]),
    ([], 3, [3]),
    ([10], 1, [1]),
])
def test_checkpoint_grid(grid, n, expected):
    assert checkpoint_grid(grid, n) == expected


def test_eval_indices():
    ret = OmegaConf.create({"mode": "all_so_far", "max_eval": None, "sample_seed": 0})
    assert eval_indices(5, ret, 5) == [0, 1, 2, 3, 4]
    ret.max_eval = 3
    assert eval_indices(3, ret, 3) == [0, 1, 2]
    s = eval_indices(10, ret, 10)
    assert len(s) == 3 and s == sorted(s) and set(s) <= set(range(10))
    assert eval_indices(10, ret, 10) == s  # seeded
    ret.mode = "last_k"
    with pytest.raises(EditbenchError, match="retention.mode"):
        eval_indices(10, ret, 10)


def test_config_hash_ignores_runtime_keys_only(tmp_path):
    h = config_hash(compose_config(BASE, out_dir=tmp_path))
    runtime = [["resume=never"], ["tag=calibration"], ["logger=wandb"]]
    if "threads" in compose_config(BASE):
        runtime.append(["threads=1"])
    for extra in runtime:
        assert config_hash(compose_config([*BASE, *extra], out_dir=tmp_path)) == h, extra
    assert config_hash(compose_config(BASE, out_dir=tmp_path / "elsewhere")) == h
    for extra in (["seed=1"], ["editor=ft"], ["data.order_seed=1"], ["protocol=lifelong_v1_tf"]):
        assert config_hash(compose_config([*BASE, *extra], out_dir=tmp_path)) != h, extra


def test_non_positive_n_edits(tmp_path):
    with pytest.raises(EditbenchError, match="n_edits=0"):
        run(compose_config(["n_edits=0"], out_dir=tmp_path), tmp_path / "run")


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_result_files(ft_run):
    rows = read_rows(ft_run)
    assert [r["N"] for r in rows] == [4, 8]
    for r in rows:
        assert SCHEMA_KEYS <= set(r), SCHEMA_KEYS - set(r)
        for k in ("rel", "gen", "loc", "op"):
            assert 0.0 <= r[k] <= 1.0
        assert r["n_eval"] == r["N"]
        assert r["method"] == "FT-L" and r["editor"] == "ft" and r["model"] == "tiny_llama"
        assert r["protocol"] == "lifelong_v1" and r["protocol_version"] == 2 and r["scoring"] == "greedy"
        assert r["hparams"]["lr"] == 0.01 and r["hparams"]["n_iter"] == 50 and "_target_" not in r["hparams"]
        assert r["editor_params"] == 128 * 64  # the layer-2 down_proj weight
        assert (r["edit_layer"], r["edit_module"]) == (2, "mlp.down_proj")
        assert len(r["config_hash"]) == 12 and set(r["versions"]) >= {"editbench", "torch", "transformers", "python"}
        assert r["hardware"]["cpu"] and r["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert r["hardware"]["gpu"] is None
        assert r["edit_s_total"] > 0 and r["edit_s_mean"] > 0 and r["eval_s"] > 0
        # CPU: the resident set and its growth over the model before the editor; no fake "peak"
        assert r["mem_device"] == "cpu" and r["peak_mem_gb"] is None and r["resident_mem_gb"] > 0
        assert abs(r["mem_growth_gb"]) < r["resident_mem_gb"]
    assert rows[1]["edit_s_total"] >= rows[0]["edit_s_total"]
    for r in rows:  # the checkpoint's own size on disk; the shared state cache's size
        assert r["ckpt_mb"] == (ft_run / "ckpt" / f"step_{r['N']:06d}" / "state.pt").stat().st_size / 2**20
        assert r["cache_mb"] > 0 and r["state_growth"] == "fixed"
    assert rows[0]["config_hash"] == rows[1]["config_hash"]
    summary = read_summary(ft_run)
    assert summary["status"] == "complete" and summary["done"] == 8 and summary["n_edits"] == 8
    assert summary["final"] == rows[-1]
    assert summary["data_info"]["usable"] == 10_037
    assert sorted(os.listdir(ft_run / "ckpt")) == ["step_000004", "step_000008"]  # the two newest, no temp dirs
    assert list((CACHE_DIR / "states").glob("tiny_llama-*.sqlite")), "unedited-model states go to cache_dir"
    assert all(r["metric_names"] == ["rel", "gen", "loc", "op"] for r in rows)


def test_per_record_files_and_diff(ft_run, tmp_path, capsys):
    """Each checkpoint keeps one record per scored probe; `editbench diff` finds where runs differ."""
    import gzip

    from editbench.diff import diff

    for r in read_rows(ft_run):
        with gzip.open(ft_run / "records" / f"step_{r['N']:06d}.jsonl.gz", "rt") as f:
            recs = [json.loads(x) for x in f]
        assert len(recs) == 3 * r["N"] and {x["set"] for x in recs} == {"rel", "gen", "loc"}
        for name in ("rel", "gen", "loc"):  # the row's metric is the mean of its records
            scores = [x["score"] for x in recs if x["set"] == name]
            assert r[name] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
    assert diff(ft_run, ft_run, out=open(os.devnull, "w"))
    other = tmp_path / "other"
    shutil.copytree(ft_run, other)
    path = other / "records" / "step_000008.jsonl.gz"
    with gzip.open(path, "rt") as f:
        recs = [json.loads(x) for x in f]
    recs[0]["score"], recs[0]["ids"], recs[0]["out"] = 1.0 - recs[0]["score"], [5], "changed"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(x) + "\n" for x in recs))
    capsys.readouterr()
    assert not diff(ft_run, other, show=1)
    out = capsys.readouterr().out
    assert "N=4: metrics equal; 0 of 12 records differ" in out
    assert "N=8: metrics equal; 1 of 24 records differ" in out and "'changed'" in out
    cli = run_cli("diff", str(ft_run), str(other), cwd=tmp_path)
    assert cli.returncode == 1 and "1 of 24 records differ" in cli.stdout
    bad = run_cli("diff", str(ft_run), str(tmp_path / "nope"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a run directory" in bad.stderr


def test_ft_beats_the_unedited_model(ft_run, tmp_path):
    do_run(["editor=none"], tmp_path / "none")
    none, ft = read_rows(tmp_path / "none"), read_rows(ft_run)
    print("Rel at N=4, 8: FT-L", [r["rel"] for r in ft], "unedited", [r["rel"] for r in none])
    assert [r["loc"] for r in none] == [1.0, 1.0]  # the unedited model agrees with its own cache
    assert [r["editor_params"] for r in none] == [0, 0] and none[0]["method"] == "Unedited"
    assert ft[-1]["rel"] > none[-1]["rel"], (ft[-1]["rel"], none[-1]["rel"])
    assert ft[-1]["rel"] >= 0.25


@pytest.mark.parametrize("editor", EDITORS)
def test_interrupted_then_resumed_equals_uninterrupted(editor, ft_run, tmp_path, interrupt_at):
    """Kill during the 6th edit (after the checkpoint at 4), resume -> every checkpoint row equals
    the uninterrupted run's. Every editor in conf/editor/: the RNG state must travel too (GRACE and
    HoReN draw random values at each edit)."""
    over = FT if editor == "ft" else [f"editor={editor}"]
    if editor == "ft":
        ref = read_rows(ft_run)
    else:
        do_run(over, tmp_path / "ref")
        ref = read_rows(tmp_path / "ref")
    cls = get_class(compose_config(over).editor._target_)
    d = tmp_path / "run"
    stream_ids = [r.id for r in ZsRE().stream(8)]
    calls = interrupt_at(6, cls)  # edits 1-5 happen; the kill comes during the 6th
    with pytest.raises(SimulatedKill):
        do_run(over, d)
    assert calls == stream_ids[:6]
    assert read_summary(d)["status"] == "running"
    rows = read_rows(d)
    assert [r["N"] for r in rows] == [4]
    assert metrics_of(rows) == metrics_of(ref)[:1]
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == ["step_000004"]

    calls = interrupt_at(None, cls)
    final = do_run(over, d)  # resume=auto is the default
    assert calls == stream_ids[4:], "resume must continue after the last checkpoint, not start over"
    assert read_summary(d)["status"] == "complete"
    assert metrics_of(read_rows(d)) == metrics_of(ref)
    assert {k: final[k] for k in METRIC_FIELDS} == metrics_of(ref)[-1]
    # finer than the metrics: the editor state and the RNG state at N=8 are bit-identical
    ref_dir = ft_run if editor == "ft" else tmp_path / "ref"
    a, b = (torch.load(x / "ckpt" / "step_000008" / "state.pt", weights_only=False) for x in (ref_dir, d))
    assert_same(a["editor"], b["editor"], "editor")
    assert_same(a["rng"]["torch"], b["rng"]["torch"], "rng")
    assert a["cursor"] == b["cursor"] == 8 and len(a["edit_s"]) == len(b["edit_s"]) == 8


def test_a_kill_during_an_evaluation_keeps_its_finished_parts(tmp_path, monkeypatch):
    """An evaluation of more than EVAL_PART cases keeps each finished part: a kill during the
    second part of N=8's evaluation, then a resume, scores only the parts not kept (the first is
    read back, the RNG as it was after it), and every row, record and the N=8 state equal an
    uninterrupted run's bit for bit. A part scored on another checkpoint state is not used."""
    from editbench import evaluate, run as run_mod, runrecords
    from editbench.checkpoint import rng_equal

    monkeypatch.setattr(run_mod, "EVAL_PART", 3)  # N=4: parts of 3 + 1 cases; N=8: 3 + 3 + 2
    over = ["editor=horen"]  # draws random numbers at each edit: the RNG must be right after the parts
    do_run(over, tmp_path / "ref")
    calls: list[list[str]] = []
    orig = evaluate.Evaluator.score_records

    def score_records(self, module, cases, refs, reuse_layer=None):
        calls.append([c.id for c in cases])
        if kill_at is not None and len(calls) == kill_at:
            raise SimulatedKill("killed during an evaluation part")
        return orig(self, module, cases, refs, reuse_layer)

    monkeypatch.setattr(evaluate.Evaluator, "score_records", score_records)
    d = tmp_path / "run"
    kill_at = 4  # N=4: calls 1, 2; N=8: part 0 is call 3 (kept), the kill comes in part 1
    with pytest.raises(SimulatedKill):
        do_run(over, d)
    ids = [r.id for r in ZsRE().stream(8)]
    assert calls == [ids[0:3], ids[3:4], ids[0:3], ids[3:6]]
    assert [r["N"] for r in read_rows(d)] == [4]
    assert sorted(p.name for p in (d / "eval_parts" / "step_000008").iterdir()) == ["part_00000.pt"]

    calls.clear()
    kill_at = None
    do_run(over, d)
    assert calls == [ids[3:6], ids[6:8]], "the kept part is read back, not scored again"
    assert not (d / "eval_parts").exists()
    assert metrics_of(read_rows(d)) == metrics_of(read_rows(tmp_path / "ref"))
    for n in (4, 8):
        assert runrecords.path(d, n).read_bytes() == runrecords.path(tmp_path / "ref", n).read_bytes()
    a, b = (torch.load(x / "ckpt" / "step_000008" / "state.pt", weights_only=False) for x in (tmp_path / "ref", d))
    assert_same(a["editor"], b["editor"], "editor")
    assert rng_equal(a["rng"], b["rng"])

    # a kept part of another checkpoint state (here: written for a state that is not N=8's) is scored again
    d2 = tmp_path / "run2"
    kill_at = 4
    calls.clear()
    with pytest.raises(SimulatedKill):
        do_run(over, d2)
    part = d2 / "eval_parts" / "step_000008" / "part_00000.pt"
    payload = torch.load(part, weights_only=False)
    torch.save({**payload, "state_sha256": "0" * 64}, part)
    calls.clear()
    kill_at = None
    do_run(over, d2)
    assert calls == [ids[0:3], ids[3:6], ids[6:8]]
    assert metrics_of(read_rows(d2)) == metrics_of(read_rows(tmp_path / "ref"))


def test_a_full_disk_during_an_evaluation_part_is_one_line_and_resumes(tmp_path, monkeypatch):
    """No room for an evaluation part: one line naming the folder and the fix; the summary never
    says complete; the same command then finishes with the uninterrupted rows."""
    from editbench import run as run_mod
    from editbench.checkpoint import RunStore

    monkeypatch.setattr(run_mod, "EVAL_PART", 3)
    orig, writes = RunStore.write_eval_part, []

    def full(self, step, k, part):
        writes.append((step, k))
        if len(writes) == 3:  # N=8's first part
            raise OSError(28, "No space left on device")
        return orig(self, step, k, part)

    monkeypatch.setattr(RunStore, "write_eval_part", full)
    d = tmp_path / "run"
    with pytest.raises(EditbenchError, match="No space left on device.*re-run the same command") as e:
        do_run(FT, d)
    assert "\n" not in str(e.value) and read_summary(d)["status"] != "complete"
    monkeypatch.setattr(RunStore, "write_eval_part", orig)
    do_run(FT, d)
    ref = tmp_path / "ref"
    do_run(FT, ref)
    assert metrics_of(read_rows(d)) == metrics_of(read_rows(ref))


def test_timed_checkpoints_bound_the_loss_of_a_kill_and_resume_exactly(ft_run, tmp_path, interrupt_at):
    """save_every_min also checkpoints between grid points (here after every edit): a kill during
    the 7th edit loses only that edit, the resumed run equals the uninterrupted one bit for bit,
    and the timed checkpoints add no metrics row (only grid checkpoints are evaluated)."""
    over = [*FT, "save_every_min=1e-9"]
    d = tmp_path / "run"
    stream_ids = [r.id for r in ZsRE().stream(8)]
    interrupt_at(7)
    with pytest.raises(SimulatedKill):
        do_run(over, d)
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == ["step_000005", "step_000006"]  # the newest two
    assert [r["N"] for r in read_rows(d)] == [4]
    assert read_summary(d)["done"] == 6

    calls = interrupt_at(None)
    do_run(over, d)
    assert calls == stream_ids[6:]
    rows = read_rows(d)
    assert metrics_of(rows) == metrics_of(read_rows(ft_run))
    assert rows[0]["config_hash"] == read_rows(ft_run)[0]["config_hash"]  # a runtime key
    a, b = (torch.load(x / "ckpt" / "step_000008" / "state.pt", weights_only=False) for x in (ft_run, d))
    assert_same(a["editor"], b["editor"], "editor")
    assert_same(a["rng"]["torch"], b["rng"]["torch"], "rng")
    assert a["rng"]["python"] == b["rng"]["python"]
    assert len(b["edit_s"]) == 8


def test_a_resume_reads_the_unedited_references_back(ft_run, tmp_path, interrupt_at, monkeypatch):
    """The unedited model's reference outputs are computed once, before the first edit, and kept in
    the run directory under a key of what they depend on: a resumed run reads them back instead of
    asking the evaluator again, with the same rows; a file kept under another key is computed again."""
    from editbench.evaluate import Evaluator

    d = tmp_path / "run"
    interrupt_at(6)
    with pytest.raises(SimulatedKill):
        do_run(FT, d)
    kept = json.loads(gzip.decompress((d / "references.json.gz").read_bytes()))
    asked = []
    orig = Evaluator.reference
    monkeypatch.setattr(Evaluator, "reference", lambda self, cases: asked.append(len(cases)) or orig(self, cases))
    assert kept == json.loads(gzip.decompress((ft_run / "references.json.gz").read_bytes()))
    interrupt_at(None)
    do_run(FT, d)
    assert asked == []
    assert metrics_of(read_rows(d)) == metrics_of(read_rows(ft_run))

    (d / "references.json.gz").write_bytes(gzip.compress(json.dumps({**kept, "key": "another"}).encode()))
    do_run(FT, d)  # a complete run: nothing to edit, but its references are built again
    assert asked == [8]
    assert json.loads(gzip.decompress((d / "references.json.gz").read_bytes())) == kept


def test_cold_and_warm_state_cache_give_the_same_rows(ft_run, tmp_path):
    """Unedited-model states in cache_dir are shared by runs (computed in other batches, padded
    differently): a run that starts with an empty cache and one that finds it full agree exactly."""
    cache = tmp_path / "cache"
    do_run([*FT, f"cache_dir={cache}"], tmp_path / "cold")
    assert list((cache / "states").glob("*.sqlite"))
    do_run([*FT, f"cache_dir={cache}"], tmp_path / "warm")
    cold, warm = read_rows(tmp_path / "cold"), read_rows(tmp_path / "warm")
    assert metrics_of(cold) == metrics_of(warm) == metrics_of(read_rows(ft_run))
    assert cold[0]["config_hash"] == read_rows(ft_run)[0]["config_hash"]  # cache_dir is a runtime key


def test_resume_of_a_complete_run_is_a_no_op(ft_run, tmp_path, interrupt_at):
    d = tmp_path / "run"
    shutil.copytree(ft_run, d)
    calls = interrupt_at(None)
    do_run(FT, d)
    assert calls == []
    assert read_rows(d) == read_rows(ft_run)
    assert read_summary(d)["status"] == "complete"


def test_resume_with_another_config_is_refused(ft_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(ft_run, d)
    before = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    with pytest.raises(EditbenchError) as e:
        do_run(FT_OTHER, d)
    msg = str(e.value)
    assert "\n" not in msg and "another config" in msg and str(d) in msg and "resume=never" in msg
    after = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert after == before, "a refused resume must not touch the run directory"


def test_resume_never_starts_over_cleanly(ft_run, tmp_path, interrupt_at):
    """resume=never (the fix the refusal above suggests) must not leave the old run's checkpoints:
    otherwise the old, newer step_000008 outlives the new run's step_000004 (keep_last prunes the
    new one) and a later resume=auto picks the stale checkpoint of another config."""
    d = tmp_path / "run"
    shutil.copytree(ft_run, d)
    interrupt_at(6)
    with pytest.raises(SimulatedKill):
        do_run([*FT_OTHER, "resume=never"], d)
    assert [r["N"] for r in read_rows(d)] == [4]
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == ["step_000004"]
    interrupt_at(None)
    do_run(FT_OTHER, d)  # resume=auto continues the new run
    assert [r["N"] for r in read_rows(d)] == [4, 8]


def test_unknown_resume_mode_is_refused(tmp_path):
    with pytest.raises(EditbenchError, match="resume"):
        run(compose_config(["editor=none", "n_edits=1", "resume=maybe"], out_dir=tmp_path), tmp_path / "run")


def test_teacher_forced_run(tmp_path):
    d = tmp_path / "run"
    do_run([*FT, "protocol=lifelong_v1_tf", "n_edits=4", "protocol.checkpoints=[2]",
            "protocol.retention.max_eval=3"], d)
    rows = read_rows(d)
    assert [r["N"] for r in rows] == [2, 4]
    assert [r["n_eval"] for r in rows] == [2, 3]  # a seeded sample of max_eval edits
    for r in rows:
        assert r["scoring"] == "teacher_forced" and r["protocol"] == "lifelong_v1_tf"
        for k in ("rel", "gen", "loc", "op"):
            assert 0.0 <= r[k] <= 1.0
    assert rows[-1]["rel"] > 0.5  # FT-L trains exactly the teacher-forced objective
    assert read_summary(d)["status"] == "complete"


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen2"])
def test_both_tiny_models_run(tmp_path, compose_cfg, model):
    d = tmp_path / "run"
    run(compose_cfg([f"model={model}", "editor=ft", "editor.n_iter=5", "n_edits=2", "protocol.checkpoints=[1]"]), d)
    rows = read_rows(d)
    assert [r["N"] for r in rows] == [1, 2]
    assert all(r["model"] == model for r in rows)
    assert read_summary(d)["status"] == "complete"


# ----------------------------------------------------------------------------- a real kill
def test_sigkill_then_cli_resume_equals_uninterrupted_cli_run(tmp_path):
    # no early stop: every edit takes all 50 steps, so the kill lands well inside edits 5..12
    args = ["model=tiny_llama", "editor=ft", "editor.lr=0.01", "editor.n_iter=50", "editor.stop_loss=0", "n_edits=12",
            "protocol.checkpoints=[4]"]
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    env = cli_env()
    ref = subprocess.Popen(cli_cmd(*args, f"out_dir={ref_out}"), cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(cli_cmd(*args, f"out_dir={out}"), cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("**/ckpt/step_000004")):
            assert victim.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    (d,) = {p.parents[1] for p in out.glob("**/ckpt/step_*")}
    assert not (d / "ckpt" / "step_000012").exists(), "killed too late: the run had finished"
    assert read_summary(d)["status"] == "running"
    # the checkpoint at 4 is saved before its evaluation: the kill may land during that evaluation
    # (no row yet: resuming evaluates it first) or after it (the row in metrics.jsonl, then in the
    # checkpoint's meta.json)
    meta_rows = [r["N"] for r in json.loads((d / "ckpt" / "step_000004" / "meta.json").read_text())["rows"]]
    assert meta_rows in ([], [4]) and [r["N"] for r in read_rows(d)] in ([], [4])

    resumed = run_cli(*args, f"out_dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "at edit 4" in resumed.stdout
    assert run_dirs(out) == [d]  # the same run directory, not a new one
    assert read_summary(d)["status"] == "complete"

    ref_stdout, ref_stderr = ref.communicate(timeout=240)
    assert ref.returncode == 0, ref_stderr[-2000:]
    (ref_dir,) = run_dirs(ref_out)
    assert ref_dir.relative_to(ref_out) == d.relative_to(out)
    assert [r["N"] for r in read_rows(ref_dir)] == [4, 12]
    assert metrics_of(read_rows(d)) == metrics_of(read_rows(ref_dir))
    assert read_rows(d)[-1]["config_hash"] == read_rows(ref_dir)[-1]["config_hash"]
    a, b = (torch.load(x / "ckpt" / "step_000012" / "state.pt", weights_only=False) for x in (ref_dir, d))
    assert_same(a["editor"], b["editor"], "editor")
    assert "FT-L | tiny_llama | zsre | greedy scoring" in ref_stdout  # the table printed at the end


# ----------------------------------------------------------------------------- core v2: setup, batches, code versions
def test_setup_runs_once_before_editing_and_is_timed(tmp_path, monkeypatch):
    """Editors get one setup call on the unedited model, with a cache dir, the seed and auxiliary
    prompts disjoint from every probe of the stream; the runner reports its time apart."""
    from editbench.editors.base import SetupContext

    seen = []
    monkeypatch.setattr(FineTune, "setup", lambda self, ctx: seen.append((ctx, self.weight.clone())))
    d = tmp_path / "run"
    do_run([*FT, "cache_dir=" + str(tmp_path / "cache")], d)
    (ctx, weight), = seen
    assert isinstance(ctx, SetupContext) and ctx.cache_dir == tmp_path / "cache" and ctx.seed == 0
    stream = ZsRE().stream(8)
    probes = {p.prompt for c in stream for ps in c.probes.values() for p in ps.probes}
    assert len(ctx.aux) > 9_000 and len(set(ctx.aux)) == len(ctx.aux)
    assert not {q for q, _ in ctx.aux} & probes  # NQ questions recur across records: by text
    from editbench.models import load_model
    fresh = load_model(compose_config(BASE).model).model.model.layers[2].mlp.down_proj.weight
    assert torch.equal(weight, fresh)  # setup saw the unedited model
    rows = read_rows(d)
    assert all(r["setup_s"] >= 0 for r in rows) and rows[0]["setup_s"] == rows[1]["setup_s"]


def test_batches_are_cut_at_checkpoints(tmp_path, monkeypatch):
    """The edit batch size is the editor's; a batch never straddles a checkpoint, so every
    checkpoint's N is exact (a batch of 3 with checkpoints at 4 and 8: 3, 1, 3, 1)."""
    sizes = []
    orig = FineTune.edit
    monkeypatch.setattr(FineTune, "batch_size", 3)
    monkeypatch.setattr(FineTune, "edit", lambda self, reqs: (sizes.append(len(reqs)), orig(self, reqs)))
    d = tmp_path / "run"
    do_run(FT, d)
    assert sizes == [3, 1, 3, 1]
    rows = read_rows(d)
    assert [r["N"] for r in rows] == [4, 8] and [r["n_eval"] for r in rows] == [4, 8]


def test_resume_across_a_code_change_needs_force(ft_run, tmp_path, interrupt_at, monkeypatch):
    import editbench.run as runner

    d = tmp_path / "run"
    interrupt_at(6)
    with pytest.raises(SimulatedKill):
        do_run(FT, d)
    interrupt_at(None)
    first = read_summary(d)["segments"]
    assert [s["from"] for s in first] == [0] and not first[0]["forced"]
    monkeypatch.setattr(runner, "code_version", lambda: "9.9.9+feedface0000")
    before = sorted(p.name for p in (d / "ckpt").iterdir())
    with pytest.raises(EditbenchError) as e:
        do_run(FT, d)
    msg = str(e.value)
    assert "\n" not in msg and "9.9.9+feedface0000" in msg and first[0]["code"] in msg and "resume=force" in msg
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == before
    do_run([*FT, "resume=force"], d)
    segments = read_summary(d)["segments"]
    assert segments == [first[0], {"from": 4, "code": "9.9.9+feedface0000", "forced": True,
                                   "hardware": first[0]["hardware"]}]
    assert metrics_of(read_rows(d)) == metrics_of(read_rows(ft_run))


def test_resume_on_other_hardware_opens_a_segment_and_says_so(tmp_path, interrupt_at, monkeypatch, capsys):
    """Floating-point kernels differ between CPUs / instruction sets: a run resumed elsewhere records
    the new hardware as a new stretch (same code, not forced) and prints one line naming both; a
    resume on the same hardware adds nothing."""
    import editbench.run as runner
    from editbench.provenance import hardware

    d = tmp_path / "run"
    interrupt_at(6)  # killed during edit 6: the checkpoint at 4 stays
    with pytest.raises(SimulatedKill):
        do_run(FT, d)
    (first,) = read_summary(d)["segments"]
    assert first["from"] == 0 and first["hardware"] == hardware(torch.device("cpu"))
    interrupt_at(1)  # the same machine: resumed at 4, killed during its first edit
    capsys.readouterr()
    with pytest.raises(SimulatedKill):
        do_run(FT, d)
    assert "other hardware" not in capsys.readouterr().out and read_summary(d)["segments"] == [first]
    elsewhere = {**first["hardware"], "cpu_capability": "OTHER_ISA"}
    monkeypatch.setattr(runner, "hardware", lambda device: elsewhere)
    interrupt_at(None)
    do_run(FT, d)
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "other hardware" in ln]
    assert "OTHER_ISA" in line and first["hardware"]["cpu_capability"] in line and "from edit 4 on" in line
    assert read_summary(d)["segments"] == [first, {"from": 4, "code": first["code"], "forced": False,
                                                   "hardware": elsewhere}]


def test_state_cache_is_per_entry_bounded_and_shared(tmp_path):
    """The unedited-state cache: entries round-trip bit-exactly (any dtype), a second handle (another
    run) sees what the first wrote, nothing is rewritten, and past max_gb nothing more is stored."""
    from editbench.cache import StateCache

    path = tmp_path / "states" / "m.sqlite"
    a, b = StateCache(path), StateCache(path)
    x = {(1, 2, 3): torch.randn(3, 8), (4,): torch.randn(1, 8).to(torch.bfloat16)}
    a.put_site(x)
    a.put_outputs({(1, 2, 5): [7, 8, 2]})
    got = b.get_site([(1, 2, 3), (4,), (9,)])
    assert set(got) == {(1, 2, 3), (4,)} and all(torch.equal(got[k], x[k]) and got[k].dtype == x[k].dtype for k in got)
    assert b.get_outputs([(1, 2, 5), (1, 2, 6)]) == {(1, 2, 5): [7, 8, 2]}
    b.put_site({(1, 2, 3): torch.zeros(3, 8)})  # present already: never overwritten
    assert torch.equal(a.get_site([(1, 2, 3)])[(1, 2, 3)], x[(1, 2, 3)])
    tiny = StateCache(tmp_path / "small.sqlite", max_gb=1e-9)
    tiny.put_site({(1,): torch.randn(1, 8)})
    assert tiny.full and tiny.get_site([(1,)]) == {}
