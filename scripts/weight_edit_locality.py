"""Is a weight-modifying editor's locality loss specific to its update, or would any change of that
size do? A control for ROME / AlphaEdit / UltraEdit / UnKE / FT-L runs.

    python scripts/weight_edit_locality.py editor=ultraedit [n_edits=20] [overrides...]

On the calibration slice (`data.skip=9000` unless overridden; never the reported records), edits
the first `n_edits` stream cases one after another and reports:
  - how many edits hold right after they are made (greedy Rel of that edit alone), and Rel / Gen /
    Loc of all of them at the end;
  - per edited weight, ‖ΔW‖_F / ‖W‖_F, and the update's response on the edited prompts' tokens
    and on the locality prompts' tokens: mean over tokens of ‖ΔW x‖ / ‖W x‖ (x: that weight's input);
  - the control: the unedited model plus, per edited weight, a Gaussian ΔW (seeded) of the same
    Frobenius norm and of 10x that norm, with the same response measure and Loc on the same cases.
If Loc falls under the editor but not under the control, the loss comes from the update's
direction (what it writes into inputs every prompt shares), not from its size.
"""
from __future__ import annotations

import json
import sys

import torch
from hydra import compose, initialize_config_module

from editbench.__main__ import register_resolvers
from editbench.build import build
from editbench.models import Pass


def responses(model, weights: dict, before: dict, prompts: list[str]) -> dict[str, float]:
    """Per weight: mean over the prompts' tokens of ‖(W − W0) x‖ / ‖W0 x‖ at its input x."""
    sums = {k: [0.0, 0] for k in weights}
    deltas = {k: w.weight.detach() - before[k] for k, w in weights.items()}

    def hook(k):
        def f(_mod, args, _out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(before[k].dtype)
            r = (x @ deltas[k].T).norm(dim=-1) / (x @ before[k].T).norm(dim=-1)
            sums[k][0] += float(r.sum())
            sums[k][1] += r.numel()
        return f

    handles = [mod.register_forward_hook(hook(k)) for k, mod in weights.items()]
    try:
        with torch.no_grad():
            for p in prompts:
                ids = torch.tensor([model.encode_prompt(p)], device=model.device)
                with model.bind(Pass("unedited", torch.ones_like(ids, dtype=torch.bool))):
                    model.model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return {k: round(s / max(n, 1), 5) for k, (s, n) in sums.items()}


def rel_norms(weights: dict, before: dict) -> dict[str, float]:
    """Per weight: ‖W − W0‖_F / ‖W0‖_F."""
    return {k: round(float((w.weight.detach() - before[k]).norm() / before[k].norm()), 5) for k, w in weights.items()}


def main(argv: list[str]) -> dict:
    register_resolvers()
    n = int(next((a.split("=", 1)[1] for a in argv if a.startswith("n_edits=")), 20))
    overrides = [a for a in argv if not a.startswith("n_edits=")]
    if not any(a.startswith("data.skip=") for a in overrides):
        overrides.append("data.skip=9000")  # the calibration slice
    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.set_num_threads(int(cfg.threads or 1))
    run = build(cfg, n_cases=n)
    model, cases, editor, ev, refs = run.model, run.cases, run.editor, run.evaluator, run.refs
    weights = {f"{s.layer}.{s.module}": model.module_at(s) for s in editor.touches()}
    before = {k: mod.weight.detach().clone() for k, mod in weights.items()}
    edit_prompts = [c.request.prompt for c in cases]
    loc_prompts = [p.prompt for c in cases for p in c.probes["loc"].probes]

    held = []
    for c, ref in zip(cases, refs):
        editor.edit([c.request])
        held.append(ev.evaluate(model.model, [c], [ref]).metrics["rel"])
    final = ev.evaluate(model.model, cases, refs).metrics
    rel_dW = rel_norms(weights, before)
    if not any(rel_dW.values()):
        raise SystemExit(f"editor={cfg.editor.name} changed no weight in {n} edits — this control is for the "
                         f"weight-modifying editors (rome, alphaedit, ultraedit, unke, ft)")
    report = {
        "editor": cfg.editor.name, "model": cfg.model.name, "data": cfg.data.name, "skip": cfg.data.skip, "n_edits": n,
        "held_right_after": sum(h == 1.0 for h in held), "rel_right_after_mean": round(sum(held) / n, 3),
        "final": {k: round(final[k], 3) for k in ("rel", "gen", "loc")},
        "rel_dW": rel_dW,
        "response_edit_prompts": responses(model, weights, before, edit_prompts),
        "response_loc_prompts": responses(model, weights, before, loc_prompts),
    }
    edited = {k: w.weight.detach().clone() for k, w in weights.items()}
    report["control"] = {}
    for scale in (1, 10):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for k, w in weights.items():
                noise = torch.randn(w.weight.shape, generator=g).to(w.weight)
                w.weight.copy_(before[k] + noise * (scale * (edited[k] - before[k]).norm() / noise.norm()))
        report["control"][f"{scale}x"] = {
            "loc": round(ev.evaluate(model.model, cases, refs).metrics["loc"], 3),
            "rel_dW": rel_norms(weights, before),
            "response_edit_prompts": responses(model, weights, before, edit_prompts),
            "response_loc_prompts": responses(model, weights, before, loc_prompts),
        }
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
