"""Export the first N cases of an editbench UnKE stream (`data=unke`) in the UnKEBench JSON schema that
unstructured-editing reference harnesses read, with the preservation data editbench's UnKE trains on.

    python scripts/conformance/export_unke.py OUT_DIR [n=10] [answer_sep=false] [data.order_seed=null] [overrides...]

Builds the stream exactly as the runner does (same config, same `data.*` / `editor.*` overrides; the
default here is `data=unke editor=unke` in file order, `data.order_seed=null`, so case i of a
reference run is case i of editbench's) and writes, under OUT_DIR:

* `UnKE/final_data_v3.json` (and the same list as `records.json`): a JSON list, one object per case
  in stream order, with `question` (the edit prompt = the `orig` probe), `para_question` (the `para`
  probe, where the case has one), `answer` (the target), `sub_question` / `sub_answer` (the `sub`
  probe set, possibly empty) and `id` = editbench's case id (what `records/step_NNNNNN.jsonl.gz`
  calls `case`). With `answer_sep=true` every `answer` starts with editbench's answer separator
  (a space for raw prompts): a harness that tokenises question and answer separately then sees
  the answer ids editbench appends to the prompt (a counterfactual; leave it off for the
  reference's own input);
* `alpaca_data.json`: editbench's preservation pool for `editor.preservation=aux` (the dataset's
  `aux` pairs, in the order the editor holds them) as instruction data: `instruction` = prompt,
  `input` = "", `output` = answer. A harness that joins `instruction + input + " " + output` then
  trains on exactly the strings editbench's UnKE encodes (raw prompts: prompt + " " + answer);
* `preservation_picks.json`: per edit (stream order) the pool indices editbench's UnKE draws
  (`ex_data_num` of them, from a CPU generator seeded with the run seed, one `randperm` of the pool
  per edit, as `editors/unke.py` does) and the (prompt, answer) pairs, so a reference run can be
  given the same preservation examples edit by edit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from editbench.__main__ import register_resolvers
from editbench.build import instantiate_group
from editbench.models import load_prompt_format


def to_unke(case, sep: str) -> dict:
    p = case.probes
    if "orig" not in p or len(p["orig"].probes) != 1:
        raise SystemExit(f"case {case.id}: no single `orig` probe — only UnKE-style cases are exported")
    orig = p["orig"].probes[0]
    r = case.request
    if (orig.prompt, orig.answer) != (r.prompt, r.target):
        raise SystemExit(f"case {case.id}: the orig probe is not the edit prompt / target")
    row = {"id": case.id, "question": r.prompt, "answer": sep + r.target}
    if "para" in p:
        row["para_question"] = p["para"].probes[0].prompt
    subs = p["sub"].probes if "sub" in p else ()
    row["sub_question"] = [s.prompt for s in subs]
    row["sub_answer"] = [s.answer for s in subs]
    return row


def main(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        sys.exit(__doc__.split("\n\n")[1])
    out = Path(argv[0]).expanduser()
    opts = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv[1:] if a.split("=", 1)[0] in ("n", "answer_sep")}
    n = int(opts.get("n", 10))
    answer_sep = opts.get("answer_sep", "false").lower() in ("1", "true", "yes")
    overrides = [a for a in argv[1:] if a.split("=", 1)[0] not in opts]
    register_resolvers()
    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["data=unke", "editor=unke", "data.order_seed=null", *overrides])
    data = instantiate_group(cfg.data)
    cases = data.stream(n)
    sep = ""
    if answer_sep:
        text, _ = load_prompt_format(cfg.model, Path(cfg.cache_dir).expanduser())
        sep = text.answer_sep
    rows = [to_unke(c, sep) for c in cases]
    (out / "UnKE").mkdir(parents=True, exist_ok=True)
    for path in (out / "UnKE" / "final_data_v3.json", out / "records.json"):
        path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")

    ed = cfg.editor
    if ed.get("preservation", "aux") != "aux":
        raise SystemExit(f"editor.preservation={ed.preservation!r}: only the offline pool (aux) is exported")
    pool = list(data.aux(cases))
    (out / "alpaca_data.json").write_text(json.dumps(
        [{"instruction": q, "input": "", "output": a} for q, a in pool], indent=1, ensure_ascii=False) + "\n")
    k = int(ed.ex_data_num)
    gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))  # SetupContext.generator()
    picks = []
    for c in cases:
        idx = torch.randperm(len(pool), generator=gen)[:k].tolist()
        picks.append({"case": c.id, "pool_index": idx, "pairs": [list(pool[i]) for i in idx]})
    (out / "preservation_picks.json").write_text(json.dumps(picks, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(rows)} cases of {cfg.data.name} (order_seed={cfg.data.order_seed}, skip={cfg.data.skip}, "
          f"answer_sep={sep!r}) -> {out}/UnKE/final_data_v3.json; preservation pool {len(pool)} pairs "
          f"(aux={cfg.data.aux}) -> alpaca_data.json; {k} picks per edit (seed {cfg.seed}) -> preservation_picks.json")


if __name__ == "__main__":
    main(sys.argv[1:])
