"""The fault suite (`make faults`): what happens to a run when things go wrong.

- bad input: a catalogue of command lines and data files, each one line on stderr, exit 2, and
  nothing left under out_dir (checked in-process through `editbench.__main__.main`, the same code
  path as the console script);
- one run per directory: a second start is refused naming the holder; a lock left by kill -9 is
  taken over;
- SIGTERM / SIGINT: stop at the next safe point, one line, exit 143 / 130, resume equals an
  uninterrupted run;
- durable checkpoints: a corrupt newest checkpoint falls back to the previous one; a disk full
  while writing one leaves the previous one intact;
- kill -9 at 10 seeded random moments of a run: each resumed run's metrics equal the
  uninterrupted run's.

Tests marked `faults` (the kill -9 series, SIGINT, two concurrent starts) run only in `make faults`;
the rest run in CI as part of `make test`.
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
    assert read_summary(d)["status"] == "running" and read_summary(d)["done"] == 4
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)  # space freed
    run(_ft_cfg(tmp_path), d)
    assert metrics(d) == metrics(reference)


def test_summary_counts_done_edits_while_running(reference):
    s = read_summary(reference)
    assert s["status"] == "complete" and s["done"] == 8


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
    assert lines[0] == f"editbench: stopped at edit {s['done']} of 24; re-run the same command to resume"
    assert s["status"] == "stopped" and 4 <= s["done"] < 24
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
def test_sigint_stops_cleanly_and_resumes_exactly(cli_reference, tmp_path):
    _stop_with(signal.SIGINT, tmp_path, cli_reference)


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
