"""The runner: stream -> edit -> checkpoint -> evaluate -> log, in one loop.

The runner, not the editors, measures costs (per-edit wall time, peak and resident memory,
evaluation time) and owns seeds, the pre-edit cache, checkpoints and the result files.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import platform
import random
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from editbench import __version__
from editbench.checkpoint import RunLock, RunStore, rng_state, set_rng_state
from editbench.editors.base import SetupContext
from editbench.errors import EditbenchError
from editbench.evaluate import Evaluator, state_cache
from editbench.models import load_model, load_prompt_format
from editbench.validate import Protocol, check_config, check_environment, check_target

SCHEMA = 1
RUNTIME_KEYS = ("resume", "out_dir", "logger", "tag", "threads", "cache_dir", "cache_max_gb", "save_every_min")  # do not change what a run computes


def checkpoint_grid(grid, n_edits: int) -> list[int]:
    """The protocol's fixed grid cut at n_edits, plus n_edits itself."""
    return sorted({int(n) for n in grid if 0 < int(n) < n_edits} | {n_edits})


def config_hash(cfg: DictConfig) -> str:
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in RUNTIME_KEYS:
        d.pop(k, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_hash() -> str:
    """The commit of the code that runs (12 hex digits), '-dirty' when the package's sources differ
    from it; 'unknown' outside a git checkout."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        head = out.stdout.strip()
        if not head:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True,
                               timeout=5).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version() -> str:
    """What a resumed run must match: the package version and the git commit."""
    return f"{__version__}+{git_hash()}"


def versions() -> dict:
    import transformers

    return {"editbench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def hardware(device: torch.device) -> dict:
    """What the numbers were computed on: floating-point kernels differ by CPU instruction set and
    GPU, so a bit-exact re-run needs the same `cpu_capability` (and GPU), not only the versions."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "gpu": gpu}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def instantiate_group(node: DictConfig, **kwargs):
    """Build a config-group object (its keys and values checked against the target's signature
    first); `name` is bookkeeping, not a constructor argument. Our own errors come out unwrapped
    (Hydra wraps constructor exceptions in InstantiationException)."""
    from hydra.errors import InstantiationException

    cfg = OmegaConf.to_container(node, resolve=True)
    check_target(node._key() or "config", cfg, given=tuple(kwargs))
    cfg.pop("name", None)
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, EditbenchError):
            raise e.__cause__ from None
        raise EditbenchError(f"cannot build {cfg.get('_target_')}: {' '.join(str(e).split())[:300]} "
                             f"— check the group's keys and values") from None


class Costs:
    """Per-edit wall time and memory, measured by the runner around `editor.edit`.

    CUDA: the peak of memory allocated during an edit, summed over all visible devices (max over
    edits), and memory allocated now. CPU: no per-edit peak is measurable without a sampler, so
    only the resident set now and its growth over `baseline_gb` (the resident set just before the
    editor was built: model, data, unedited reference outputs) are reported."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.edit_s: list[float] = []
        self.peak_gb = 0.0
        self.baseline_gb = 0.0

    def _devices(self) -> range:
        return range(torch.cuda.device_count())

    def __enter__(self):
        if self.cuda:
            for d in self._devices():
                torch.cuda.synchronize(d)
                torch.cuda.reset_peak_memory_stats(d)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            if self.cuda:
                for d in self._devices():
                    torch.cuda.synchronize(d)
                peak = sum(torch.cuda.max_memory_allocated(d) for d in self._devices()) / 2**30
                self.peak_gb = max(self.peak_gb, peak)
            self.edit_s.append(time.perf_counter() - self.t0)

    def resident_gb(self) -> float:
        if self.cuda:
            return sum(torch.cuda.memory_allocated(d) for d in self._devices()) / 2**30
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**30

    def row(self) -> dict:
        resident = self.resident_gb()
        return {"mem_device": "cuda" if self.cuda else "cpu", "peak_mem_gb": self.peak_gb if self.cuda else None,
                "resident_mem_gb": resident, "mem_growth_gb": resident - self.baseline_gb}


def eval_indices(n: int, retention, at: int) -> list[int]:
    """All edits so far, or a seeded sample of `max_eval` of them (recorded as n_eval)."""
    cap = retention.get("max_eval")
    if retention.mode != "all_so_far":
        raise EditbenchError(f"protocol.retention.mode={retention.mode!r} is unknown — use all_so_far")
    if not cap or n <= cap:
        return list(range(n))
    return sorted(random.Random(retention.sample_seed * 1_000_003 + at).sample(range(n), cap))


class RunStopped(Exception):
    """SIGTERM / SIGINT: the run stopped at a safe point (its checkpoints intact)."""

    def __init__(self, signum: int, done: int, n_edits: int):
        super().__init__(f"stopped at edit {done} of {n_edits}; re-run the same command to resume")
        self.exit_code = 128 + signum


class StopSignals:
    """SIGTERM and SIGINT ask the run to stop at its next safe point (between edits, after a
    checkpoint); a second signal stops it at once (the files stay consistent either way: every
    write is atomic). Installed only in the main thread, and restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def check_lengths(cases, text, context: int, model_name: str) -> None:
    """Every edit request and probe, with its answer, must fit the model's context length."""
    if context <= 0:  # the model does not say
        return
    items = [(c.id, "edit", c.request.prompt, c.request.target) for c in cases]
    items += [(c.id, name, p.prompt, p.answer) for c in cases for name, ps in c.probes.items() for p in ps.probes]
    lengths = text.example_lengths([(p, a) for _, _, p, a in items])
    worst = max(range(len(items)), key=lengths.__getitem__)
    if lengths[worst] > context:
        case_id, what, _, _ = items[worst]
        raise EditbenchError(f"record {case_id}: its {what} prompt with its answer is {lengths[worst]} tokens, more "
                             f"than {model_name}'s context length ({context}) — shorten or drop that record in "
                             f"the data file")


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Run one edit stream; returns the final metrics row. Resumes from `run_dir` if asked.

    Everything is checked before the model loads; nothing is written into `run_dir` until the
    run holds its lock, has passed the resume check and has its model and unedited references."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    check_config(container)
    check_environment(container)
    run_dir = Path(run_dir)
    with StopSignals() as stop, RunLock(run_dir):
        try:
            return _run(cfg, run_dir, list(overrides), stop)
        except KeyboardInterrupt:  # a second signal, or one before the handlers were in place
            store = RunStore(run_dir)
            done = (store.latest_meta() or {}).get("cursor", 0)
            store.mark_stopped(done)
            raise RunStopped(stop.signum or signal.SIGINT, done, int(cfg.n_edits)) from None


def _run(cfg: DictConfig, run_dir: Path, overrides: list[str], stop: StopSignals) -> dict:
    store = RunStore(run_dir)
    store.sweep_temporaries()
    chash, n_edits, code = config_hash(cfg), int(cfg.n_edits), code_version()
    if cfg.resume in ("auto", "force") and (meta := store.latest_meta()) is not None:  # refuse before loading
        if meta["config_hash"] != chash:
            raise EditbenchError(f"{run_dir} holds a run with another config (hash {meta['config_hash']} != {chash}) "
                                 f"— use a fresh out_dir or resume=never to start over")
        ran = (meta.get("segments") or [{"code": meta.get("code", "unknown")}])[-1]["code"]
        if ran != code and cfg.resume != "force":
            raise EditbenchError(f"{run_dir} was computed by code {ran}, this is {code} — resume with that code, "
                                 f"start over with resume=never, or continue with resume=force (recorded in "
                                 f"summary.json)")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    seed_everything(cfg.seed)
    data = instantiate_group(cfg.data)
    cases = data.stream(n_edits)
    text, context = load_prompt_format(cfg.model)
    check_lengths(cases, text, context, cfg.model.name)
    model = load_model(cfg.model, text)
    proto = cfg.protocol
    cache = state_cache(cfg, proto.scoring)
    max_new_tokens = int(proto.get("max_new_tokens", Protocol.model_fields["max_new_tokens"].default))  # free-text cap
    evaluator = Evaluator(model, proto.scoring, proto.eval_batch_size, cache, max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    refs = evaluator.reference(cases)  # the unedited model's outputs, before any editor touches it
    print(f"[editbench] unedited reference outputs: {sum(len(v) for r in refs for v in r.values())} probes "
          f"in {time.perf_counter() - t0:.1f}s")
    costs = Costs(model.device)
    costs.baseline_gb = costs.resident_gb()  # before the editor exists: its growth is measured from here
    editor = instantiate_group(cfg.editor, model=model)
    t0 = time.perf_counter()
    editor.setup(SetupContext(cache_dir=Path(cfg.cache_dir).expanduser(), seed=int(cfg.seed), aux=data.aux(cases)))
    setup_s = time.perf_counter() - t0  # on the unedited model, before any edit (again on resume)
    grid = checkpoint_grid(proto.checkpoints, n_edits)
    touched = editor.touches()
    # blocks below the lowest touched layer stay unedited: their output states are cached once
    reuse_layer = min((s.layer for s in touched), default=model.site.layer)
    static = {
        "schema": SCHEMA, "run_id": f"{Path(run_dir).name}-{chash}", "tag": cfg.tag, "method": editor.method,
        "editor": cfg.editor.name, "model": cfg.model.name, "data": cfg.data.name, "protocol": proto.name,
        "protocol_version": int(proto.version), "scoring": proto.scoring,
        "max_new_tokens": max_new_tokens, "seed": int(cfg.seed), "n_edits": n_edits,
        "hparams": {k: v for k, v in OmegaConf.to_container(cfg.editor, resolve=True).items()
                    if k not in ("_target_", "name")},
        "edit_layer": model.site.layer, "edit_module": model.site.module, "chat_template": model.chat_template,
        "touched": [f"{s.layer}.{s.module}" for s in touched],
        "model_revision": getattr(model.model.config, "_commit_hash", None),  # the hub commit actually loaded
        "data_info": {"order_seed": data.order_seed, "skip": data.skip},
        "config_hash": chash, "git_hash": git_hash(), "code_version": code, "versions": versions(),
        "hardware": hardware(model.device), "setup_s": setup_s,
    }
    rows, cursor, segments = [], 0, []
    if cfg.resume == "never":
        store.clear()
    elif (latest := store.latest()) is not None:
        state, meta = latest
        segments = meta.get("segments") or [{"from": 0, "code": meta.get("code", "unknown"), "forced": False}]
        editor.load_state_dict(state["editor"])
        set_rng_state(state["rng"])
        cursor, rows, costs.edit_s, costs.peak_gb = state["cursor"], meta["rows"], state["edit_s"], state["peak_gb"]
        print(f"[editbench] resuming {run_dir} at edit {cursor} ({len(rows)} checkpoints done)")
    if not segments or segments[-1]["code"] != code:  # each stretch of the stream records the code that ran it
        segments.append({"from": cursor, "code": code, "forced": bool(segments)})
    config = OmegaConf.to_container(cfg, resolve=True)

    def summary(status: str, **extra) -> None:
        store.write_summary({"status": status, "run_id": static["run_id"], "n_edits": n_edits, "done": cursor,
                             "segments": segments, **extra})

    def checkpoint() -> None:
        state = {"editor": editor.state_dict(), "cursor": cursor, "rng": rng_state(),
                 "edit_s": costs.edit_s, "peak_gb": costs.peak_gb}
        store.save(cursor, state, {"config_hash": chash, "cursor": cursor, "rows": rows, "segments": segments,
                                   "config": config})

    with disk_errors(run_dir, lambda: cursor):
        store.write_config(OmegaConf.to_yaml(cfg, resolve=True), overrides)
        store.write_rows(rows)
        summary("running")
    logger = instantiate_group(cfg.logger)
    logger.start(run_dir, config, chash)
    for row in rows:
        logger.log(row)
    bar = tqdm(total=n_edits, initial=cursor, desc=f"{editor.method} edits", dynamic_ncols=True)
    save_every_s = float(cfg.get("save_every_min") or 0) * 60  # 0: checkpoints at the grid only
    last_save = time.monotonic()
    try:
        while cursor < n_edits:
            if stop.signum is not None:  # a safe point: between edits, every checkpoint written
                with disk_errors(run_dir, lambda: cursor):
                    if cursor > (store.latest_meta() or {}).get("cursor", 0):
                        checkpoint()  # the edits since the last grid checkpoint are kept too
                    summary("stopped")
                raise RunStopped(stop.signum, cursor, n_edits)
            # the editor's batch size, cut at the next checkpoint so every checkpoint's N is exact
            end = min(cursor + editor.batch_size, next(g for g in grid if g > cursor))
            batch = cases[cursor:end]
            with costs:
                editor.edit([c.request for c in batch])  # requests only: editors never see the probes
            cursor = end
            bar.update(len(batch))
            if cursor not in grid and save_every_s and time.monotonic() - last_save >= save_every_s:
                with disk_errors(run_dir, lambda: cursor):  # a kill now loses at most save_every_min of edits
                    checkpoint()
                    summary("running")
                last_save = time.monotonic()
            if cursor in grid:
                t0 = time.perf_counter()
                idx = eval_indices(cursor, proto.retention, cursor)
                scores = evaluator.evaluate(editor.module(), [cases[i] for i in idx], [refs[i] for i in idx],
                                            reuse_layer, overall=data.overall)
                row = {**static, "N": cursor, **scores.metrics, "metric_names": scores.names,
                       "edit_s_mean": float(np.sum(costs.edit_s)) / cursor, "edit_s_total": float(np.sum(costs.edit_s)),
                       "eval_s": time.perf_counter() - t0, **costs.row(), "editor_params": int(editor.num_params()),
                       "editor_info": editor.report(),
                       "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
                rows.append(row)
                with disk_errors(run_dir, lambda: rows[-2]["N"] if len(rows) > 1 else 0):
                    checkpoint()
                    store.write_records(cursor, scores.records)
                    store.write_rows(rows)
                    summary("running")
                last_save = time.monotonic()
                logger.log(row)
                shown = " ".join(f"{k}={row[k]:.3f}" for k in row["metric_names"])
                bar.write(f"[editbench] N={cursor}: {shown} ({row['edit_s_mean'] * 1e3:.0f} ms/edit, eval {row['eval_s']:.1f}s)")
    finally:
        bar.close()
    with disk_errors(run_dir, lambda: cursor):
        summary("complete", data_info=data.info, final=rows[-1])
    logger.finish(run_dir)
    return rows[-1]


@contextlib.contextmanager
def disk_errors(run_dir: Path, kept: Callable[[], int]):
    """A failed write (disk full, read-only, quota) as one line; the checkpoints before it are intact."""
    try:
        yield
    except OSError as e:
        raise EditbenchError(f"cannot write the results in {run_dir} ({e.strerror or e}) — free space or fix the "
                             f"permissions, then re-run the same command to resume from edit {kept()}") from None


def format_table(rows: list[dict]) -> str:
    """The runner's closing table: N, every metric the rows name, and the costs."""
    names = list(dict.fromkeys(n for r in rows for n in r.get("metric_names", ("rel", "gen", "loc", "op"))))
    head = f"{'N':>7} " + " ".join(f"{n[:7]:>7}" for n in names) + f" {'ms/edit':>8} {'eval s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r[n]:>7.3f}" if n in r else f"{'—':>7}" for n in names)
        lines.append(f"{r['N']:>7} {cells} {r['edit_s_mean'] * 1e3:>8.1f} {r['eval_s']:>7.1f}")
    return "\n".join(lines)
