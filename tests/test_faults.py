"""The fault suite (`make faults`): what happens to a run when things go wrong.

- bad input: a catalogue of command lines and data files, each one line on stderr, exit 2, and
  nothing left under out_dir (checked in-process through `editbench.__main__.main`, the same code
  path as the console script);
- one run per directory: a second start is refused naming the holder; a lock left by kill -9 is
  taken over;
- SIGTERM / SIGINT / SIGHUP: stop at the next safe point, one line, exit 143 / 130 / 129, resume
  equals an uninterrupted run; SIGUSR2 (SLURM / submitit before a time limit): the same, summary
  `requeued`, exit 140, or the requeue handler installed before the run's (submitit's) runs (a
  refused requeue leaves it `stopped`); SIGTERM of a job SLURM requeued: `requeued`;
- a stop during a checkpoint's evaluation: the evaluation is redone on resume; an error mid-run:
  summary.json says `failed`, never `running`;
- caches: a corrupt or wrong-shaped statistics file is recomputed, a corrupt state-cache SQLite
  file recreated, each in one line;
- `editbench diff` refuses runs of another dataset, protocol or stream; the report counts a run
  with a truncated metrics line as partial and leaves no outputs of deleted runs;
- durable checkpoints: a corrupt newest checkpoint falls back to the previous one; a disk full
  while writing one leaves the previous one intact;
- kill -9 at 10 seeded random moments of a run: each resumed run's metrics equal the
  uninterrupted run's.

Tests marked `faults` (the kill -9 series, SIGINT / SIGHUP / SIGUSR2 to a subprocess, two
concurrent starts) run only in `make faults`; the rest run in CI as part of `make test`.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import cli_cmd, cli_env, compose_config, read_rows, read_summary, run_cli, run_dirs  # noqa: E402

import editbench.checkpoint as checkpoint_module  # noqa: E402
from editbench.__main__ import main  # noqa: E402
from editbench.checkpoint import RunLock  # noqa: E402
from editbench.errors import EditbenchError  # noqa: E402
from editbench.run import run  # noqa: E402
from editbench.validate import run_dir_suffix  # noqa: E402

METRICS = ("N", "rel", "gen", "loc", "op", "n_eval")
# FT-L with no early stop: every edit takes its 30 steps, so signals land inside the edit stream
SLOW_FT = ["model=tiny_llama", "editor=ft", "editor.lr=0.01", "editor.n_iter=30", "editor.stop_loss=0",
           "threads=1"]


def metrics(run_dir: Path) -> list[dict]:
    return [{k: r[k] for k in METRICS} for r in read_rows(run_dir)]


def record(i: int, **kw) -> dict:
    r = {"id": f"t{i}", "src": f"Question {i}?", "rephrase": f"Rephrased {i}?", "answers": [f"a{i}"],
         "loc": f"nq question: l{i}", "loc_ans": f"b{i}"}
    return {**r, **kw}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ----------------------------------------------------------------------------- the bad-input catalogue
def _empty_dir(tmp: Path) -> str:
    (tmp / "empty_model").mkdir()
    return str(tmp / "empty_model")


def _read_only(tmp: Path) -> str:
    d = tmp / "read_only"
    d.mkdir()
    d.chmod(0o555)
    return str(d / "out")


# id -> (arguments (callables get the tmp dir), substrings the error line must hold)
CATALOGUE = {
    # reported in the hardening issue
    "negative_skip": (["data.skip=-1"], ["data.skip=-1", "greater than or equal to 0"]),
    "typo_key": (["editor.treshold=0.5"], ["editor.treshold", "did you mean editor.threshold"]),
    "typo_key_appended": (["+editor.treshold=0.5"], ["editor.treshold", "did you mean editor.threshold"]),
    "typo_top_level_appended": (["+n_edit=10"], ["n_edit", "did you mean n_edits"]),
    "nan_threshold": (["editor.threshold=nan"], ["editor.threshold=nan", "finite"]),
    "word_threshold": (["editor.threshold=high"], ["editor.threshold='high'", "valid number"]),
    "zero_eval_batch": (["protocol.eval_batch_size=0"], ["protocol.eval_batch_size=0", "greater than 0"]),
    "zero_n_iter": (["editor.n_iter=0"], ["editor.n_iter=0", "greater than 0"]),
    "zero_max_eval": (["protocol.retention.max_eval=0"], ["protocol.retention.max_eval=0", "greater than 0"]),
    "huge_prompt": (lambda t: [f"data.path={write_jsonl(t / 'long.jsonl', [record(0, src='word ' * 20_000)])}",
                               "n_edits=1"], ["record t0", "context length (512)"]),
    "non_utf8_file": (lambda t: [f"data.path={_latin1(t)}", "n_edits=1"], ["latin1.jsonl", "not UTF-8", "0xf9 at offset 22"]),
    "empty_model_path": (lambda t: ["model=qwen25_7b", f"model.path={_empty_dir(t)}"],
                         ["model.path=", "no config.json"]),
    "read_only_out_dir": (lambda t: [f"out_dir={_read_only(t)}"], ["out_dir=", "cannot be written"]),
    "out_dir_under_a_file": (lambda t: [f"out_dir={_text(t, 'a_file', 'x')}/out"], ["out_dir=", "cannot be written"]),
    "cuda_on_cpu": (["model.device=cuda"], ["model.device=cuda", "model.device=cpu"]),
    "checkpoint_at_zero": (["protocol.checkpoints=[0,1,2]"], ["protocol.checkpoints.0=0", "greater than 0"]),
    # already handled before the hardening issue
    "unknown_editor": (["editor=hoern"], ["unknown editor 'hoern'", "did you mean horen"]),
    "unknown_model": (["model=smollm"], ["unknown model 'smollm'"]),
    "unknown_data": (["data=zrse"], ["unknown data 'zrse'"]),
    "unknown_protocol": (["protocol=lifelong"], ["unknown protocol 'lifelong'"]),
    "missing_data_file": (["data.path=/nonexistent/records.jsonl"], ["/nonexistent/records.jsonl", "not found"]),
    "empty_data_file": (lambda t: [f"data.path={write_jsonl(t / 'empty.jsonl', [])}", "n_edits=1"],
                        ["n_edits=1", "only 0 usable"]),
    "invalid_json": (lambda t: [f"data.path={_text(t, 'broken.jsonl', chr(123) + ' bad')}"],
                     ["broken.jsonl", "not valid JSON"]),
    "missing_field": (lambda t: [f"data.path={write_jsonl(t / 'nofield.jsonl', [_without(record(0), 'rephrase')])}",
                                 "n_edits=1"], ["record 0", "'rephrase'"]),
    "empty_answer": (lambda t: [f"data.path={write_jsonl(t / 'noanswer.jsonl', [record(0, answers=[''])])}",
                                "n_edits=1"], ["record 0", "'answers'"]),
    "n_edits_beyond_data": (["n_edits=20000"], ["n_edits=20000", "10037"]),
    "paper_model_without_hub": (["model=llama31_8b"], ["llama31_8b", "model.path="]),
    "zero_n_edits": (["n_edits=0"], ["n_edits=0", "greater than 0"]),
    "word_n_edits": (["n_edits=abc"], ["n_edits='abc'"]),
    "unknown_resume": (["resume=maybe"], ["resume='maybe'", "'auto'"]),
    "zero_threads": (["threads=0"], ["threads=0"]),
    "negative_cache_cap": (["cache_max_gb=-1"], ["cache_max_gb=-1"]),
    "negative_save_interval": (["save_every_min=-5"], ["save_every_min=-5"]),
    "pooling_ratio_zero": (["editor.pooling_ratio=0"], ["editor.pooling_ratio=0", "greater than 0"]),
    "unknown_choice": (["editor=grace", "editor.eps_expand=wide"], ["editor.eps_expand='wide'", "coverage"]),
    "logger_mode": (["logger=wandb", "logger.mode=sometimes"], ["logger.mode='sometimes'", "offline"]),
    "bad_scoring": (["protocol.scoring=beam"], ["protocol.scoring='beam'", "greedy"]),
    "bad_dtype": (["model.dtype=float8"], ["model.dtype='float8'"]),
    "bad_device": (["model.device=gpu"], ["model.device='gpu'"]),
    "negative_layer": (["model.edit_site.layer=-1"], ["model.edit_site.layer=-1"]),
    # reported in issue #40
    "model_path_on_a_tiny_model": (["model.path=/nonexistent"], ["model.path=/nonexistent", "drop model.path"]),
    "model_path_on_the_default_model": (["model=smollm2_135m", "model.path=/nonexistent"],
                                        ["model.path=/nonexistent", "GGUF file"]),
    "edit_site_without_model": (["edit_site.layer=99"], ["'edit_site.layer'", "did you mean model.edit_site.layer?"]),
    "records_under_a_key": (lambda t: [f"data.path={_text(t, 'keyed.json', json.dumps({'records': [record(0)]}))}"],
                            ["keyed.json", "1 records under 'records'", "jq"]),
    "single_record_object": (lambda t: [f"data.path={_text(t, 'one.json', json.dumps(record(0), indent=1))}"],
                             ["one.json", "holds one JSON object, not a list of records"]),
    "duplicate_ids": (lambda t: [f"data.path={write_jsonl(t / 'dup.jsonl', [record(0), record(1), record(0)])}",
                                 "n_edits=2"], ["record id 't0' appears twice", "records 0 and 2"]),
    "too_many_threads": (["threads=100000"], ["threads=100000", "CPUs this process may use"]),
    "retired_protocol_version": (["protocol.version=1"], ["protocol.version=1", "not a setting"]),
    "zsre_under_the_unstructured_protocol": (["protocol=unstructured_v1"],
                                             ["data=zsre", "not unstructured_v1", "protocol=lifelong_v1"]),
    "unke_under_the_default_protocol": (["data=unke"], ["data=unke", "not lifelong_v1", "protocol=unstructured_v1"]),
    "non_ascii_path": (["data.path=/tmp/dätä.jsonl"], ["data.path", '\'data.path="/tmp/dätä.jsonl"\'', "quote"]),
    "unquoted_space": (["data.path=/tmp/my", "data.jsonl"], ["'data.jsonl'", "not key=value", "quoted"]),
}


def _latin1(tmp: Path) -> str:
    p = tmp / "latin1.jsonl"
    p.write_bytes(json.dumps(record(0, src="Où est la café?"), ensure_ascii=False).encode("latin1") + b"\n")
    return str(p)


def _text(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def _without(r: dict, key: str) -> dict:
    return {k: v for k, v in r.items() if k != key}


def editbench(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`editbench <args>` in-process: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["editbench", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input_is_one_line_and_leaves_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args, expect = CATALOGUE[case]
    if case == "cuda_on_cpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    if case == "read_only_out_dir" and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    args = args(tmp_path) if callable(args) else args
    base = ["model=tiny_llama", "n_edits=2", f"out_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"]
    code, err = editbench(monkeypatch, capsys, *base, *args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("editbench: error: "), err
    for text in expect:
        assert text in lines[0], lines[0]
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*")), f"left behind: {sorted(out.rglob('*'))}"


def test_the_catalogue_is_at_least_thirty_cases():
    assert len(CATALOGUE) >= 30


@pytest.mark.parametrize("key", [None, "0123456789abcdef"])
def test_wandb_online_without_a_key_or_server_is_refused_before_the_model_loads(key, tmp_path, monkeypatch, capsys):
    """Online W&B with no API key, or with one but no reachable server: one line before anything
    loads (wandb.init would retry for minutes, then fail mid-run with a "running" run directory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NETRC", str(tmp_path / "no.netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.delenv("WANDB_MODE", raising=False)
    if key:
        monkeypatch.setenv("WANDB_API_KEY", key)
    else:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    code, err = editbench(monkeypatch, capsys, "model=tiny_llama", "n_edits=2", f"out_dir={tmp_path / 'out'}",
                          "logger=wandb", "logger.mode=online")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "logger.mode=online" in lines[0] and "logger.mode=offline" in lines[0]
    assert ("no W&B API key" if key is None else "127.0.0.1:9 cannot be reached") in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_wandb_mode_from_the_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_config(["logger=wandb"]).logger.mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert compose_config(["logger=wandb"]).logger.mode == "offline"
    assert compose_config(["logger=wandb", "logger.mode=online"]).logger.mode == "online"


def test_wandb_rows_are_logged_once_across_a_resume(tmp_path, monkeypatch):
    """A resumed run (a stop, a SLURM requeue) logs to the same W&B run id only the rows it does not
    have: offline, each start is its own `offline-run-*` directory of that id, and a row logged
    again would be in the history twice. A row recomputed since (another time) is logged again."""
    import types

    from editbench.loggers import WandbLogger

    runs = []

    class FakeRun:
        def __init__(self, id, **kw):
            self.id, self.logged = id, []
            runs.append(self)

        def log(self, row, step=None, commit=None):
            self.logged.append(step)

        def mark_preempting(self):
            pass

        def finish(self, exit_code=None):
            pass

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=FakeRun, teardown=lambda: None))
    rows = [{"N": n, "rel": 0.5, "time": f"t{n}"} for n in (2, 4, 6)]
    first = WandbLogger()
    first.start(tmp_path, {}, "abcdef123456")
    for row in rows[:2]:
        first.log(row)
    first.stop()
    again = WandbLogger()  # the requeued job: the runner logs the rows it resumed with, then new ones
    again.start(tmp_path, {}, "abcdef123456")
    for row in [*rows[:2], rows[2], {**rows[1], "time": "t4-redone"}]:
        again.log(row)
    assert runs[0].id == runs[1].id and runs[0].logged == [2, 4] and runs[1].logged == [6, 4]


def test_diff_refuses_runs_of_another_dataset_or_protocol(tmp_path, monkeypatch, capsys):
    row = {"N": 2, "rel": 0.5, "metric_names": ["rel"], "data": "zsre", "protocol": "lifelong_v1",
           "protocol_version": 2, "scoring": "greedy", "max_new_tokens": 512, "data_info": {"order_seed": 0, "skip": 0}}
    for name, other in [("a", {}), ("b", {"data": "unke", "protocol": "unstructured_v1"}),
                        ("c", {"protocol_version": 1}), ("d", {"data_info": {"order_seed": 1, "skip": 0}})]:
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "metrics.jsonl", [{**row, **other}])
    for other, expect in [("b", "different datasets (data zsre vs unke)"), ("c", "protocol_version 2 vs 1"),
                          ("d", "different orders")]:
        code, err = editbench(monkeypatch, capsys, "diff", str(tmp_path / "a"), str(tmp_path / other))
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and expect in lines[0], err


# ----------------------------------------------------------------------------- run-directory names
def test_run_dir_names_are_short_and_shell_safe():
    long = "protocol.checkpoints=[" + ",".join(map(str, range(1, 101))) + "]"
    s = run_dir_suffix(long)
    assert len(s) <= 65 and set(s) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
    assert s != run_dir_suffix(long.replace("100]", "99]"))  # the hash keeps distinct overrides apart
    assert run_dir_suffix("editor.n_iter=50,experiment=zsre_1k") == "_editor.n_iter-50+experiment-zsre_1k"
    assert run_dir_suffix("data.path=/a b/c*.jsonl") == "_data.path-%a_b%c_.jsonl"
    assert run_dir_suffix("") == ""


def test_a_long_checkpoint_list_runs_in_a_short_directory(tmp_path):
    grid = "[" + ",".join(map(str, range(1, 101))) + "]"
    proc = run_cli("model=tiny_llama", "editor=none", "n_edits=3", f"protocol.checkpoints={grid}",
                   f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (d,) = run_dirs(tmp_path / "out")
    assert len(d.name) < 80 and "[" not in d.name and "," not in d.name
    assert f"protocol.checkpoints={grid}" in (d / ".hydra" / "overrides.yaml").read_text()
    assert [r["N"] for r in read_rows(d)] == [1, 2, 3]
    assert read_summary(d)["done"] == 3


# ----------------------------------------------------------------------------- one run per directory
def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(EditbenchError, match=rf"is in use by another run \(pid {os.getpid()} on "):
            RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run"):  # released: free again
        pass


def test_a_stale_lock_is_taken_over(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text("pid 4242 on elsewhere since 2026-01-01T00:00:00")
    with RunLock(tmp_path / "run"):
        pass
    assert "taking over the lock of a run that ended without releasing it (pid 4242" in capsys.readouterr().out


def test_a_refused_resume_changes_nothing(tmp_path):
    """Another config in the same directory: refused before the model loads; the old run's config
    record, rows and checkpoints are untouched."""
    cfg = compose_config(["editor=none", "n_edits=2"], out_dir=tmp_path)
    d = tmp_path / "run"
    run(cfg, d, overrides=["editor=none", "n_edits=2"])
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".lock"}
    other = compose_config(["editor=none", "n_edits=2", "seed=1"], out_dir=tmp_path)
    with pytest.raises(EditbenchError, match="holds a run with another config"):
        run(other, d, overrides=["seed=1"])
    after = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


# ----------------------------------------------------------------------------- durable checkpoints
def _ft_cfg(tmp_path, *extra):
    return compose_config([*SLOW_FT[1:], "n_edits=8", "protocol.checkpoints=[2,4,6]", *extra], out_dir=tmp_path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("reference") / "run"
    run(_ft_cfg(d.parent), d)
    return d


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(reference, tmp_path, capsys):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(reference, d)
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == ["step_000006", "step_000008"]  # the two newest
    state = d / "ckpt" / "step_000008" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    run(_ft_cfg(tmp_path), d)
    out = capsys.readouterr().out
    assert "checkpoint step_000008 is corrupt" in out and "resuming from step_000006" in out
    assert "resuming" in out and "at edit 6" in out
    assert metrics(d) == metrics(reference)


def test_a_corrupt_only_checkpoint_is_one_line(reference, tmp_path):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(reference, d)
    shutil.rmtree(d / "ckpt" / "step_000006")
    (d / "ckpt" / "step_000008" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EditbenchError, match="is corrupt .* no older one — start over with resume=never"):
        run(_ft_cfg(tmp_path), d)


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(reference, tmp_path, monkeypatch):
    real_save = checkpoint_module.torch.save

    def full_disk(obj, f):
        if obj["cursor"] == 6:
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    d = tmp_path / "run"
    with pytest.raises(EditbenchError, match=r"No space left on device\) — free space .* resume from edit 4"):
        run(_ft_cfg(tmp_path), d)
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == ["step_000002", "step_000004"]  # no temporary left
    assert [r["N"] for r in read_rows(d)] == [2, 4]
    assert read_summary(d)["status"] == "failed" and read_summary(d)["done"] == 4
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)  # space freed
    run(_ft_cfg(tmp_path), d)
    assert metrics(d) == metrics(reference)


def test_summary_counts_done_edits_while_running(reference):
    s = read_summary(reference)
    assert s["status"] == "complete" and s["done"] == 8


def test_an_error_mid_run_leaves_a_failed_summary(tmp_path, monkeypatch):
    """summary.json never says "running" for a run that ended: an error says "failed", with it."""
    from editbench.run import Runner

    def broken(self):
        raise RuntimeError("out of memory in the evaluation")

    monkeypatch.setattr(Runner, "evaluate", broken)
    d = tmp_path / "run"
    with pytest.raises(RuntimeError):
        run(compose_config(["editor=none", "n_edits=2"], out_dir=tmp_path), d)
    s = read_summary(d)
    assert s["status"] == "failed" and s["done"] == 2 and "out of memory" in s["error"]


def test_a_stop_during_an_evaluation_redoes_it_on_resume(reference, tmp_path, monkeypatch):
    """The edits of a checkpoint are saved before its evaluation; a stop signal during the
    evaluation ends the run at once, and the resumed run evaluates that checkpoint first."""
    from editbench.run import RunStopped, Runner

    real = Runner.evaluate

    def evaluate(self):
        if self.progress.cursor == 4:
            signal.raise_signal(signal.SIGTERM)  # arrives mid-evaluation
        return real(self)

    monkeypatch.setattr(Runner, "evaluate", evaluate)
    d = tmp_path / "run"
    with pytest.raises(RunStopped, match="stopped at edit 4 of 8"):
        run(_ft_cfg(tmp_path), d)
    assert [r["N"] for r in read_rows(d)] == [2]
    assert read_summary(d)["status"] == "stopped" and read_summary(d)["done"] == 4
    assert (d / "ckpt" / "step_000004").is_dir()
    monkeypatch.setattr(Runner, "evaluate", real)
    run(_ft_cfg(tmp_path), d)
    assert metrics(d) == metrics(reference)


def test_a_stop_while_the_references_are_computed_ends_the_run_at_once(reference, tmp_path, monkeypatch):
    """The unedited references and the editor's setup can take an hour on a long stream: a stop
    signal then ends the run at once (not after them), leaves no references file, and the re-run
    computes them and equals the uninterrupted run."""
    from editbench.evaluate import Evaluator
    from editbench.run import RunStopped

    real = Evaluator.reference
    seen = []

    def reference_then_signal(self, cases):
        signal.raise_signal(signal.SIGTERM)  # arrives mid-computation
        seen.append("after the signal")  # not reached: the signal interrupts
        return real(self, cases)

    monkeypatch.setattr(Evaluator, "reference", reference_then_signal)
    d = tmp_path / "run"
    with pytest.raises(RunStopped, match="stopped at edit 0 of 8"):
        run(_ft_cfg(tmp_path), d)
    assert seen == [] and not (d / "references.json.gz").exists() and not (d / "metrics.jsonl").exists()
    monkeypatch.setattr(Evaluator, "reference", real)
    run(_ft_cfg(tmp_path), d)
    assert metrics(d) == metrics(reference)


def test_stop_signals_hup_stops_and_usr2_asks_a_requeue():
    from editbench.signals import RunStopped, StopSignals, hand_over

    inherited = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal starts it (the suite may run under nohup)
    try:
        for sig, status in ((signal.SIGHUP, "stopped"), (signal.SIGUSR2, "requeued")):
            with StopSignals() as stop:
                signal.raise_signal(sig)
                assert stop.signum == sig and stop.status == status  # noted, nothing raised
    finally:
        signal.signal(signal.SIGHUP, inherited)
    assert not RunStopped(signal.SIGHUP, 3, 8).requeue and RunStopped(signal.SIGHUP, 3, 8).exit_code == 129
    assert RunStopped(signal.SIGUSR2, 3, 8).requeue and RunStopped(signal.SIGUSR2, 3, 8).exit_code == 140
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # e.g. submitit's
    try:
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGUSR2)
            assert calls == []  # the run's handler, not the previous one, while the run holds them
        hand_over(signal.SIGUSR2)  # restored: the previous handler (submitit: requeue and exit) runs
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    try:
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGHUP)
            assert stop.signum is None
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_sigterm_of_a_job_slurm_requeued_leaves_it_requeued(tmp_path, monkeypatch):
    """`scontrol requeue` or a pre-emption that requeues: SLURM sends the job SIGTERM, and its
    restart count is past the one the job started with; the run stops `requeued`, not `stopped`
    (`tests/test_slurm.py` runs it on a real cluster)."""
    from editbench.signals import RunStopped, StopSignals, slurm_requeued

    for asked, status in ((lambda: True, "requeued"), (lambda: False, "stopped")):
        with StopSignals(requeued=asked) as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.status == status
    e = RunStopped(signal.SIGTERM, 3, 8, "requeued")
    assert str(e).startswith("requeued by SLURM (SIGTERM) at edit 3 of 8") and not e.requeue and e.exit_code == 143
    scontrol = tmp_path / "scontrol"  # what `scontrol show job -o` says of the job
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not slurm_requeued()  # not a SLURM job
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    for line, restart_count, requeued in (("JobState=COMPLETING Reason=None Restarts=1", None, True),
                                          ("JobState=CANCELLED Reason=None Restarts=1", "1", False),
                                          ("JobState=RUNNING Reason=None Restarts=0", None, False)):
        scontrol.write_text(f"#!/bin/sh\necho 'JobId=7 JobName=editbench {line} BatchFlag=1'\n")
        scontrol.chmod(0o755)
        if restart_count:
            monkeypatch.setenv("SLURM_RESTART_COUNT", restart_count)
        assert slurm_requeued() is requeued, line


def test_a_requeue_the_launcher_refuses_leaves_the_run_stopped(tmp_path):
    """submitit refuses a requeue after `max_num_timeout` timeouts (its handler raises): the
    summary that said `requeued` says `stopped`, with the reason; the error goes on."""
    from editbench.signals import hand_over

    (tmp_path / "summary.json").write_text(json.dumps({"status": "requeued", "done": 5}))

    def refuses(signum, frame):
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    previous = signal.signal(signal.SIGUSR2, refuses)
    try:
        with pytest.raises(RuntimeError):
            hand_over(signal.SIGUSR2, tmp_path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    s = read_summary(tmp_path)
    assert s["status"] == "stopped" and s["done"] == 5 and "timed-out too many times" in s["error"]


def test_usr2_under_a_requeueing_launcher_checkpoints_then_hands_over(reference, tmp_path, monkeypatch, capsys):
    """As under submitit: a SIGUSR2 handler is installed before the run; the run stops at the
    next edit with a checkpoint and a `requeued` summary, says so in one line, then that handler
    runs (submitit's requeues the job and exits -1); the requeued run resumes exactly."""
    import threading

    calls = []

    def submitit_like(signum, frame):
        calls.append(signum)
        sys.exit(-1)

    out = tmp_path / "out"
    args = ["model=tiny_llama", *SLOW_FT[1:], "n_edits=8", "protocol.checkpoints=[2,4,6]", f"out_dir={out}"]

    def send_when_editing():
        deadline = time.monotonic() + 120
        while not list(out.glob("**/ckpt/step_000002")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        threading.Thread(target=send_when_editing, daemon=True).start()
        code, err = editbench(monkeypatch, capsys, *args)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    (d,) = run_dirs(out)
    s = read_summary(d)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == -1 and calls == [signal.SIGUSR2], err
    assert len(lines) == 1 and lines[0].startswith(f"editbench: requeue asked (SIGUSR2) at edit {s['done']} of 8")
    assert s["status"] == "requeued" and 2 <= s["done"] < 8 and (d / "ckpt" / f"step_{s['done']:06d}").is_dir()
    code, err = editbench(monkeypatch, capsys, *args)  # the requeued job
    assert code == 0, err
    assert metrics(d) == metrics(reference) and read_summary(d)["status"] == "complete"


# ----------------------------------------------------------------------------- caches
def test_a_corrupt_or_wrong_shaped_statistics_cache_is_recomputed(tiny_model, tmp_path, capsys):
    import torch

    from editbench.stats import load_corpus, second_moments

    corpus, site = load_corpus("wikitext2", 4), tiny_model.site
    first = second_moments(tiny_model, [site], corpus, tmp_path, max_length=32)
    assert not first.info["cached"]
    (path,) = (tmp_path / "stats").glob("*.pt")
    assert second_moments(tiny_model, [site], corpus, tmp_path, max_length=32).info["cached"]
    good = path.read_bytes()
    bad_shape = {"C": torch.eye(3), "tokens": 10, "texts": 4}
    for damage in ("truncated", "flipped", "wrong shape"):
        if damage == "truncated":
            path.write_bytes(good[: len(good) // 2])
        elif damage == "flipped":
            blob = torch.load(path, weights_only=True)
            blob["C"][0, 0] += 1.0  # a changed value under the old checksum
            torch.save(blob, path)
        else:
            torch.save(bad_shape, path)  # no checksum (as written before there was one), wrong shape
        capsys.readouterr()
        again = second_moments(tiny_model, [site], corpus, tmp_path, max_length=32)
        out = capsys.readouterr().out
        assert f"statistics cache {path.name} is corrupt" in out and "recomputing it" in out, (damage, out)
        assert not again.info["cached"]
        assert torch.equal(again.C[(site.layer, site.module)], first.C[(site.layer, site.module)])
        path.write_bytes(good)


def test_a_corrupt_state_cache_is_recreated(tmp_path, capsys):
    from editbench.cache import StateCache
    from editbench.evaluate import state_cache

    cfg = compose_config(["editor=none", "n_edits=2"], out_dir=tmp_path)
    cache = state_cache(cfg, cfg.protocol.scoring)  # where the run's cache lives (created here)
    cache.db.close()
    path = cache.path
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not an SQLite file" * 100)
    d = tmp_path / "run"
    run(cfg, d)  # the run opens the cache, finds it corrupt, and recreates it
    err = capsys.readouterr().err
    assert f"state cache {path} is corrupt" in err and "recreated" in err, err
    assert read_summary(d)["status"] == "complete"
    assert (path.parent / f"{path.name}.corrupt").is_file()
    cache = StateCache(path)
    cache.put_outputs({(1, 2): [3]})
    assert cache.get_outputs([(1, 2)]) == {(1, 2): [3]}


# ----------------------------------------------------------------------------- the report
def _result_run(root: Path, name: str, rows: list[str], status: str = "complete") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(line + "\n" for line in rows))
    (d / "summary.json").write_text(json.dumps({"status": status}))
    return d


def _committed_rows() -> list[dict]:
    """The rows of a committed FT-L run (real rows, every field the report reads)."""
    results = Path(__file__).parents[1] / "results"
    return read_rows(results / "zsre" / "smollm2_135m" / "ft" / "n1000_s0_experiment=zsre_1k")


def test_report_counts_a_run_with_a_truncated_last_line_as_partial(tmp_path):
    import warnings

    from editbench.report.rows import load_rows

    row = _committed_rows()[0]
    whole = json.dumps(row)
    _result_run(tmp_path, "whole", [whole])
    _result_run(tmp_path, "cut", [whole, json.dumps({**row, "N": row["N"] * 10})[:-40]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = load_rows(tmp_path)
    complete = {Path(r).name: c for r, c in zip(rows["run_dir"], rows["complete"])}
    assert complete == {"whole": True, "cut": False}


def test_report_leaves_no_outputs_of_deleted_runs(tmp_path):
    import shutil

    from editbench.report.cli import main as report

    rows = _committed_rows()[:2]
    results, out = tmp_path / "results", tmp_path / "reports"
    _result_run(results, "zsre", [json.dumps(r) for r in rows])
    _result_run(results, "wiki", [json.dumps({**r, "data": "wikibigedit"}) for r in rows])
    assert report(["--results", str(results), "--out", str(out), "--baselines", str(tmp_path / "none")]) == 0
    assert any("wikibigedit" in p.name for p in (out / "tables").iterdir())
    shutil.rmtree(results / "wiki")  # a run deleted since
    assert report(["--results", str(results), "--out", str(out), "--baselines", str(tmp_path / "none")]) == 0
    left = [p.name for folder in ("tables", "figures") for p in (out / folder).iterdir() if "wikibigedit" in p.name]
    assert left == [] and any("zsre" in p.name for p in (out / "tables").iterdir())


# ----------------------------------------------------------------------------- signals and kills (subprocess)
def _start(args: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_cmd(*args, f"out_dir={out}"), cwd=out.parent, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not list(root.glob(pattern)):
        assert proc.poll() is None, f"the run ended before {pattern} appeared: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
        time.sleep(0.02)


STREAM = [*SLOW_FT, "n_edits=24", "protocol.checkpoints=[4,8,12,16,20]"]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_reference") / "out"
    proc = run_cli(*STREAM, f"out_dir={out}", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (d,) = run_dirs(out)
    return d


def _stop_with(sig: int, tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(STREAM, out)
    _wait_for("**/ckpt/step_000004", out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + sig, err[-2000:]
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    (d,) = run_dirs(out)
    s = read_summary(d)
    if sig == signal.SIGUSR2:  # outside submitit: the requeue is the user's (or the scheduler's) re-run
        assert lines[0].startswith(f"editbench: requeue asked (SIGUSR2) at edit {s['done']} of 24: checkpoint saved")
        assert s["status"] == "requeued"
    else:
        assert lines[0] == f"editbench: stopped at edit {s['done']} of 24; re-run the same command to resume"
        assert s["status"] == "stopped"
    assert 4 <= s["done"] < 24
    assert (d / "ckpt" / f"step_{s['done']:06d}").is_dir()  # the edits since the last grid checkpoint kept
    resumed = run_cli(*STREAM, f"out_dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at edit {s['done']}" in resumed.stdout
    assert metrics(d) == metrics(reference)
    assert read_summary(d)["status"] == "complete"


def test_a_second_signal_stops_at_once():
    """The first signal only asks for a stop at the next safe point; a second one interrupts."""
    from editbench.run import StopSignals

    with StopSignals() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # noted, nothing raised
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) != stop._handle  # handlers restored


def test_an_immediate_stop_leaves_a_stopped_summary(tmp_path):
    """After a second signal (no safe point reached) summary.json no longer says "running"."""
    from editbench.checkpoint import RunStore

    store = RunStore(tmp_path)
    store.write_summary({"status": "running", "run_id": "r", "n_edits": 100, "done": 10, "segments": []})
    store.mark_stopped(10)
    assert read_summary(tmp_path) == {"status": "stopped", "run_id": "r", "n_edits": 100, "done": 10, "segments": []}
    store.write_summary({"status": "complete", "done": 100})
    store.mark_stopped(100)
    assert read_summary(tmp_path)["status"] == "complete"


def test_sigterm_stops_cleanly_and_resumes_exactly(cli_reference, tmp_path):
    _stop_with(signal.SIGTERM, tmp_path, cli_reference)


@pytest.mark.faults
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP, signal.SIGUSR2], ids=["SIGINT", "SIGHUP", "SIGUSR2"])
def test_other_stop_signals_stop_cleanly_and_resume_exactly(cli_reference, tmp_path, sig):
    """SIGINT (Ctrl-C), SIGHUP (a lost ssh session) and SIGUSR2 (SLURM's warning before a time
    limit, outside submitit) as SIGTERM; SIGUSR2 leaves the summary `requeued`."""
    _stop_with(sig, tmp_path, cli_reference)


@pytest.mark.faults
def test_two_concurrent_starts(cli_reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = _start(STREAM, out)
    try:
        _wait_for("**/summary.json", out, first)
        second = run_cli(*STREAM, f"out_dir={out}", cwd=tmp_path)
        lines = [x for x in second.stderr.splitlines() if x.strip()]
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
        assert "is in use by another run (pid " in lines[0] and str(first.pid) in lines[0]
        _, err = first.communicate(timeout=240)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    (d,) = run_dirs(out)
    assert metrics(d) == metrics(cli_reference)


KILL_SEEDS = range(10)


@pytest.mark.faults
@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_kill9_at_a_random_moment_then_resume(cli_reference, tmp_path, seed):
    """SIGKILL at a seeded random moment between the first edit and the end of the stream (inside
    an edit, an evaluation or a checkpoint write); the resumed run equals the uninterrupted one."""
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(STREAM, out)
    _wait_for("**/summary.json", out, proc)  # editing has begun
    started = time.monotonic()
    budget = json.loads((cli_reference / "metrics.jsonl").read_text().splitlines()[-1])["edit_s_total"]
    time.sleep(random.Random(seed).uniform(0, budget * 1.2))
    proc.kill()
    proc.wait(30)
    killed_after = time.monotonic() - started
    resumed = run_cli(*STREAM, f"out_dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (d,) = run_dirs(out)
    assert metrics(d) == metrics(cli_reference), f"killed {killed_after:.1f}s into editing"
    print(f"seed {seed}: killed {killed_after:.2f}s into editing; resumed: "
          f"{[x for x in resumed.stdout.splitlines() if 'resuming' in x or 'taking over' in x]}")
