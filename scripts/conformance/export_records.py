"""Export the first N cases of an editbench stream in the ZsRE JSON schema that EasyEdit-style
reference harnesses read.

    python scripts/conformance/export_records.py OUT_DIR [n=10] [data.order_seed=null] [overrides...]

Builds the stream exactly as the runner does (same config, same `data.*` overrides; the default
here is file order, `data.order_seed=null`, so case i of a reference run is case i of editbench's)
and writes a JSON list, one object per case in stream order, with

* `case`: editbench's case id (what `records/step_NNNNNN.jsonl.gz` calls `case`);
* `src` (the edit prompt = the `rel` probe), `rephrase` (the `gen` probe), `subject`;
* the target under every name a reference loader may read: `answers` (a one-element list),
  `alt` and `ans` all hold editbench's target (which record field that came from is `data.target`);
* `loc`, `loc_ans`: the `loc` probe (prompt, reference answer), unchanged.

Files: `records.json`, and the same list under the names known harnesses open:
`zsre_edit_data.json` and `zsre_train_data.json` (the HoReN code reads the edits from the first
and, position by position, the locality pairs from the second), `zsre_eval_20k.json` (EasyEdit's
UltraEdit example). Only ZsRE-style streams (rel / gen / loc, one probe each) are supported.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_module

from editbench.__main__ import register_resolvers
from editbench.build import instantiate_group

NAMES = ("records.json", "zsre_edit_data.json", "zsre_train_data.json", "zsre_eval_20k.json")


def to_zsre(case) -> dict:
    r, p = case.request, case.probes
    if set(p) != {"rel", "gen", "loc"} or any(len(ps.probes) != 1 for ps in p.values()):
        raise SystemExit(f"case {case.id}: probe sets {sorted(p)} — only ZsRE-style cases (rel, gen, loc) "
                         f"are exported")
    rel, gen, loc = p["rel"].probes[0], p["gen"].probes[0], p["loc"].probes[0]
    if (rel.prompt, rel.answer) != (r.prompt, r.target) or gen.answer != r.target:
        raise SystemExit(f"case {case.id}: rel / gen probes are not the edit prompt / target")
    return {"case": case.id, "src": r.prompt, "rephrase": gen.prompt, "subject": r.subject,
            "answers": [r.target], "alt": r.target, "ans": r.target, "loc": loc.prompt, "loc_ans": loc.answer}


def main(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        sys.exit(__doc__.split("\n\n")[1])
    out = Path(argv[0]).expanduser()
    rest = argv[1:]
    n = int(next((a.split("=", 1)[1] for a in rest if a.startswith("n=")), 10))
    overrides = [a for a in rest if not a.startswith("n=")]
    register_resolvers()
    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["data.order_seed=null", *overrides])
    data = instantiate_group(cfg.data)
    rows = [to_zsre(c) for c in data.stream(n)]
    out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (out / name).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    odd = [r["case"] for r in rows if r["subject"] not in r["src"]]
    print(f"{len(rows)} cases of {cfg.data.name} (order_seed={cfg.data.order_seed}, skip={cfg.data.skip}, "
          f"target={cfg.data.get('target')}) -> {out}/{{{','.join(NAMES)}}}")
    if odd:
        print(f"warning: subject not inside the prompt for {odd} (harnesses that assert it will refuse them)")


if __name__ == "__main__":
    main(sys.argv[1:])
