"""Compare an editbench UnKE run (`data=unke`, `protocol=unstructured_v1`) with an unstructured-editing
reference run on the same exported cases, record by record, on the generated texts.

    python scripts/conformance/compare_unke.py RECORDS_JSON REF_JSON EB_RUN_DIR [--step N] [--tokenizer MODEL_DIR]
                                               [--max-tokens K] [--write-ref-schema OUT.json]

RECORDS_JSON is export_unke.py's `records.json` (case i = the i-th exported case); REF_JSON the
reference's checkpoint output: a JSON list of samples, or an object whose `samples` holds it (the
HoReN code's `*_Checkpoint_<N>_results.json`), each with `question`, `answer`,
`original_prediction`, `para_prediction`, `sub_pred`. EB_RUN_DIR's `records/step_<N>.jsonl.gz`
(N = the number of reference samples unless --step) gives editbench's decoded outputs (`ids`, decoded
here without special tokens, as the reference decodes).

Per case and probe (orig / para / each sub-question) it prints whether the two texts are equal and,
with --tokenizer (the exported model folder), the number of leading generated tokens they share.
Both sides' texts are then scored with editbench's own metrics (`textmetrics`: `bleu1_horen`, the
HoReN code's BLEU; `rouge-score` ROUGE-1/2/L recall; the HoReN code's `rouge` 1.0.1 recall,
`rouge*_r_horen`; `minilm_cosine`; texts stripped, as the
evaluator scores them), per case and averaged (sub-questions averaged within the case first).
With --max-tokens K both sides' outputs are cut to their first K generated tokens before decoding
(needs --tokenizer; compares runs made with different generation caps). --write-ref-schema writes
editbench's outputs as reference samples (the reference's fields, editbench's texts), for the
reference's own evaluator. Exit status 1 when any text differs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from editbench import runrecords

KEYS = ("bleu1_horen", "rouge1_r", "rouge2_r", "rougeL_r", "rouge1_r_horen", "rouge2_r_horen", "rougeL_r_horen",
        "minilm_cosine")


def eb_outputs(run: Path, step: int) -> dict:
    path = runrecords.path(run, step)
    if not path.is_file():
        raise SystemExit(f"no {path} — pass --step or the run directory of an editbench run")
    out: dict = {}
    for r in runrecords.read(path):
        out.setdefault(r["case"], {}).setdefault(r["set"], {})[r["i"]] = r
    return out


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("records")
    p.add_argument("ref")
    p.add_argument("run")
    p.add_argument("--step", type=int)
    p.add_argument("--tokenizer")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--write-ref-schema")
    a = p.parse_args(argv)
    exported = json.loads(Path(a.records).read_text())
    ref = json.loads(Path(a.ref).read_text())
    samples = ref["samples"] if isinstance(ref, dict) else ref
    step = a.step or len(samples)
    eb = eb_outputs(Path(a.run), step)
    tok = None
    if a.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(a.tokenizer)
    if a.max_tokens and tok is None:
        sys.exit("--max-tokens needs --tokenizer")

    def ref_ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    def cut_ref(text: str) -> str:
        if not a.max_tokens:
            return text
        return tok.decode(ref_ids(text)[: a.max_tokens], skip_special_tokens=True)

    def eb_text(rec: dict) -> str:
        ids = rec["ids"][: a.max_tokens] if a.max_tokens else rec["ids"]
        if tok is not None:
            return tok.decode(ids, skip_special_tokens=True)
        return rec["out"]

    from editbench import textmetrics

    pairs = []  # (case index, case id, set, i, eb text, ref text, answer)
    for k, (e, s) in enumerate(zip(exported, samples)):
        if s["question"] != e["question"]:
            raise SystemExit(f"sample {k}: reference question {s['question']!r} is not exported {e['question']!r}")
        mine = eb.get(e["id"])
        if mine is None:
            raise SystemExit(f"editbench has no records for case {e['id']} at step {step}")
        pairs.append((k, e["id"], "orig", 0, eb_text(mine["orig"][0]), cut_ref(s["original_prediction"]), e["answer"]))
        if "para" in mine:
            pairs.append((k, e["id"], "para", 0, eb_text(mine["para"][0]), cut_ref(s["para_prediction"]),
                          e["answer"]))
        for j, sub in enumerate(s.get("sub_pred") or []):
            pairs.append((k, e["id"], "sub", j, eb_text(mine["sub"][j]), cut_ref(sub), e["sub_answer"][j]))

    hyps_eb = [t.strip() for *_, t, _r, _a in pairs]
    hyps_ref = [r.strip() for *_, r, _a in pairs]
    refs = [ans.strip() for *_, ans in pairs]
    s_eb = textmetrics.score_pairs(hyps_eb, refs, embeddings=False)
    s_ref = textmetrics.score_pairs(hyps_ref, refs, embeddings=False)
    full = [i for i, pr in enumerate(pairs) if pr[2] != "sub"]
    cos_eb = textmetrics.minilm_cosine([hyps_eb[i] for i in full], [refs[i] for i in full])
    cos_ref = textmetrics.minilm_cosine([hyps_ref[i] for i in full], [refs[i] for i in full])
    for i, c_eb, c_ref in zip(full, cos_eb, cos_ref):
        s_eb[i]["minilm_cosine"], s_ref[i]["minilm_cosine"] = c_eb, c_ref

    n_diff = 0
    print(f"step {step}, {len(samples)} cases" + (f", outputs cut to {a.max_tokens} tokens" if a.max_tokens else ""))
    print(f"{'case':<14} {'set':<6} {'equal':>5} {'shared':>6} {'len eb':>6} {'len ref':>7}  "
          + "  ".join(f"{k} eb/ref" for k in KEYS))
    for (k, cid, sname, j, t_eb, t_ref, _), m_eb, m_ref in zip(pairs, s_eb, s_ref):
        equal = t_eb == t_ref
        n_diff += not equal
        shared = len_eb = len_ref = "-"
        if tok is not None:
            i_eb, i_ref = ref_ids(t_eb), ref_ids(t_ref)
            shared = next((n for n, (x, y) in enumerate(zip(i_eb, i_ref)) if x != y), min(len(i_eb), len(i_ref)))
            len_eb, len_ref = len(i_eb), len(i_ref)
        cells = "  ".join(f"{m_eb[key]:.4f}/{m_ref[key]:.4f}" if key in m_eb else "-" for key in KEYS)
        print(f"{cid:<14} {sname + str(j) if sname == 'sub' else sname:<6} {str(equal):>5} {shared!s:>6} "
              f"{len_eb!s:>6} {len_ref!s:>7}  {cells}")

    print("\naggregates (mean over cases; sub: ROUGE recall averaged within the case first)")
    for sname in ("orig", "para", "sub"):
        idx = [i for i, pr in enumerate(pairs) if pr[2] == sname]
        if not idx:
            continue
        eq = sum(pairs[i][4] == pairs[i][5] for i in idx)
        line = [f"{sname:<5} texts equal {eq}/{len(idx)}"]
        for key in KEYS:
            if key not in s_eb[idx[0]]:
                continue
            per_case = lambda s: [mean([s[i][key] for i in idx if pairs[i][0] == c]) for c in range(len(samples))]
            line.append(f"{key} {mean(per_case(s_eb)):.4f}/{mean(per_case(s_ref)):.4f}")
        print("  ".join(line))
    if isinstance(ref, dict) and "metrics" in ref:
        print(f"\nreference's own metrics ({Path(a.ref).name}): {json.dumps(ref['metrics'])}")

    if a.write_ref_schema:
        rows = []
        for k, (e, s) in enumerate(zip(exported, samples)):
            mine = [pr for pr in pairs if pr[0] == k]
            row = dict(s)
            row["original_prediction"] = next(pr[4] for pr in mine if pr[2] == "orig")
            row["para_prediction"] = next((pr[4] for pr in mine if pr[2] == "para"), s["para_prediction"])
            row["sub_pred"] = [pr[4] for pr in mine if pr[2] == "sub"]
            rows.append(row)
        Path(a.write_ref_schema).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
        print(f"editbench's outputs in the reference's sample schema -> {a.write_ref_schema}")
    return 1 if n_diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
