"""A projection, not a measurement: the wall time and GPU memory of `experiment=paper_50k` (HoReN,
50,000 ZsRE edits, LLaMA-3.1-8B-Instruct in bf16, a 2,000-edit retention sample at each of the 11
checkpoints) on one 80 GB GPU, from work measured on the embedded model.

    python scripts/project_50k.py [--run RESULTS_RUN_DIR] [--out results/projection/paper_50k.json]

Measured (the committed HoReN ZsRE run, default its 10K stream): value-training steps per edit
(`steps_total / N` at its last checkpoint) and the tokens an edit and a probe carry (SmolLM2's
tokenizer on the same records; LLaMA-3's tokenizer is assumed to give about as many). Counted:
the FLOPs of that work on the target architecture (its real widths below): per edit the frozen
blocks below the edit layer once, then per step a forward and an activation backward of the
blocks from the edit layer up on every token and the LM head at the answer tokens; per probe a
forward of the whole model (an upper bound: at later checkpoints the cached states cut it to the
blocks from the edit layer up). Converted to time two ways, both stated:
  * `flop_bound`: at an assumed sustained 40 % of 312 TFLOP/s (A100-80GB dense bf16) — a floor
    that small-batch editing never reaches (kernel launches and Python dominate one-edit steps);
  * `paper_rate`: the paper's own measured HoReN edit time on LLaMA-3.1-8B (1,670 ms per edit, its
    efficiency table; GPU not stated), for the edits; evaluation at the FLOP bound x 10.
GPU memory: bf16 weights + the codebook at 50,000 entries (keys in the model dtype, values fp32,
capacity doubling to 65,536 rows) + one evaluation batch's activations. No GPU was used here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# LLaMA-3.1-8B-Instruct's config.json (meta-llama/Llama-3.1-8B-Instruct)
TARGET = {"name": "llama31_8b", "layers": 32, "hidden": 4096, "ffn": 14336, "heads": 32, "kv_heads": 8,
          "vocab": 128256, "edit_layer": 29, "bytes_per_param": 2}
GRID = [10, 100, 500, 1000, 2000, 5000, 10000, 20000, 30000, 40000, 50000]
N_EDITS, MAX_EVAL, PROBES_PER_CASE, EVAL_BATCH = 50_000, 2_000, 3, 32
A100_BF16_TFLOPS, MFU = 312.0, 0.40
PAPER_HOREN_EDIT_S = 1.670
EVAL_OVERHEAD = 10.0  # paper_rate: evaluation assumed 10x slower than its FLOP bound (batches of 32, short rows)


def block_params(t: dict) -> int:
    head_dim = t["hidden"] // t["heads"]
    attn = t["hidden"] * (t["hidden"] + 2 * t["kv_heads"] * head_dim) + t["hidden"] * t["hidden"]
    return attn + 3 * t["hidden"] * t["ffn"]


def measured(run: Path) -> dict:
    """Steps per edit and tokens per edit / probe from a committed HoReN run."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = rows[-1]
    steps = last["editor_info"]["steps_total"] / last["N"]
    from editbench import runrecords
    recs = list(runrecords.steps(run).values())[-1]
    from editbench.data.zsre import ZsRE
    from editbench.models import load_prompt_format
    from hydra import compose, initialize_config_module

    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model=smollm2_135m"])
    text, _ = load_prompt_format(cfg.model)
    cases = {c.id: c for c in ZsRE().stream(last["N"])}
    edit_tokens, answer_tokens, probe_tokens = [], [], []
    for c in cases.values():
        prompt, answer = text.encode_prompt(c.request.prompt), text.encode_answer(text.answer_sep + c.request.target)
        edit_tokens.append(len(prompt) + len(answer))
        answer_tokens.append(len(answer))
    for r in runrecords.read(recs):
        p = cases[r["case"]].probes[r["set"]].probes[r["i"]]
        probe_tokens.append(len(text.encode_prompt(p.prompt)) + len(r["ids"]))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"run": str(run), "N": last["N"], "steps_per_edit": steps, "edit_tokens": mean(edit_tokens),
            "answer_tokens": mean(answer_tokens), "probe_tokens": mean(probe_tokens),
            "smollm2_edit_s_mean": last["edit_s_mean"]}


def project(m: dict, t: dict = TARGET) -> dict:
    bp, head = block_params(t), t["hidden"] * t["vocab"]
    above = t["layers"] - t["edit_layer"]
    T, A, P = m["edit_tokens"], m["answer_tokens"], m["probe_tokens"]
    edit_flops = 2 * t["edit_layer"] * bp * T + m["steps_per_edit"] * 4 * (above * bp * T + head * A)
    probe_flops = 2 * (t["layers"] * bp + head) * P
    n_probes = sum(min(n, MAX_EVAL) * PROBES_PER_CASE for n in GRID if n <= N_EDITS)
    rate = A100_BF16_TFLOPS * 1e12 * MFU
    edits_h_floor = N_EDITS * edit_flops / rate / 3600
    eval_h_floor = n_probes * probe_flops / rate / 3600
    rows = 65_536  # codebook capacity after doubling past 50,000
    gib = 2 ** 30
    weights = (t["layers"] * bp + 2 * head + t["hidden"] * 2) * t["bytes_per_param"] / gib
    codebook = rows * (t["ffn"] * t["bytes_per_param"] + t["hidden"] * 4) / gib
    eval_act = EVAL_BATCH * P * (t["vocab"] * 4 + t["hidden"] * 2 * 4) / gib  # logits (fp32) + hidden states
    return {"target": t, "grid": GRID, "n_edits": N_EDITS, "retention_max_eval": MAX_EVAL,
            "probes_evaluated": n_probes, "edit_tflop": edit_flops / 1e12, "probe_gflop": probe_flops / 1e9,
            "flop_bound": {"assumed_tflops": rate / 1e12, "edits_h": edits_h_floor, "eval_h": eval_h_floor,
                           "total_h": edits_h_floor + eval_h_floor},
            "paper_rate": {"edit_s": PAPER_HOREN_EDIT_S, "edits_h": N_EDITS * PAPER_HOREN_EDIT_S / 3600,
                           "eval_h": eval_h_floor * EVAL_OVERHEAD,
                           "total_h": N_EDITS * PAPER_HOREN_EDIT_S / 3600 + eval_h_floor * EVAL_OVERHEAD},
            "gpu_memory_gib": {"weights": weights, "codebook_50k": codebook, "eval_batch": eval_act,
                              "total": weights + codebook + eval_act}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("results/zsre/smollm2_135m/horen/n10000_s0"))
    ap.add_argument("--out", type=Path, default=Path("results/projection/paper_50k.json"))
    args = ap.parse_args()
    if not (args.run / "metrics.jsonl").is_file():
        print(f"project_50k: error: no metrics.jsonl in {args.run} — pass --run a HoReN ZsRE result run", file=sys.stderr)
        return 2
    out = {"measured": measured(args.run), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.update(project(out["measured"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    f, p, g = out["flop_bound"], out["paper_rate"], out["gpu_memory_gib"]
    print(f"measured: {out['measured']['steps_per_edit']:.1f} steps/edit, {out['measured']['edit_tokens']:.1f} tokens/edit, "
          f"{out['measured']['probe_tokens']:.1f} tokens/probe (N = {out['measured']['N']})")
    print(f"projection, HoReN x {N_EDITS} edits on {TARGET['name']}: FLOP bound {f['total_h']:.1f} h "
          f"(edits {f['edits_h']:.1f} h, eval {f['eval_h']:.2f} h); at the paper's edit rate {p['total_h']:.1f} h "
          f"(edits {p['edits_h']:.1f} h, eval {p['eval_h']:.1f} h); GPU memory {g['total']:.1f} GiB "
          f"(weights {g['weights']:.1f}, codebook {g['codebook_50k']:.1f}, eval batch {g['eval_batch']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
