"""`python -m editbench ...` as a user meets it: a bad command line is exit status 2 and ONE line on
stderr naming the problem (with near-match suggestions for unknown options), never a traceback, and
a failed run never leaves a complete-looking result behind. Every call runs from a tmp dir with
`out_dir` under it, so nothing touches the repository."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import cli_env, run_cli, run_in_process  # noqa: E402

from editbench.__main__ import GROUPS, options  # noqa: E402

WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """`options()` also reads a user conf/ in the working directory: look where the CLI looks."""
    monkeypatch.chdir(tmp_path)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `editbench: error: ...` line; Python warnings (file:line: XWarning + the source
    line under it) are set aside here and checked by test_stderr_holds_nothing_but_the_error."""
    assert proc.returncode not in (0, None), proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr[-3000:]
    lines, skip_source = [], False
    for line in proc.stderr.splitlines():
        if WARNING.match(line):
            skip_source = True
            continue
        if skip_source and line.startswith("  "):
            skip_source = False
            continue
        skip_source = False
        if line.strip():
            lines.append(line)
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    assert lines[0].startswith("editbench: error: "), lines[0]
    assert proc.returncode == 2
    return lines[0]


def assert_nothing_complete(out: Path) -> None:
    for s in out.rglob("summary.json"):
        assert json.loads(s.read_text()).get("status") != "complete", f"{s} looks complete after a failure"
    for m in out.rglob("metrics.jsonl"):
        assert not m.read_text().strip(), f"{m} holds rows after a failure"


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`editbench model=tiny_llama out_dir=<tmp>/out <args>`, in this process (seconds saved per
    call); the process boundary itself is tested by test_stderr_holds_nothing_but_the_error,
    test_help_passes_through and test_console_script."""
    return run_in_process("model=tiny_llama", f"out_dir={tmp_path / 'out'}", *args)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def good(i: int) -> dict:
    return {"id": f"t{i}", "src": f"Question {i}?", "rephrase": f"Rephrased {i}?", "answers": [f"a{i}"],
            "loc": f"nq question: l{i}", "loc_ans": f"b{i}"}


# ----------------------------------------------------------------------------- unknown options
def test_unknown_editor_suggests_near_matches(tmp_path):
    line = error_line(cli(tmp_path, "editor=fft"))
    assert "unknown editor 'fft'" in line
    assert re.search(r"did you mean ft\b", line), line
    assert "available: " + ", ".join(options("editor")) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("group", ["editor", "model", "data", "protocol", "logger"])
def test_unknown_option_lists_what_is_available(tmp_path, group):
    line = error_line(cli(tmp_path, f"{group}=nope"))
    assert f"unknown {group} 'nope'" in line
    for name in options(group):
        assert name in line
    assert f"editbench ls {group}" in line
    assert not (tmp_path / "out").exists()


def test_bad_config_key(tmp_path):
    line = error_line(cli(tmp_path, "editor.nope=1"))
    assert "no config key 'editor.nope'" in line and "editor has:" in line and "threshold" in line
    assert "+editor" not in line  # never suggest appending an unknown key
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,expect", [
    (["editor.treshold=0.5"], "did you mean editor.threshold?"),
    (["+editor.treshold=0.5"], "editor.treshold is not a setting of editor=horen (HoReN) — did you mean editor.threshold?"),
    (["n_edit=3"], "did you mean n_edits?"),
    (["editor=ft", "+editor.n_iters=3"], "did you mean editor.n_iter?"),
    (["~editor.beta"], "editor=horen (HoReN) needs editor.beta"),
])
def test_unknown_and_missing_keys_name_the_nearest_valid_key(tmp_path, args, expect):
    """An editor takes exactly the keys of its YAML (no defaults in Python, no swallowed typos):
    a typo is one line with the nearest valid key, before the model loads."""
    proc = cli(tmp_path, "model=tiny_llama", "n_edits=1", *args)
    line = error_line(proc)
    assert expect in line, line
    assert "unedited reference outputs" not in proc.stdout  # refused before any model work
    assert not list((tmp_path / "out").rglob("metrics.jsonl"))



def test_unparsable_override(tmp_path):
    line = error_line(cli(tmp_path, "editor=="))
    assert "cannot parse" in line or "bad config override" in line


def test_sweep_with_one_bad_value_is_rejected_before_running(tmp_path):
    proc = cli(tmp_path, "editor=none,nope", "n_edits=1", "-m")
    line = error_line(proc)
    assert "unknown editor 'nope'" in line
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*")), "a sweep job ran before the bad value was caught"


# ----------------------------------------------------------------------------- errors inside the run
def test_n_edits_larger_than_the_pool(tmp_path):
    line = error_line(cli(tmp_path, "n_edits=20000"))
    assert "n_edits=20000" in line and "10037" in line
    assert_nothing_complete(tmp_path / "out")


def test_malformed_record_file(tmp_path):
    bad = dict(good(1))
    del bad["rephrase"]
    path = write_jsonl(tmp_path / "bad.jsonl", [good(0), bad, good(2)])
    line = error_line(cli(tmp_path, f"data.path={path}", "n_edits=2"))
    assert "record 1" in line and "'rephrase'" in line
    assert_nothing_complete(tmp_path / "out")


@pytest.mark.parametrize("kind", ["missing", "invalid_json", "bad_target"])
def test_data_errors_raised_while_building_the_dataset(tmp_path, kind):
    """Errors the dataset constructor raises (it runs inside hydra.utils.instantiate) must reach the
    user as the same one line as any other EditbenchError, not as Hydra's InstantiationException."""
    if kind == "missing":
        args, expect = ["data.path=/nonexistent.jsonl"], ["/nonexistent.jsonl", "not found"]
    elif kind == "invalid_json":
        p = tmp_path / "broken.jsonl"
        p.write_text('{"id": 1,\n')
        args, expect = [f"data.path={p}"], [str(p), "not valid JSON"]
    else:
        args, expect = ["data.target=gold"], ["data.target='gold'"]
    line = error_line(cli(tmp_path, *args, "n_edits=2"))
    for text in expect:
        assert text in line
    assert_nothing_complete(tmp_path / "out")


def test_non_integer_n_edits(tmp_path):
    line = error_line(cli(tmp_path, "n_edits=abc"))
    assert "n_edits" in line and "abc" in line


# ----------------------------------------------------------------------------- ls, help, --cfg
def test_ls_lists_every_group(tmp_path):
    proc = run_cli("ls", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert list(listed) == list(GROUPS)
    for group in GROUPS:
        assert listed[group].split(", ") == options(group)
    assert {"ft", "none"} <= set(listed["editor"].split(", "))
    assert {"tiny_llama", "tiny_qwen2"} <= set(listed["model"].split(", "))


def test_ls_one_group_describes_each_entry_and_refuses_an_unknown_group(tmp_path, monkeypatch, capsys):
    from editbench.__main__ import main

    monkeypatch.setattr(sys, "argv", ["editbench", "ls", "editor"])
    main()
    lines = capsys.readouterr().out.splitlines()
    assert [x.split()[0] for x in lines] == options("editor")
    described = dict(x.split(None, 1) for x in lines if len(x.split(None, 1)) == 2)
    assert described.keys() == set(options("editor")), "an editor YAML lacks its opening comment"
    assert described["none"].startswith("The unedited model") and "HoReN" in described["horen"]
    monkeypatch.setattr(sys, "argv", ["editbench", "ls", "nope"])
    with pytest.raises(SystemExit) as e:
        main()
    line = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "no config group 'nope'" in line and "editor" in line and "\n" not in line


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_a_usage_page(flag, monkeypatch, capsys):
    """`editbench --help`: the usage page with the subcommands and examples, not Hydra's page."""
    from editbench.__main__ import main

    monkeypatch.setattr(sys, "argv", ["editbench", flag])
    main()
    out = capsys.readouterr().out
    for text in ("usage: editbench", "editbench ls", "editbench diff", "examples:", "editor=grace", "-m ",
                 "hydra/launcher=slurm", "config groups"):
        assert text in out, text


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("editbench")
    if not script.exists():
        pytest.skip("the editbench console script is not installed next to this interpreter")
    proc = subprocess.run([str(script), "ls", "data"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and [x.split()[0] for x in proc.stdout.splitlines()] == ["synthetic", "unke", "wikibigedit", "zsre"]


def test_help_passes_through(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "editor" in proc.stdout


@pytest.mark.parametrize("flags,expect", [
    (["--cfg", "job"], ["n_edits:", "name: tiny_llama"]),
    (["-c", "job", "--package", "editor"], ["_target_: editbench.editors.ft.FineTune"]),
    (["--info", "defaults"], ["editor/ft", "model/tiny_llama"]),
])
def test_hydra_flags_with_values_pass_through(tmp_path, flags, expect):
    """The bad-key error tells users to run `python -m editbench --cfg job`; that must work
    (`job` is the value of --cfg, not an override), and so must Hydra's other valued flags."""
    proc = cli(tmp_path, "editor=ft", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in expect:
        assert text in proc.stdout
    assert not (tmp_path / "out").exists()


def test_stderr_holds_nothing_but_the_error(tmp_path):
    """Run from a directory without a user conf/ (the common case), stderr is the one error line:
    no Hydra warning about the optional `file://conf` search path."""
    proc = run_cli("model=tiny_llama", f"out_dir={tmp_path / 'out'}", "editor=nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [error_line(proc)], proc.stderr


# ----------------------------------------------------------------------------- progress in a job log
def test_a_job_log_gets_plain_progress_lines_not_bars(tmp_path):
    """Not on a terminal (a job log): no bar, no carriage return; plain progress lines and one
    line per checkpoint."""
    proc = cli(tmp_path, "editor=none", "n_edits=3", "protocol.checkpoints=[1,2]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "[editbench] Unedited edits: 3/3 edits (100%) in " in "\n".join(lines)
    checkpoints = [x.split(":")[0] for x in lines if x.startswith("[editbench] N=")]
    assert checkpoints == [f"[editbench] N={n}" for n in (1, 2, 3)]


def test_progress_lines_give_an_eta_with_the_evaluations_ahead(capsys):
    from editbench.progress import Bar

    evals = iter([None, (600.0, "10m00s for 2 evaluations")])
    bar = Bar(10, "X edits", unit="edit", live=False, min_s=0, eta_extra=lambda: next(evals, None))
    bar.update(1)
    bar.update(1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[editbench] X edits: 1/10 edits (10%) in ") and "ETA" in lines[0]
    assert lines[1].startswith("[editbench] X edits: 2/10 edits (20%) in ")
    assert "for the edits, 10m00s for 2 evaluations)" in lines[1] and ", ETA 10m0" in lines[1]


@pytest.mark.slow
def test_loading_the_gguf_model_draws_no_bar_in_a_job_log(tmp_path):
    """transformers' GGUF de-quantisation bar (tqdm, carriage returns) stays out of a job log (a
    fresh cache_dir: the GGUF is de-quantised here, not read back converted)."""
    env = cli_env()
    env.pop("TQDM_DISABLE")
    proc = subprocess.run([sys.executable, "-m", "editbench", "editor=none", "n_edits=1", "threads=1",
                           f"out_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr and "de-quantizing" not in proc.stderr, proc.stderr[-2000:]
    assert "written to" in proc.stderr and any((tmp_path / "cache" / "converted").glob("*/float32-*"))


# ----------------------------------------------------------------------------- machine-local settings
def test_local_settings_apply_only_where_they_belong(tmp_path):
    """conf/local/: default.yaml for every run, model/<model>.yaml, logger/<logger>.yaml and
    launcher/<launcher>.yaml only with that model, logger or launcher — a SLURM partition or a W&B
    entity must not break a local run with logger=none."""
    local, copy = tmp_path / "conf" / "local", tmp_path / "Llama-3.1-8B-Instruct"
    copy.mkdir()
    (copy / "config.json").write_text("{}")
    for name, text in {"default.yaml": "# @package _global_\ncache_max_gb: 5\n",
                       "model/llama31_8b.yaml": f"path: {copy}\n",
                       "logger/wandb.yaml": "entity: my_team\n",
                       "launcher/slurm.yaml": "partition: gpu\naccount: my_lab\n"}.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_text(text)
    proc = cli(tmp_path, "editor=none", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = proc.stdout
    assert "cache_max_gb: 5" in job and "path: null" in job and "entity" not in job
    proc = cli(tmp_path, "editor=none", "logger=wandb", "--cfg", "job")
    assert proc.returncode == 0 and "entity: my_team" in proc.stdout, proc.stderr[-2000:]
    proc = cli(tmp_path, "editor=none", "hydra/launcher=slurm", "--cfg", "hydra")
    assert proc.returncode == 0 and "partition: gpu" in proc.stdout and "account: my_lab" in proc.stdout
    proc = cli(tmp_path, "model=llama31_8b", "editor=none", "--cfg", "job", "--package", "model")
    assert f"path: {copy}" in proc.stdout, proc.stdout + proc.stderr
