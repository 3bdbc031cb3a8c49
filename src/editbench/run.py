"""The runner: stream -> edit -> checkpoint -> evaluate -> log, in one loop.

What a run is made of comes from `build.build` (the one seam); the runner owns what happens to
it: the edit loop, resume, checkpoints, stop signals, the costs it measures around each edit
(per-edit wall time, peak and resident memory, evaluation time), the result files and what it
prints while it works (`progress.Bar`: live bars on a terminal, plain lines in a job log).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from editbench.build import build, instantiate_group, max_new_tokens, validate
from editbench.checkpoint import RunLock, RunStore, rng_equal, rng_state, set_rng_state
from editbench.costs import Costs
from editbench.diagnostics import routing_diagnostics
from editbench.errors import EditbenchError
from editbench.progress import Bar, duration
from editbench.provenance import code_version, config_hash, git_hash, hardware, versions
from editbench.signals import RunStopped, StopSignals

SCHEMA = 1
#: cases per evaluation part: an evaluation of more cases keeps each finished part, so a stop loses
#: at most the part under way (a stream of N <= EVAL_PART edits is scored in one piece, as before)
EVAL_PART = 1000


def checkpoint_grid(grid, n_edits: int) -> list[int]:
    """The protocol's fixed grid cut at n_edits, plus n_edits itself."""
    return sorted({int(n) for n in grid if 0 < int(n) < n_edits} | {n_edits})


def eval_indices(n: int, retention, at: int) -> list[int]:
    """All edits so far, or a seeded sample of `max_eval` of them (recorded as n_eval)."""
    cap = retention.get("max_eval")
    if retention.mode != "all_so_far":
        raise EditbenchError(f"protocol.retention.mode={retention.mode!r} is unknown — use all_so_far")
    if not cap or n <= cap:
        return list(range(n))
    return sorted(random.Random(retention.sample_seed * 1_000_003 + at).sample(range(n), cap))


def score_in_parts(evaluator, module, cases: list, refs: list, reuse_layer: int | None, store: RunStore, step: int,
                   state_sha: str | None) -> tuple[list[dict], float]:
    """The records of checkpoint `step`'s evaluation of `cases` (`Evaluator.score_records`),
    scored EVAL_PART cases at a time. With more than one part, each finished part is kept in
    `store` (its records, its time, the RNG state after it, and `state_sha`: the checkpoint state
    it scored), and an evaluation of the same state resumed later reads the kept parts back in
    order and continues after them with the RNG as it was: the records equal an uninterrupted
    evaluation's. Returns the records and the seconds the parts read back had taken."""
    store.drop_eval_parts(keep=step)  # parts of any other checkpoint are stale
    saved = store.eval_parts(step)
    starts = range(0, len(cases), EVAL_PART)
    records, earlier_s, after = [], 0.0, None
    for k, a in enumerate(starts):
        part_cases = cases[a:a + EVAL_PART]
        part = saved.pop(k, None) if after is not None or k == 0 else None
        if part is not None and state_sha is not None and part["state_sha256"] == state_sha \
                and part["cases"] == [c.id for c in part_cases]:
            records += part["records"]
            earlier_s += part["eval_s"]
            after = part["rng"]
            continue
        if after is not None:  # the first part to compute after parts read back
            set_rng_state(after)
            after, saved = None, {}
        t = time.perf_counter()
        part_records = evaluator.score_records(module, part_cases, refs[a:a + EVAL_PART], reuse_layer)
        records += part_records
        if len(starts) > 1:
            try:
                store.write_eval_part(step, k, {"records": part_records, "eval_s": time.perf_counter() - t,
                                                "rng": rng_state(), "state_sha256": state_sha,
                                                "cases": [c.id for c in part_cases]})
            except OSError as e:
                raise EditbenchError(f"cannot write the results in {store.dir} ({e.strerror or e}) — free space or fix "
                                     f"the permissions, then re-run the same command (it continues after the {k} "
                                     f"evaluation parts kept)") from None
            print(f"[editbench] N={step}: {a + len(part_cases)} of {len(cases)} cases evaluated (kept in "
                  f"eval_parts/: a stop now loses none of them)", flush=True)
    if after is not None:  # every part read back
        set_rng_state(after)
    return records, earlier_s


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Run one edit stream; returns the final metrics row. Resumes from `run_dir` if asked.

    Everything is checked before the model loads; nothing is written into `run_dir` until the
    run holds its lock, has passed the resume check and has its model and unedited references.
    A run that ends early never leaves summary.json saying "running": a stop says `stopped` (or
    `requeued`), an error `failed`."""
    validate(cfg)
    run_dir = Path(run_dir)
    with StopSignals() as stop, RunLock(run_dir):
        runner = Runner(cfg, run_dir, list(overrides), stop)
        try:
            return runner.run()
        except KeyboardInterrupt:  # a second signal, one during an evaluation, or one before the handlers
            runner.store.mark_stopped(runner.kept(), stop.status)
            raise RunStopped(stop.signum or signal.SIGINT, runner.kept(), int(cfg.n_edits), stop.status) from None
        except RunStopped:
            raise
        except Exception as e:
            if runner.started:  # this process said "running"; an earlier run's summary stays as it was
                runner.store.mark_stopped(runner.kept(), "failed", error=" ".join(str(e).split())[:300] or
                                          type(e).__name__)
            raise


def _kernels(hw: dict) -> str:
    """`provenance.hardware()`'s record in words: the CPU, the instruction set torch uses, the GPU if any."""
    return " ".join(str(x) for x in (hw.get("cpu"), hw.get("cpu_capability"), hw.get("gpu")) if x)


@dataclass
class Progress:
    """Where a run stands, besides the editor's state: the next edit (`cursor`), the result rows so
    far, and the code and hardware that ran each stretch of the stream (`segments`)."""

    cursor: int = 0
    rows: list[dict] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)


class Runner:
    """One run in a run directory: the edit loop, its checkpoints and its result files."""

    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: list[str], stop: StopSignals):
        self.cfg, self.run_dir, self.overrides, self.stop = cfg, run_dir, overrides, stop
        self.store = RunStore(run_dir)
        self.chash, self.n_edits, self.code = config_hash(cfg), int(cfg.n_edits), code_version()
        self.progress = Progress()
        self.started = False  # summary.json says "running" for this process

    def refuse_foreign_checkpoint(self) -> None:
        """Before anything loads: a checkpoint here must be of this config and this code (or forced)."""
        if self.cfg.resume not in ("auto", "force") or (meta := self.store.latest_meta()) is None:
            return
        if meta["config_hash"] != self.chash:
            raise EditbenchError(f"{self.run_dir} holds a run with another config (hash {meta['config_hash']} != "
                                 f"{self.chash}) — use a fresh out_dir or resume=never to start over")
        ran = (meta.get("segments") or [{"code": meta.get("code", "unknown")}])[-1]["code"]
        if ran != self.code and self.cfg.resume != "force":
            raise EditbenchError(f"{self.run_dir} was computed by code {ran}, this is {self.code} — resume with that "
                                 f"code, start over with resume=never, or continue with resume=force (recorded in "
                                 f"summary.json)")

    def static_fields(self) -> dict:
        """What every result row of this run repeats: identity, config, versions, hardware."""
        cfg, r = self.cfg, self.built
        proto, model, editor = cfg.protocol, r.model, r.editor
        return {
            "schema": SCHEMA, "run_id": f"{self.run_dir.name}-{self.chash}", "tag": cfg.tag, "method": editor.method,
            "editor": cfg.editor.name, "model": cfg.model.name, "data": cfg.data.name, "protocol": proto.name,
            "protocol_version": int(proto.version), "scoring": proto.scoring,
            "max_new_tokens": max_new_tokens(proto), "seed": int(cfg.seed), "n_edits": self.n_edits,
            "hparams": {k: v for k, v in OmegaConf.to_container(cfg.editor, resolve=True).items()
                        if k not in ("_target_", "name")},
            "edit_layer": model.site.layer, "edit_module": model.site.module, "chat_template": model.chat_template,
            "touched": [f"{s.layer}.{s.module}" for s in editor.touches()], "state_growth": editor.state_growth,
            "model_revision": getattr(model.model.config, "_commit_hash", None),  # the hub commit actually loaded
            "data_info": {"order_seed": r.data.order_seed, "skip": r.data.skip},
            "config_hash": self.chash, "git_hash": git_hash(), "code_version": self.code, "versions": versions(),
            "hardware": hardware(model.device), "setup_s": r.setup_s,
        }

    def resume(self) -> None:
        """Start over (resume=never) or continue from the newest complete checkpoint."""
        p = self.progress
        if self.cfg.resume == "never":
            self.store.clear()
        elif (latest := self.store.latest()) is not None:
            state, meta = latest
            p.segments = meta.get("segments") or [{"from": 0, "code": meta.get("code", "unknown"), "forced": False}]
            set_rng_state(state["rng"])  # first: a checkpoint from before editors kept their own generator reads it
            self.built.editor.load_state_dict(state["editor"])
            p.cursor, p.rows = state["cursor"], meta["rows"]
            self.costs.edit_s, self.costs.peak_gb = state["edit_s"], state["peak_gb"]
            print(f"[editbench] resuming {self.run_dir} at edit {p.cursor} ({len(p.rows)} checkpoints done)")
        # each stretch of the stream records the code and the hardware that ran it: a new code (forced)
        # or another CPU / instruction set / GPU opens a new stretch (floating-point kernels can differ
        # between them, so the rows from there on may not be bit-identical to an uninterrupted run's)
        hw, last = self.static["hardware"], (p.segments[-1] if p.segments else None)
        moved = last is not None and last.get("hardware") not in (None, hw)
        if moved:
            print(f"[editbench] resuming on other hardware ({_kernels(hw)}, the checkpoint's "
                  f"{_kernels(last['hardware'])}): results from edit {p.cursor} on may not be bit-identical to "
                  f"an uninterrupted run's (each stretch's hardware is in summary.json segments)")
        if last is None or last["code"] != self.code or last.get("hardware") is None or moved:
            forced = last is not None and last["code"] != self.code
            p.segments.append({"from": p.cursor, "code": self.code, "forced": forced, "hardware": hw})

    def summary(self, status: str, **extra) -> None:
        p = self.progress
        self.started = True
        self.store.write_summary({"status": status, "run_id": self.static["run_id"], "n_edits": self.n_edits,
                                  "done": p.cursor, "segments": p.segments, **extra})

    def checkpoint(self) -> None:
        p = self.progress
        state = {"editor": self.built.editor.state_dict(), "cursor": p.cursor, "rng": rng_state(),
                 "edit_s": self.costs.edit_s, "peak_gb": self.costs.peak_gb}
        self.store.save(p.cursor, state, {"config_hash": self.chash, "cursor": p.cursor, "rows": p.rows,
                                          "segments": p.segments, "config": self.config})

    def evaluate(self) -> tuple[dict, list[dict]]:
        """Score every edit so far (or the protocol's sample of them) at the current checkpoint."""
        r, n = self.built, self.progress.cursor
        t0 = time.perf_counter()
        idx = eval_indices(n, self.cfg.protocol.retention, n)
        cases = [r.cases[i] for i in idx]
        records, earlier_s = score_in_parts(r.evaluator, r.editor.module(), cases, [r.refs[i] for i in idx],
                                            self.reuse_layer, self.store, n, self.store.state_sha256(n))
        scores = r.evaluator.aggregate(cases, records, overall=r.data.overall)
        if self.cfg.get("diagnostics", True):  # where the editor's router sends the scored prompts
            states = r.evaluator.prompt_states if r.model.site.layer <= self.reuse_layer else None
            scores.metrics.update(routing_diagnostics(r.editor, r.model.encode_prompt, cases, idx, states))
        edit_s = float(np.sum(self.costs.edit_s))
        row = {**self.static, "N": n, **scores.metrics, "metric_names": scores.names,
               "edit_s_mean": edit_s / n, "edit_s_total": edit_s, "eval_s": time.perf_counter() - t0 + earlier_s,
               **self.costs.row(), "ckpt_mb": self.store.state_mb(n), "cache_mb": r.evaluator.cache.size_gb() * 1024,
               "editor_params": int(r.editor.num_params()), "editor_info": r.editor.report(),
               "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        return row, scores.records

    def kept(self) -> int:
        """The edit the newest complete checkpoint resumes from."""
        return (self.store.latest_meta() or {}).get("cursor", 0)

    def evaluations_ahead(self) -> tuple[float, str] | None:
        """The evaluations still ahead, for the ETA: (seconds, words), at the newest evaluated
        checkpoint's time per evaluated case."""
        p, cap = self.progress, self.cfg.protocol.retention.get("max_eval")
        last = p.rows[-1] if p.rows else None
        ahead = [g for g in self.grid if g >= p.cursor and (last is None or g > last["N"])]
        if not ahead:
            return None
        what = f"{len(ahead)} evaluation{'s' if len(ahead) > 1 else ''}"
        if last is None:
            return 0.0, f"{what} not timed yet"
        per_case = last["eval_s"] / max(int(last.get("n_eval") or last["N"]), 1)
        seconds = per_case * sum(min(g, cap) if cap else g for g in ahead)
        return seconds, f"{duration(seconds)} for {what}"

    def score(self, bar: Bar, logger) -> None:
        """Evaluate the checkpoint at the cursor (its edits are saved already) and record its row."""
        p, store = self.progress, self.store
        before = rng_state()
        with self.stop.interrupting(), bar.paused():
            row, records = self.evaluate()
        p.rows.append(row)
        with disk_errors(self.run_dir, self.kept):
            store.write_records(p.cursor, records)
            store.write_rows(p.rows)
            store.drop_eval_parts()  # the records hold them now
            if rng_equal(before, rng_state()):
                store.update_meta(p.cursor, rows=p.rows)  # the checkpoint's state is still the state after it
            else:  # the evaluation drew random numbers: what follows starts from the state after it
                self.checkpoint()
            self.summary("running")
        logger.log(row)
        shown = " ".join(f"{k}={row[k]:.3f}" for k in row["metric_names"])
        bar.write(f"[editbench] N={p.cursor}: {shown} ({row['edit_s_mean'] * 1e3:.0f} ms/edit, "
                  f"eval {row['eval_s']:.1f}s)")

    def run(self) -> dict:
        cfg, store, p = self.cfg, self.store, self.progress
        store.sweep_temporaries()
        self.refuse_foreign_checkpoint()
        with self.stop.interrupting():  # minutes to hours before the first edit: a stop ends it at once
            self.built = r = build(cfg, validated=True, references_file=store.references_path)
        self.costs = Costs(r.model.device, baseline_gb=r.baseline_gb)
        # blocks below the lowest touched layer stay unedited: their output states are cached once
        self.reuse_layer = min((s.layer for s in r.editor.touches()), default=r.model.site.layer)
        self.static = self.static_fields()
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.grid = grid = checkpoint_grid(cfg.protocol.checkpoints, self.n_edits)
        keep = cfg.get("keep_checkpoints", 2)
        self.store.keep_last, self.store.keep_steps = (2, frozenset(grid)) if keep == "grid" else (int(keep), frozenset())
        self.resume()
        with disk_errors(self.run_dir, lambda: p.cursor):
            store.write_config(OmegaConf.to_yaml(cfg, resolve=True), self.overrides)
            store.write_rows(p.rows)
            self.summary("running")
        logger = instantiate_group(cfg.logger)
        try:
            logger.start(self.run_dir, self.config, self.chash)
        except Exception as e:  # e.g. W&B unreachable after all
            raise EditbenchError(f"logger={cfg.logger.name} did not start ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]}) — fix it or use logger=none, then re-run the "
                                 f"same command to resume") from None
        for row in p.rows:
            logger.log(row)
        bar = Bar(self.n_edits, f"{r.editor.method} edits", unit="edit", initial=p.cursor,
                  eta_extra=self.evaluations_ahead)
        save_every_min = float(cfg.get("save_every_min") or 0)  # 0: checkpoints at the grid only
        last_save = time.monotonic()
        try:
            if p.cursor in grid and (not p.rows or p.rows[-1]["N"] < p.cursor):
                self.score(bar, logger)  # a checkpoint whose evaluation a stop interrupted
            while p.cursor < self.n_edits:
                if self.stop.signum is not None:  # a safe point: between edits, every checkpoint written
                    with disk_errors(self.run_dir, self.kept):
                        if p.cursor > self.kept():
                            self.checkpoint()  # the edits since the last checkpoint are kept too
                        self.summary(self.stop.status)
                    logger.stop()
                    raise RunStopped(self.stop.signum, p.cursor, self.n_edits, self.stop.status)
                # the editor's batch size, cut at the next checkpoint so every checkpoint's N is exact
                end = min(p.cursor + r.editor.batch_size, next(g for g in grid if g > p.cursor))
                batch = r.cases[p.cursor:end]
                with self.costs:
                    r.editor.edit([c.request for c in batch])  # requests only: editors never see the probes
                p.cursor = end
                bar.update(len(batch))
                if p.cursor in grid:
                    with disk_errors(self.run_dir, self.kept):
                        self.checkpoint()  # the edits first: a stop during the evaluation loses only it
                        self.summary("running")
                    self.score(bar, logger)
                    last_save = time.monotonic()
                elif save_every_min and time.monotonic() - last_save >= save_every_min * 60:
                    with disk_errors(self.run_dir, self.kept):  # a kill now loses at most save_every_min
                        self.checkpoint()
                        self.summary("running")
                    bar.write(f"[editbench] checkpoint at edit {p.cursor} (every {save_every_min:g} min)")
                    last_save = time.monotonic()
        finally:
            bar.close()
        with disk_errors(self.run_dir, lambda: p.cursor):
            self.summary("complete", data_info=r.data.info, final=p.rows[-1])
        logger.finish(self.run_dir)
        return p.rows[-1]


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
