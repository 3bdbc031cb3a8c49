"""What a long stream costs, measured against what the work must cost (`make bench`).

Every number is a ratio of two timings taken in this process, on the embedded model, with the
same thread count, so the machine's speed cancels out:

* **edit / exact-work limit**, per editor: the per-edit wall time (`editor.edit`) over the work an
  exact update cannot avoid: the frozen part computed once (the blocks below the lowest edited
  layer, and for a codebook edit the positions before the last prompt token), then per
  optimisation step actually taken one forward + backward of only the blocks from the lowest
  edited layer up and the LM head at the positions the loss reads. The limit is computed here
  with the model's own blocks called directly (mask and rotary embeddings built once per edit),
  the editor's own step count (`editor_info.last_edit.steps`), and the same tokens. Target <= 1.5.
* **evaluation / its limit**: probes per second of `Evaluator.evaluate` at a checkpoint over the
  probes per second of the blocks from the lowest touched layer up and the LM head at the answer
  positions, run once on the same token batches from the cached unedited states. Target <= 2.
* **HoReN routing overhead**: a forward pass of an evaluation batch through HoReN's site with a
  codebook of 1K, 10K and 50K entries, over the same pass on the unedited model, minus one.
  Target <= 10 % at 50K.
* **resident memory growth per 1,000 edits**, per editor, from the committed result rows
  (`resident_mem_gb` at the last checkpoint minus the first, per 1,000 edits between them).

    python benchmarks/bench_cost.py [--edits 12] [--threads 1] [--only codebook,ft,routing,eval,memory]
                                    [--out results/bench]

Writes `<out>/cost.json` (every measurement, its target and PASS/FAIL; `make figures` plots it) and
prints one line per measurement. Exit status 1 if any target fails.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from editbench.__main__ import register_resolvers
from editbench.build import Run, build
from editbench.costs import Costs
from editbench.models import Pass

EDIT_TARGET, EVAL_TARGET, ROUTING_TARGET = 1.5, 2.0, 0.10


def built(editor: str, overrides: list[str], n_cases: int) -> Run:
    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"editor={editor}", *overrides, f"cache_dir={tempfile.mkdtemp()}"])
    return build(cfg, n_cases=n_cases, references=False, log=lambda *_: None)


# ----------------------------------------------------------------------------- the exact-work limit
class SuffixLimit:
    """One forward + backward of blocks `layer`.. and the LM head at the loss positions, on a
    prefix computed once, with the blocks called directly: the work an exact update repeats per
    step. `leaf` is what the step differentiates: a vector added to the site's output at the
    first suffix position (a codebook value) or the site's weight (a weight edit)."""

    def __init__(self, model, batch, from_last_prompt: bool):
        from transformers import DynamicCache
        from transformers.masking_utils import create_causal_mask

        self.m = model
        t0 = time.perf_counter()
        self.pre = model.prefix(batch, from_last_prompt=from_last_prompt)
        self.prefix_s = time.perf_counter() - t0
        pre, inner = self.pre, model.model.model
        T = pre.batch.attention_mask.shape[1]
        self.cache_position = torch.arange(pre.start, T, device=model.device)
        self.pos = pre.batch.position_ids[:, -pre.h.shape[1]:]
        cache = DynamicCache(pre.past) if pre.past is not None else None
        self.mask = create_causal_mask(config=inner.config, input_embeds=pre.h, attention_mask=pre.batch.attention_mask,
                                       cache_position=self.cache_position, past_key_values=cache,
                                       position_ids=self.pos)
        self.rotary = inner.rotary_emb(pre.h, self.pos)
        self.nxt = pre.batch.predicts_label
        self.labels = pre.batch.labels[:, 1:][self.nxt[:, :-1]]

    def step(self, leaf: torch.Tensor) -> None:
        from transformers import DynamicCache

        m, pre = self.m, self.pre
        cache = DynamicCache(pre.past) if pre.past is not None else None
        h = pre.h
        with m.bind(Pass("unedited", pre.batch.prompt_mask)):
            for block in m.blocks[pre.layer:]:
                h = block(h, attention_mask=self.mask, position_ids=self.pos, past_key_values=cache,
                          use_cache=cache is not None, cache_position=self.cache_position,
                          position_embeddings=self.rotary)
        h = m.model.model.norm(h)
        loss = torch.nn.functional.cross_entropy(m.model.lm_head(h[self.nxt]).float(), self.labels)
        loss.backward()
        leaf.grad = None

    def step_s(self, site, kind: str, repeats: int = 3) -> float:
        """Median seconds of one step; `kind`: "value" (a vector added at the site's output, first
        suffix position) or "weight" (the site's weight)."""
        if kind == "value":
            leaf = torch.zeros(site.out_features, requires_grad=True, device=self.m.device)
            hook = site.register_forward_hook(lambda mod, args, out: out + torch.nn.functional.pad(
                leaf[None, None], (0, 0, 0, out.shape[1] - 1)))
        else:
            leaf = site.weight
            leaf.requires_grad_(True)
            hook = None
        try:
            self.step(leaf)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                self.step(leaf)
                times.append(time.perf_counter() - t0)
        finally:
            if hook is not None:
                hook.remove()
            else:
                leaf.requires_grad_(False)
        return statistics.median(times)


def plain_site(model):
    """The module at the edit site without any editor wrapper around it."""
    site = model.site_module()
    return getattr(site, "base", site)


def edit_vs_limit(editor: str, overrides: list[str], n_edits: int, from_last_prompt: bool, kind: str) -> dict:
    """Per edit: wall time of `editor.edit` and its limit (prefix once + steps x one step)."""
    run = built(editor, overrides, n_edits + 1)
    ed, m = run.editor, run.model
    costs = Costs(m.device, baseline_gb=run.baseline_gb)
    ed.edit([run.cases[0].request])  # warm-up
    edits = []
    for case in run.cases[1:]:
        req = case.request
        with costs:
            ed.edit([req])
        steps = ed.report()["last_edit"]["steps"]
        batch = m.batch([m.encode_example(req.prompt, req.target)])
        lim = SuffixLimit(m, batch, from_last_prompt)
        step_s = lim.step_s(plain_site(m), kind)
        edits.append({"edit_s": costs.edit_s[-1], "steps": steps, "step_limit_s": step_s, "prefix_s": lim.prefix_s,
                      "limit_s": lim.prefix_s + steps * step_s, "tokens": int(batch.input_ids.shape[1])})
    edit_s = sum(e["edit_s"] for e in edits)
    limit_s = sum(e["limit_s"] for e in edits)
    steps = sum(e["steps"] for e in edits)
    ratio = edit_s / limit_s
    return {"measure": "edit_vs_limit", "editor": editor, "method": ed.method, "overrides": overrides,
            "edits": len(edits), "edit_s_mean": edit_s / len(edits), "limit_s_mean": limit_s / len(edits),
            "steps_mean": steps / len(edits), "step_s_mean": (edit_s - sum(e["prefix_s"] for e in edits)) / max(steps, 1),
            "step_limit_s_mean": statistics.mean(e["step_limit_s"] for e in edits),
            "ratio": ratio, "target": EDIT_TARGET, "pass": ratio <= EDIT_TARGET, "per_edit": edits}


# ----------------------------------------------------------------------------- routing overhead
def routing_overhead(sizes: list[int], batch_size: int, repeats: int) -> list[dict]:
    """HoReN's site with a codebook of n random unit keys: a prefill pass of one evaluation batch
    (the first `batch_size` Rel prompts) over the same pass on the unedited model."""
    run = built("horen", [], batch_size)
    m, ed = run.model, run.editor
    prompts = [m.encode_prompt(c.request.prompt) for c in run.cases]
    batch = m.batch([(p, len(p)) for p in prompts])

    def forward(kind: str) -> float:
        t0 = time.perf_counter()
        with torch.no_grad(), m.bind(Pass(kind, batch.prompt_mask, {})):
            m.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
        return time.perf_counter() - t0

    def paired() -> tuple[float, float, float]:
        """Unedited and HoReN passes alternated (a load change on the machine hits both alike):
        the median of each, and the median of the per-pair ratios."""
        forward("unedited"), forward("prefill")  # warm-up
        pairs = [(forward("unedited"), forward("prefill")) for _ in range(repeats)]
        return (statistics.median(p for p, _ in pairs), statistics.median(r for _, r in pairs),
                statistics.median(r / p for p, r in pairs))

    gen = torch.Generator().manual_seed(0)
    out = []
    for n in sizes:
        while ed.book.n < n:  # random unit keys (and values): retrieval runs over all of them
            k = min(4096, n - ed.book.n)
            keys = torch.nn.functional.normalize(torch.randn(k, m.d_in, generator=gen), dim=-1)
            for key in keys:
                ed.book.add(key, torch.zeros(m.d_out), label=(-1,), ref_label=-1.0)
        plain, routed, ratio = paired()
        overhead = ratio - 1
        out.append({"measure": "routing_overhead", "entries": n, "batch": len(prompts), "unedited_s": plain,
                    "horen_s": routed, "overhead": overhead, "target": ROUTING_TARGET if n == max(sizes) else None,
                    "pass": overhead <= ROUTING_TARGET if n == max(sizes) else None})
    return out


# ----------------------------------------------------------------------------- evaluation throughput
def eval_vs_limit(n_cases: int) -> dict:
    """HoReN after `n_cases` edits, the checkpoint evaluation of those cases (the unedited states at
    the site already cached, as at every checkpoint after the first): probes per second over the
    limit, every probe with its expected answer once through the blocks from the lowest touched
    layer up and the LM head at the answer positions, from the same cached states."""
    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"cache_dir={tempfile.mkdtemp()}", f"n_edits={n_cases}"])
    run = build(cfg, log=lambda *_: None)
    m, ed, ev, cases = run.model, run.editor, run.evaluator, run.cases
    for c in cases:
        ed.edit([c.request])
    layer = min(s.layer for s in ed.touches())
    ev.evaluate(ed.module(), cases, run.refs, layer)  # fills the state cache, as the first checkpoint does
    t0 = time.perf_counter()
    scores = ev.evaluate(ed.module(), cases, run.refs, layer)
    eval_s = time.perf_counter() - t0
    rows = []  # each probe with what it is checked against: the target (Rel / Gen), the unedited output (Loc)
    for c, ref in zip(cases, run.refs):
        for name, ps in c.probes.items():
            for j, p in enumerate(ps.probes):
                prompt = m.encode_prompt(p.prompt)
                ids = ref[name][j] if name in ref else m.encode_answer(m.answer_sep + p.answer)
                rows.append((prompt + list(ids), len(prompt)))
    bs = int(cfg.protocol.eval_batch_size)
    limit_s = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), bs):
            batch = m.batch(rows[i:i + bs])
            pre = m.prefix(batch, layer=layer)  # the cached part: not timed
            nxt = batch.predicts_label
            t0 = time.perf_counter()
            hidden = m.suffix_hidden(pre, Pass("unedited", batch.prompt_mask), needed=nxt)
            m.model.lm_head(hidden[nxt])
            limit_s += time.perf_counter() - t0
    n = len(scores.records)
    ratio = eval_s / limit_s
    return {"measure": "eval_vs_limit", "cases": n_cases, "edits": n_cases, "probes": n, "eval_s": eval_s,
            "limit_s": limit_s, "probes_per_s": n / eval_s, "limit_probes_per_s": len(rows) / limit_s,
            "ratio": ratio, "target": EVAL_TARGET, "pass": ratio <= EVAL_TARGET}


def eval_growth(results: Path) -> list[dict]:
    """Evaluation seconds per evaluated case at each checkpoint of the committed ZsRE runs: flat
    when evaluation time grows linearly with N (every edit so far is re-evaluated)."""
    out = []
    for f in sorted(results.glob("zsre/smollm2_135m/*/*/metrics.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if len(rows) >= 2:
            out.append({"measure": "eval_growth", "method": rows[-1]["method"], "run": f.parent.name,
                        "N": [r["N"] for r in rows], "eval_s": [r["eval_s"] for r in rows],
                        "eval_s_per_case": [r["eval_s"] / r["n_eval"] for r in rows]})
    return out


def memory_growth(results: Path) -> list[dict]:
    """Resident memory growth per 1,000 edits of each committed ZsRE run with >= 2 checkpoints."""
    out = []
    for f in sorted(results.glob("zsre/smollm2_135m/*/*/metrics.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r.get("resident_mem_gb") is not None]
        if len(rows) < 2 or rows[-1]["N"] - rows[0]["N"] < 100:
            continue
        a, b = rows[0], rows[-1]
        per_1k = (b["resident_mem_gb"] - a["resident_mem_gb"]) / (b["N"] - a["N"]) * 1000
        out.append({"measure": "memory_growth", "method": b["method"], "run": f.parent.name, "from_N": a["N"],
                    "to_N": b["N"], "resident_gb_from": a["resident_mem_gb"], "resident_gb_to": b["resident_mem_gb"],
                    "gb_per_1k_edits": per_1k, "editor_params": b.get("editor_params")})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    ap.add_argument("--results", type=Path, default=Path("results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    register_resolvers()
    groups = set(args.only.split(",")) if args.only else {"codebook", "ft", "routing", "eval", "memory"}
    rows: list[dict] = []
    if "codebook" in groups:
        for editor, over in (("horen", []), ("horen", ["experiment=grace_norm"]), ("grace", []),
                             ("horen", ["experiment=horen_lora", "editor.lora_lr=1e-2"])):
            rows.append(edit_vs_limit(editor, over, args.edits, from_last_prompt=True, kind="value"))
    if "ft" in groups:
        rows.append(edit_vs_limit("ft", [], args.edits, from_last_prompt=False, kind="weight"))
    if "routing" in groups:
        rows += routing_overhead([1_000, 10_000, 50_000], batch_size=32, repeats=9)
    if "eval" in groups:
        rows.append(eval_vs_limit(n_cases=32))
    if "memory" in groups:
        rows += memory_growth(args.results) + eval_growth(args.results)
    for r in rows:
        print(describe(r))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"threads": args.threads, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (args.out / "cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0 if all(r.get("pass") is not False for r in rows) else 1


def verdict(r: dict) -> str:
    return "" if r.get("pass") is None else ("PASS" if r["pass"] else "FAIL")


def describe(r: dict) -> str:
    if r["measure"] == "edit_vs_limit":
        return (f"{r['method']:>12}: {r['edit_s_mean'] * 1e3:7.0f} ms/edit over a limit of {r['limit_s_mean'] * 1e3:7.0f} "
                f"({r['steps_mean']:.1f} steps x {r['step_limit_s_mean'] * 1e3:.1f} ms; editbench "
                f"{r['step_s_mean'] * 1e3:.1f} ms/step) = {r['ratio']:.2f} -> {verdict(r)} (target <= {r['target']})")
    if r["measure"] == "routing_overhead":
        tail = f" -> {verdict(r)} (target <= {r['target']:.0%})" if r["target"] is not None else ""
        return (f"routing {r['entries']:>6} entries: {r['horen_s'] * 1e3:.0f} ms vs {r['unedited_s'] * 1e3:.0f} ms "
                f"unedited = +{r['overhead']:.1%}{tail}")
    if r["measure"] == "eval_vs_limit":
        return (f"evaluation: {r['probes_per_s']:.1f} probes/s over a limit of {r['limit_probes_per_s']:.1f} = "
                f"{r['ratio']:.2f} -> {verdict(r)} (target <= {r['target']})")
    if r["measure"] == "eval_growth":
        per = " ".join(f"{n}:{x * 1e3:.0f}" for n, x in zip(r["N"], r["eval_s_per_case"]))
        return f"eval growth {r['method']:>15} ({r['run']}): ms per evaluated case at N = {per}"
    if r["measure"] == "memory_growth":
        return (f"memory {r['method']:>20} ({r['run']}): {r['gb_per_1k_edits'] * 1e3:+.1f} MB per 1,000 edits "
                f"(N {r['from_N']}..{r['to_N']})")
    return json.dumps(r)


if __name__ == "__main__":
    sys.exit(main())
