"""Edit-cost benchmark on the embedded model: per-edit wall time and peak memory per editor.

Targets (checked here, never in unit tests):
  * GRACE and HoReN at equal step counts (fixed `n_iter`, no early stop) within 10% per edit
    (the HoReN paper's Table 5 reports equal edit times for the two);
  * the frozen prefix is computed once per edit: a codebook edit step costs less than a full forward
    + backward of the model;
  * WISE at the published step count (70 SGD steps on 12 rows): its time beside the reference
    implementation's ~120 s per edit and a reference-style step timed here (no target: the old
    ">= 10x the reference" target is withdrawn; every editor is held to <= 1.5x its exact-work
    limit in bench_cost.py);
  * REPAIR's per-edit time is printed (no target);
  * ROME, AlphaEdit and UltraEdit: the one-off setup (second-moment statistics, from the user's
    cache_dir when present) reported apart from the per-edit time, and the per-edit time must not
    grow with the number of edits: the same request edited as edit 2 and again after
    `--locate-edits` others costs within 25%.

    python benchmarks/bench_edit.py [--edits 10] [--steps 20] [--threads 1] [--wise-edits 3] [--locate-edits 6]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from editbench.__main__ import register_resolvers
from editbench.build import Run, build
from editbench.costs import Costs

WISE_REFERENCE_S = 120.0  # the reference WISE per edit on SmolLM2, one core (hardening issue #11)


def built(editor: str, overrides: list[str], n_cases: int, cache_dir: Path | None = None) -> Run:
    """The runner's build (`build.build`) of `editor` on the default model and stream, without the
    unedited references; statistics go to a fresh temporary cache unless `cache_dir` is given."""
    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"editor={editor}", *overrides,
                                           f"cache_dir={cache_dir or tempfile.mkdtemp()}"])
    return build(cfg, n_cases=n_cases, references=False, log=lambda *_: None)


def bench(editor: str, overrides: list[str], n_edits: int, cache_dir: Path | None = None) -> dict:
    run = built(editor, overrides, n_edits + 1, cache_dir)
    ed, requests = run.editor, [c.request for c in run.cases]
    costs = Costs(run.model.device, baseline_gb=run.baseline_gb)
    ed.edit(requests[:1])  # warm-up
    for r in requests[1:]:
        with costs:
            ed.edit([r])
    return {"editor": editor, "ms_per_edit": 1e3 * sum(costs.edit_s) / len(costs.edit_s), "edit_s": list(costs.edit_s),
            "setup_s": run.setup_s, "info": ed.report(), **costs.row()}


def reference_style_edit_s(request, steps: int = 4, n_iter: int = 70) -> tuple[float, float]:
    """Seconds per edit of the reference WISE's work on this machine: every step runs the 12 rows
    (the same batch editbench trains on) through the whole model with W' in place of the site
    weight, computes logits at every position and back-propagates to W' (SGD step, mask, clamp).
    `steps` steps are timed after one warm-up and scaled to `n_iter`.

    Returns (whole model, frozen blocks below run once): the second is the same step with the
    site's input and the state after its block computed once per edit (each step runs the site
    matmul, the blocks above and the logits at every position) — what not recomputing the frozen
    blocks alone saves, the bound on the speed-up from that means."""
    from editbench.models import EditableModel, Pass

    run = built("wise", [], 2)
    model, ed = run.model, run.editor
    batch = ed._rows(request)
    site = ed.model.site_module().base  # the plain down_proj under editbench's wrapper
    W = site.weight.detach()
    above = model.site.layer + 1
    x, y0 = model.site_io(batch)
    pre = model.prefix(batch, layer=above)

    def whole_model(side):  # W' enters through a hook on the site
        hook = site.register_forward_hook(lambda mod, args, out: args[0] @ side.t())
        try:
            with model.bind(Pass("unedited", batch.prompt_mask)):
                return model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        finally:
            hook.remove()

    def below_once(side):
        h = pre.h + (x @ side.t() - y0)
        hidden = model.suffix_hidden(EditableModel.Prefix(h, pre.batch, None, 0, above),
                                     Pass("unedited", batch.prompt_mask))
        return model.model.lm_head(hidden)

    def per_edit_s(logits_of) -> float:
        side = torch.nn.Parameter(W.clone())
        mask = torch.rand(W.shape) < 0.2
        opt = torch.optim.SGD([side], lr=1.0, weight_decay=1e-5)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            logits = logits_of(side)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                     batch.labels[:, 1:].flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            side.grad *= mask
            opt.step()
            with torch.no_grad():
                side.copy_(torch.maximum(torch.minimum(side, W + 1.0), W - 1.0))
            if i:
                times.append(time.perf_counter() - t0)
        return n_iter * sum(times) / len(times)

    return per_edit_s(whole_model), per_edit_s(below_once)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wise-edits", type=int, default=3)
    ap.add_argument("--locate-edits", type=int, default=6)
    ap.add_argument("--only", default="", help="comma-separated groups to run: codebook, wise, repair, locate")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    register_resolvers()
    groups = set(args.only.split(",")) if args.only else {"codebook", "wise", "repair", "locate"}
    ok = wise_ok = flat_ok = True
    if "codebook" in groups:
        ok = bench_codebook(args)
    if "wise" in groups:
        w = bench("wise", ["editor.n_iter=70"], args.wise_edits)
        speedup = WISE_REFERENCE_S * 1e3 / w["ms_per_edit"]
        ref_s, once_s = reference_style_edit_s(built("wise", [], 1).cases[0].request)
        here = ref_s * 1e3 / w["ms_per_edit"]
        wise_ok = True  # informational: the target is bench_cost.py's exact-work limit
        print(f"  wise: {w['ms_per_edit']:8.1f} ms/edit (70 steps, 12 rows) = {speedup:.1f}x the reference's "
              f"{WISE_REFERENCE_S:.0f} s; {here:.1f}x a reference-style edit timed here ({ref_s:.1f} s: whole "
              f"model, all logits) (no target here)")
        print(f"        the reference-style edit with the frozen blocks below the site run once: {once_s:.1f} s "
              f"({ref_s / once_s:.1f}x faster than the whole model: the most that means alone gives; editbench "
              f"{1e3 * once_s / w['ms_per_edit']:.1f}x faster again: logits at target positions only, the unrelated "
              f"row at the site only)")
    if "repair" in groups:
        r = bench("repair", [], args.wise_edits)
        print(f"repair: {r['ms_per_edit']:8.1f} ms/edit (its published 30 steps; the closed loop runs at group "
              f"ends only, not in this sample; no target)")
    if "locate" in groups:
        flat_ok = bench_locate(args)
    return 0 if ok and wise_ok and flat_ok else 1


def bench_codebook(args) -> bool:
    fixed = [f"editor.n_iter={args.steps}", "editor.stop_loss=null", "editor.patience=null"]
    rows = [bench("horen", fixed, args.edits), bench("grace", fixed, args.edits)]
    for r in rows:
        mem = (f"peak {r['peak_mem_gb']:.2f} GB" if r["mem_device"] == "cuda"
               else f"resident {r['resident_mem_gb']:.2f} GB (+{r['mem_growth_gb']:.3f} GB over the model)")
        print(f"{r['editor']:>6}: {r['ms_per_edit']:8.1f} ms/edit  {mem}  ({args.steps} steps)")
    h, g = rows[0]["ms_per_edit"], rows[1]["ms_per_edit"]
    ratio = h / g
    ok = abs(ratio - 1) <= 0.10
    print(f"HoReN / GRACE per-edit time = {ratio:.3f} -> {'PASS' if ok else 'FAIL'} (target within 10%)")
    return ok


def bench_locate(args) -> bool:
    """Setup (statistics, templates) apart from editing; per-edit cost flat in N: the same request
    is edited as the 2nd edit and again after `--locate-edits` others (the work per edit depends on
    the request, not on how many edits came before; optimisation steps printed beside)."""
    cache = Path(os.environ.get("EDITBENCH_CACHE", "~/.cache/editbench")).expanduser()
    flat_ok = True
    for name in ("rome", "alphaedit", "ultraedit"):
        run = built(name, [], args.locate_edits + 2, cache)
        ed, reqs, setup_s = run.editor, [c.request for c in run.cases], run.setup_s
        ed.edit(reqs[:1])  # warm-up
        timed = []
        for i, r in enumerate([reqs[1], *reqs[2:], reqs[1]]):
            t0 = time.perf_counter()
            ed.edit([r])
            if i in (0, len(reqs) - 1):
                timed.append((time.perf_counter() - t0, (ed.report().get("last_edit") or {}).get("steps")))
        (first, s1), (again, s2) = timed
        growth = again / first
        flat = growth <= 1.25
        flat_ok &= flat
        mom = ed.report().get("mom2") or {}
        stats = (f"statistics {mom['texts']} texts / {mom['tokens']} tokens, {mom['seconds']:.0f} s"
                 f"{' (from cache)' if mom.get('cached') else ''}; " if mom else "")
        steps = f" (steps {s1} / {s2})" if s1 is not None else ""
        print(f"{name:>9}: setup {setup_s:.1f} s ({stats}templates); the same edit as edit 2 and edit "
              f"{len(reqs)}: {first * 1e3:.0f} / {again * 1e3:.0f} ms{steps} = {growth:.2f} -> "
              f"{'PASS' if flat else 'FAIL'} (target <= 1.25)")
    return flat_ok


if __name__ == "__main__":
    sys.exit(main())
