"""Compare an editbench run with a reference implementation's run on the same exported records.

    python scripts/conformance/compare.py records RECORDS_JSON REF_JSON EB_RUN_DIR [--step N] [--tol T]
    python scripts/conformance/compare.py weights REF_DELTA_PT EB_RUN_DIR [--step N] [--base MODEL_DIR]

`records`: RECORDS_JSON is export_records.py's `records.json` (case i = the i-th exported record);
REF_JSON the reference's per-case output: a JSON list of per-case metrics (EasyEdit's `edit` /
`batch_edit` output) or an object whose `individuals` holds that list (the HoReN code's
`*_Checkpoint_<N>_results.json`). Each case's `post` scores are read as `rewrite_acc` -> rel,
`rephrase_acc` -> gen and the one `locality.<key>_acc` -> loc; the case's prompt must equal the
exported one. EB_RUN_DIR's `records/step_<N>.jsonl.gz` (N = the number of records unless --step)
gives editbench's per-probe scores (docs/protocol.md#result-files). Prints, per set, the agreement
(fraction of cases whose scores differ by at most --tol, default 1e-9), the aggregate on both
sides, and every case that differs. Exit status 1 when any case differs.

`weights`: REF_DELTA_PT is a dict {HF parameter name: W - W0} saved from the reference process;
editbench's delta is read from EB_RUN_DIR's `ckpt/step_<N>/state.pt` (`editor.deltas`, keyed
`<layer>.<module>.weight`; N = 1 unless --step). With --base (the exported model folder), editbench's
delta is taken as (W0 + D) - W0 in the weight dtype, i.e. measured the way the reference's is.
Prints per module the cosine and the relative difference |D_eb - D_ref| / |D_ref|, and the norms.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from editbench import runrecords

SETS = ("rel", "gen", "loc")


def ref_scores(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    rows = data["individuals"] if isinstance(data, dict) else data
    out = []
    for r in rows:
        post = r["post"]
        loc = [v for k, v in post.get("locality", {}).items() if k.endswith("_acc")]
        if len(loc) != 1:
            raise SystemExit(f"{path}: case {r.get('case_id')} has {len(loc)} locality scores, expected one")
        one = {"rel": post["rewrite_acc"], "gen": post["rephrase_acc"], "loc": loc[0]}
        one = {k: float(v[0]) if isinstance(v, list) else float(v) for k, v in one.items()}
        one["prompt"] = r.get("requested_rewrite", {}).get("prompt")
        out.append(one)
    return out


def eb_scores(run: Path, step: int) -> dict[tuple[str, str], dict]:
    f = runrecords.path(run, step)
    if not f.is_file():
        raise SystemExit(f"no {f} — pass --step or the run directory of an editbench run")
    return {(r["case"], r["set"]): r for r in runrecords.read(f) if r["i"] == 0}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def cmd_records(a) -> int:
    exported = json.loads(Path(a.records).read_text())
    ref = ref_scores(Path(a.ref))
    if len(ref) != len(exported):
        raise SystemExit(f"reference has {len(ref)} cases, {a.records} {len(exported)}")
    eb = eb_scores(Path(a.run), a.step or len(exported))
    diffs = []
    print(f"{len(exported)} cases; editbench {a.run}; reference {a.ref}")
    print(f"{'set':<4} {'agree':>7} {'editbench':>10} {'reference':>10}")
    for s in SETS:
        agree, mine, theirs = 0, [], []
        for e, r in zip(exported, ref):
            if r["prompt"] is not None and r["prompt"] != e["src"]:
                raise SystemExit(f"reference case order differs: {r['prompt']!r} vs exported {e['src']!r}")
            row = eb.get((e["case"], s))
            if row is None:
                raise SystemExit(f"editbench has no {s} score for case {e['case']}")
            mine.append(float(row["score"]))
            theirs.append(r[s])
            if abs(mine[-1] - theirs[-1]) <= a.tol:
                agree += 1
            else:
                diffs.append((e["case"], s, mine[-1], theirs[-1], row.get("out"), row.get("ids")))
        print(f"{s:<4} {agree / len(exported):>7.3f} {mean(mine):>10.4f} {mean(theirs):>10.4f}")
    for case, s, m, t, out, ids in diffs:
        print(f"differs: {case} {s}: editbench {m:.4f} reference {t:.4f} (editbench out {out!r}, ids {ids})")
    return 1 if diffs else 0


def cmd_weights(a) -> int:
    import torch

    ref = torch.load(a.ref, weights_only=True)
    state = torch.load(Path(a.run) / "ckpt" / f"step_{a.step or 1:06d}" / "state.pt", weights_only=False)
    deltas = state["editor"]["deltas"]
    base = {}
    if a.base:
        from safetensors.torch import load_file

        base = load_file(str(Path(a.base) / "model.safetensors"))
    print(f"{'module':<32} {'cosine':>10} {'rel diff':>10} {'|D_eb|':>10} {'|D_ref|':>10}")
    worst = 0.0
    for k, d in deltas.items():
        names = [n for n in ref if n.endswith(f"layers.{k}")]
        if len(names) != 1:
            raise SystemExit(f"editbench delta {k}: {len(names)} matching reference parameters")
        r = ref[names[0]].double()
        if names[0] in base:
            w0 = base[names[0]].to(d.dtype)
            d = (w0 + d) - w0
        d = d.double()
        cos = float(torch.nn.functional.cosine_similarity(d.flatten(), r.flatten(), dim=0))
        rel = float((d - r).norm() / r.norm())
        worst = max(worst, rel)
        print(f"{names[0]:<32} {cos:>10.6f} {rel:>10.2e} {float(d.norm()):>10.4g} {float(r.norm()):>10.4g}")
    missing = [n for n in ref if not any(n.endswith(f"layers.{k}") for k in deltas)]
    if missing:
        print(f"reference changed modules editbench did not: {missing}")
    print(f"largest relative difference: {worst:.2e}")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("records")
    r.add_argument("records")
    r.add_argument("ref")
    r.add_argument("run")
    r.add_argument("--step", type=int)
    r.add_argument("--tol", type=float, default=1e-9)
    w = sub.add_parser("weights")
    w.add_argument("ref")
    w.add_argument("run")
    w.add_argument("--step", type=int)
    w.add_argument("--base")
    a = p.parse_args(argv)
    return cmd_records(a) if a.cmd == "records" else cmd_weights(a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
