"""Why does a side-memory editor (WISE, REPAIR) miss an edit: is the probe not routed to a side
memory, or routed and answered wrongly? A diagnostic for a finished checkpoint of a result run.

    python scripts/side_memory_routing.py RUN_DIR [STEP] [--unrelated K]

RUN_DIR is a result run of editor=wise or editor=repair (its `.hydra/config.yaml`, its
`records/step_<STEP>.jsonl.gz`, and `ckpt/step_<STEP>` for the editor state; STEP defaults to the
newest checkpoint that has records). For every scored probe of that checkpoint, the probe's prompt
is run once through the edited model and the router's decision at the prefill pass is read, with
each memory's activation score relative to its routing bar (score / (min_a x act_ratio); >= 1
fires). Reported per probe set (rel, gen, loc): how many probes were routed to any side memory,
the mean score (from the run's own records) of routed and of unrouted probes, and quantiles of the
best memory's score / bar. With `--unrelated K`, also the unrelated prompts of the run's `data.aux`
(e.g. NQ questions): the last K the editor trained on as unrelated rows (`aux_seen`) and the next K
it has not yet drawn (`aux_unseen`, never trained on) — does the router fire off-topic too? These
sets have no records, so only their routing is reported. Nothing is trained and nothing in RUN_DIR
is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from editbench.__main__ import register_resolvers
from editbench import runrecords
from editbench.build import build
from editbench.editors._side_memory import SideMemoryEditor
from editbench.models import Pass


def newest_step(run_dir: Path) -> int:
    steps = sorted(int(p.name.split("_")[1]) for p in (run_dir / "ckpt").glob("step_*")
                   if runrecords.path(run_dir, int(p.name.split("_")[1])).is_file())
    if not steps:
        raise SystemExit(f"{run_dir} has no checkpoint with records — pass a run directory whose ckpt/ and "
                         f"records/ share a step")
    return steps[-1]


def quantiles(v: list[float]) -> dict[str, float]:
    if not v:
        return {}
    t = torch.tensor(v)
    return {f"q{int(q * 100)}": round(float(t.quantile(q)), 3) for q in (0.1, 0.5, 0.9)}


def main(argv: list[str]) -> dict:
    if not argv:
        raise SystemExit(__doc__)
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("step", type=int, nargs="?")
    ap.add_argument("--unrelated", type=int, default=0, metavar="K")
    args = ap.parse_args(argv)
    register_resolvers()
    run_dir = args.run_dir
    step = args.step if args.step is not None else newest_step(run_dir)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    torch.set_num_threads(int(cfg.threads or 1))
    run = build(cfg, references=False)
    cases, model, editor = run.cases, run.model, run.editor
    if not isinstance(editor, SideMemoryEditor):
        raise SystemExit(f"editor={cfg.editor.name} has no side memory — this diagnostic is for wise and repair")
    state = torch.load(run_dir / "ckpt" / f"step_{step:06d}" / "state.pt", weights_only=False)
    editor.load_state_dict(state["editor"])
    k, used, aux = args.unrelated, editor.aux_used, editor.aux
    if k and used + k > len(aux):
        raise SystemExit(f"--unrelated {k}: only {max(len(aux) - used, 0)} of the {len(aux)} unrelated prompts are still "
                         f"undrawn after {used} — pass a smaller K")
    records = runrecords.read(runrecords.path(run_dir, step))

    seen: list[tuple[int, float]] = []
    route = editor.route

    def recording_route(x, y0, prompt_mask):
        r = route(x, y0, prompt_mask)
        bars = []
        for w, min_a in editor._weights():
            s = editor._score(editor.delta(x @ w.t().to(x.dtype), y0), prompt_mask)
            bars.append(float(s[0]) / (min_a * editor.hparams["act_ratio"]))
        seen.append((int(r[0]), max(bars)))
        return r

    editor.route = recording_route

    def routed(prompt: str) -> tuple[int, float]:
        ids = torch.tensor([model.encode_prompt(prompt)], device=model.device)
        with model.bind(Pass("prefill", torch.ones_like(ids, dtype=torch.bool))):
            editor.module()(input_ids=ids)
        return seen.pop()

    def tally(name: str, memory: int, ratio: float, score: float | None) -> None:
        s = out.setdefault(name, {"n": 0, "routed": 0, "memories": {}, "score_routed": [],
                                  "score_unrouted": [], "best_over_bar": []})
        s["n"] += 1
        s["routed"] += memory >= 0
        s["memories"][str(memory)] = s["memories"].get(str(memory), 0) + 1
        if score is not None:
            s["score_routed" if memory >= 0 else "score_unrouted"].append(score)
        s["best_over_bar"].append(ratio)

    by_id = {c.id: c for c in cases}
    out: dict[str, dict] = {}
    with torch.no_grad():
        for rec in records:
            probe = by_id[rec["case"]].probes[rec["set"]].probes[rec["i"]]
            tally(rec["set"], *routed(probe.prompt), rec["score"])
        for j in range(max(used - k, 0), used):
            tally("aux_seen", *routed(aux[j % len(aux)][0]), None)
        for j in range(used, used + k):
            tally("aux_unseen", *routed(aux[j][0]), None)
    for s in out.values():
        for k in ("score_routed", "score_unrouted"):
            s[k] = {"n": len(s[k]), "mean": round(sum(s[k]) / len(s[k]), 3) if s[k] else None}
        s["best_over_bar"] = quantiles(s["best_over_bar"])
    return {"run": str(run_dir), "step": step, "editor": cfg.editor.name,
            "memories": len(editor._weights()), "sets": out}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
