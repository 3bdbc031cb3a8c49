"""The 50K-edit GPU projection (`scripts/project_50k.py` -> ``<results>/projection/paper_50k.json``) as
the Markdown the README shows between its projection markers."""

from __future__ import annotations

import json
from pathlib import Path

PROJECTION_FILE = Path("projection") / "paper_50k.json"
BEGIN, END = "<!-- projection:begin -->", "<!-- projection:end -->"


def load_projection(results_dir) -> dict | None:
    path = Path(results_dir) / PROJECTION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def projection_markdown(p: dict) -> str:
    m, t, f, r, g = p["measured"], p["target"], p["flop_bound"], p["paper_rate"], p["gpu_memory_gib"]
    return "\n".join([
        f"A projection, not a measurement (`scripts/project_50k.py`, {p['time']}): `experiment=paper_50k`, HoReN, "
        f"{p['n_edits']:,} edits on {t['name']} in bf16, a {p['retention_max_eval']:,}-edit retention sample at "
        f"each of {len(p['grid'])} checkpoints, one 80 GB GPU. Work measured on the embedded model's HoReN run "
        f"to N = {m['N']:,}: {m['steps_per_edit']:.1f} value-training steps per edit, {m['edit_tokens']:.1f} "
        f"tokens per edit, {m['probe_tokens']:.1f} per probe; counted in the target's FLOPs "
        f"({p['edit_tflop']:.2f} TFLOP per edit, {p['probe_gflop']:.0f} GFLOP per probe).", "",
        "| | edits | evaluation | total |", "| :--- | ---: | ---: | ---: |",
        f"| FLOP bound (at {f['assumed_tflops']:.0f} TFLOP/s sustained) | {f['edits_h']:.1f} h | {f['eval_h']:.2f} h "
        f"| {f['total_h']:.1f} h |",
        f"| at the paper's measured {r['edit_s'] * 1e3:,.0f} ms per edit (evaluation 10x its FLOP bound) | "
        f"{r['edits_h']:.1f} h | {r['eval_h']:.1f} h | {r['total_h']:.1f} h |", "",
        f"GPU memory: {g['total']:.1f} GiB (weights {g['weights']:.1f}, the codebook at 50,000 entries "
        f"{g['codebook_50k']:.1f}, one evaluation batch {g['eval_batch']:.1f}). One-edit steps are far from the FLOP "
        f"bound on a GPU (kernel launches dominate), so plan for the second row. No GPU was used for these numbers.",
    ]) + "\n"
