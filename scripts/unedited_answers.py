"""What greedy locality compares against: the unedited model's own answers.

    python scripts/unedited_answers.py [n_edits=1000] [overrides...]

Decodes, with the protocol's greedy rule and decode lengths, the unedited model's answers to the
first `n_edits` edit prompts and locality prompts of the configured stream, and prints how many
end at once (first token an EOS id), how many are "?" then EOS, and the most common outputs.
The unedited locality outputs come from the same state cache the runner uses.
"""
from __future__ import annotations

import collections
import sys

import torch
from hydra import compose, initialize_config_module

from editbench.__main__ import register_resolvers
from editbench.build import build


def shares(model, outputs: list[list[int]]) -> dict:
    eos = set(model.eos_ids)
    outs = [model.until_eos(o) for o in outputs]
    q = model.tok.encode("?", add_special_tokens=False)
    return {
        "n": len(outs),
        "eos_first": sum(o[0] in eos for o in outs) / len(outs),
        "question_mark_first": sum(o[:len(q)] == q for o in outs) / len(outs),
        "question_mark_then_eos": sum(len(o) >= len(q) + 1 and o[:len(q)] == q and o[len(q)] in eos
                                      for o in outs) / len(outs),
        "common": collections.Counter(model.tok.decode(o) for o in outs).most_common(5),
    }


def main(argv: list[str]) -> None:
    register_resolvers()
    overrides = [a for a in argv if not a.startswith("n_edits=")]
    n = int(next((a.split("=", 1)[1] for a in argv if a.startswith("n_edits=")), 1000))
    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["editor=none", *overrides])
    torch.set_num_threads(int(cfg.threads or 1))
    run = build(cfg, n_cases=n)
    cases, model, ev = run.cases, run.model, run.evaluator
    loc = [out for refs in run.refs for out in refs["loc"]]
    prompts = [model.encode_prompt(c.request.prompt) for c in cases]
    n_new = [len(model.encode_answer(model.answer_sep + c.request.target)) for c in cases]
    edit = ev._batched(prompts, lambda idx: ev.greedy(model.model, [prompts[i] for i in idx], [n_new[i] for i in idx]))
    print(f"{cfg.model.name}, {cfg.data.name}, first {n} edits (chat_template={model.chat_template})")
    for what, outs in (("edit prompts", edit), ("locality prompts", loc)):
        s = shares(model, outs)
        print(f"{what:>17}: EOS first {s['eos_first']:.3f}, '?' first {s['question_mark_first']:.3f}, "
              f"'?' then EOS {s['question_mark_then_eos']:.3f}; most common: {s['common']}")


if __name__ == "__main__":
    main(sys.argv[1:])
