"""Shared fixtures: composing the packaged config tree, the tiny random models, the ZsRE pool.

Everything runs on CPU with no network. The environment is set before anything imports tqdm or
transformers or torch (tqdm reads `TQDM_*` variables, torch `OMP_NUM_THREADS`, when imported).
"""
from __future__ import annotations

import os
import shutil
import tempfile

os.environ["TQDM_DISABLE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core box OpenMP
# spin-waiting under oversubscription makes a 64x128 matmul ~50x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The runner keeps unedited-model states in cache_dir (default ~/.cache/editbench): never the user's.
_CACHE = tempfile.mkdtemp(prefix="editbench-test-cache-")
os.environ["EDITBENCH_CACHE"] = _CACHE

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import pytest  # noqa: E402

import editbench  # noqa: E402

CONF = Path(editbench.__file__).parent / "conf"
CACHE_DIR = Path(_CACHE)


def pytest_configure(config):
    # Hydra warns in-process when the optional user conf/ is absent from the working directory
    config.addinivalue_line("filterwarnings", "ignore:provider=hydra.searchpath in main:UserWarning")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


def compose_config(overrides: Sequence[str] = (), *, out_dir: Path | str | None = None, tiny: bool = True,
                   return_hydra_config: bool = False):
    """The config `python -m editbench <overrides>` would run (no `hydra` node unless asked).

    `tiny` adds `model=tiny_llama` unless the overrides pick a model; `out_dir` keeps every path
    a run could write under a test's tmp_path."""
    from hydra import compose, initialize_config_module

    from editbench.__main__ import register_resolvers

    register_resolvers()
    overrides = list(overrides)
    if tiny and not any(o.split("=", 1)[0].lstrip("+~") == "model" for o in overrides):
        overrides.insert(0, "model=tiny_llama")
    if out_dir is not None:
        overrides.append(f"out_dir={out_dir}")
    with initialize_config_module("editbench.conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(overrides, **kw) -> DictConfig, with out_dir under this test's tmp_path."""

    def _compose(overrides: Sequence[str] = (), **kw):
        kw.setdefault("out_dir", tmp_path / "outputs")
        return compose_config(overrides, **kw)

    return _compose


@pytest.fixture(scope="session")
def tiny_model():
    """A session-wide tiny_llama `EditableModel`: read-only use only (tests that edit load their own)."""
    from editbench.models import load_model

    return load_model(compose_config(["model=tiny_llama"]).model)


@pytest.fixture(scope="session")
def tok(tiny_model):
    return tiny_model.tok


@pytest.fixture(scope="session")
def zsre_records():
    """The first 64 records of the default stream (packaged pool, order_seed 0)."""
    from editbench.data.zsre import ZsRE

    return ZsRE().stream(64)


def probe(case, name: str, i: int = 0):
    """The i-th probe of a case's probe set `name` (ZsRE cases have one per set)."""
    return case.probes[name].probes[i]


def load_script(name: str):
    """The module of `scripts/<name>.py` (scripts are not part of the package)."""
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- subprocess helpers
def cli_env() -> dict:
    env = dict(os.environ)
    env.update(TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
               OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)  # what a user sees by default
    env.pop("PYTHONWARNINGS", None)
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "editbench", *args]


def run_in_process(*args: str) -> subprocess.CompletedProcess:
    """`editbench <args>` in this process (seconds saved per call): exit code, stdout, stderr."""
    import contextlib
    import io

    from editbench.__main__ import main

    if "absl.logging" in sys.modules:  # imported by rouge-score: see below
        import absl.logging

        # absl's handler closes its stream when Hydra's logging setup closes every handler, unless
        # that stream is sys.stderr / sys.__stderr__ at the time; with stderr redirected here, the
        # stream it took at import (pytest's capture) would be closed under pytest
        absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__
    argv = ["editbench", *args]
    out, err, saved = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m editbench <args>` from `cwd` (a tmp dir: no top-level conf/, nothing in the repo)."""
    return subprocess.run(cli_cmd(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def read_rows(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def run_dirs(root: Path) -> list[Path]:
    """Run directories (those holding summary.json) anywhere under root."""
    return sorted(p.parent for p in Path(root).rglob("summary.json"))


def build_editor(name: str, *overrides: str, model: str = "tiny_llama", n_cases: int = 8, seed: int = 0):
    """(model, editor, cases) built by the runner's seam (`build.build`) with run seed `seed`: the
    editor set up on the unedited model with the auxiliary prompts of the stream's first `n_cases`
    cases (no unedited references: tests that score compute their own)."""
    from editbench.build import build

    cfg = compose_config([f"editor={name}", f"model={model}", f"seed={seed}", *overrides])
    r = build(cfg, n_cases=n_cases, references=False, log=lambda *_: None)
    return r.model, r.editor, r.cases


def prefill_logits(m, ed, prompts):
    """Next-token logits at every real position of a left-padded batch of raw prompts, through the
    editor's module in a prefill pass."""
    import torch

    from editbench.models import Pass

    batch = m.batch([(m.encode_prompt(p), len(m.encode_prompt(p))) for p in prompts])
    with torch.no_grad(), m.bind(Pass("prefill", batch.prompt_mask)):
        out = ed.module()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids, use_cache=False).logits
    return out[batch.attention_mask.bool()]


def roundtrip(sd: dict) -> dict:
    """A state dict through torch.save / torch.load, as checkpoints take it: an independent copy."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def resume_matches(name: str, *overrides: str, split: int, end: int):
    """Edits cases[:split], takes a checkpoint (state_dict through `roundtrip`), edits
    cases[split:end]; a freshly built editor loads the checkpoint and edits cases[split:end] too.
    Asserts both give bitwise the same logits on the edited prompts; returns the two editors
    (uninterrupted, resumed) and the checkpoint's state dict, for the caller's own checks."""
    import torch

    m, ed, cases = build_editor(name, *overrides)
    for c in cases[:split]:
        ed.edit([c.request])
    ckpt = roundtrip(ed.state_dict())
    for c in cases[split:end]:
        ed.edit([c.request])
    prompts = [c.request.prompt for c in cases[:end]]
    m2, ed2, _ = build_editor(name, *overrides)
    ed2.load_state_dict(roundtrip(ckpt))
    for c in cases[split:end]:
        ed2.edit([c.request])
    torch.testing.assert_close(prefill_logits(m2, ed2, prompts), prefill_logits(m, ed, prompts), rtol=0, atol=0)
    return ed, ed2, ckpt


def spy(monkeypatch, module, name: str) -> dict:
    """Wrap `module.<name>` for one test; the returned dict holds its last result under "result"."""
    seen: dict = {}
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        seen["result"] = real(*args, **kwargs)
        return seen["result"]

    monkeypatch.setattr(module, name, wrapper)
    return seen
