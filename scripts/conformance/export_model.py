"""Export editbench's model as a plain Hugging Face folder, for a reference implementation to load.

    python scripts/conformance/export_model.py OUT_DIR [model=smollm2_135m] [n_check=50] [overrides...]

Loads the model exactly as editbench does (`load_prompt_format` + `load_model`: for the embedded
SmolLM2 the GGUF de-quantised to the config's dtype, with the tokenizer the GGUF declares), and
writes `save_pretrained` of the model and of its tokenizer to OUT_DIR. Then it loads the folder
back with plain `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(OUT_DIR)`, as a reference
harness will, and fails (exit 1) unless

* every prompt, prompt + separator + target and bare answer of the first `n_check` stream cases
  (all three probe sets) encodes to exactly the ids editbench gives (`encode_prompt`,
  `encode_example`, `encode_answer`): no BOS may appear that editbench does not add;
* BOS / EOS / pad ids agree;
* the reloaded model's logits equal the in-process model's on a few examples (max |diff| = 0).

It also notes (without failing) answers whose own tokenisation (separator + answer) is not the tail
of prompt + separator + answer: EasyEdit-style editors build their labels that way.

Reference harnesses often choose behaviour from the model's *name* (the folder's basename), e.g.
the loss shift of EasyEdit-style editors for names containing "llama": name OUT_DIR accordingly
and record it in docs/conformance.md. Run single-threaded: OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from editbench.__main__ import register_resolvers
from editbench.build import instantiate_group
from editbench.models import load_model, load_prompt_format


def fail(msg: str) -> None:
    print(f"EXPORT CHECK FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        sys.exit(__doc__.split("\n\n")[1])
    out = Path(argv[0]).expanduser().resolve()
    rest = argv[1:]
    n_check = int(next((a.split("=", 1)[1] for a in rest if a.startswith("n_check=")), 50))
    overrides = [a for a in rest if not a.startswith("n_check=")]
    register_resolvers()
    with initialize_config_module("editbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["data.order_seed=null", "model.device=cpu", *overrides])
    torch.set_num_threads(1)
    text, _ = load_prompt_format(cfg.model)
    if text.chat_template:
        fail("model.chat_template=true: a reference harness would have to apply the template itself; "
             "export raw-prompt models")
    em = load_model(cfg.model, text)
    hf, tok = em.model, text.tok
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    tok.save_pretrained(out)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    back = AutoTokenizer.from_pretrained(out)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(back, attr) != getattr(tok, attr):
            fail(f"{attr}: editbench {getattr(tok, attr)}, exported {getattr(back, attr)}")

    cases = instantiate_group(cfg.data).stream(n_check)
    sep = text.answer_sep
    checked = 0
    examples, split_answers = [], []
    for c in cases:
        pairs = [(c.request.prompt, c.request.target)]
        pairs += [(p.prompt, p.answer) for ps in c.probes.values() for p in ps.probes]
        for prompt, answer in pairs:
            want_p = text.encode_prompt(prompt)
            got_p = back(prompt).input_ids
            want_e, _ = text.encode_example(prompt, answer)
            got_e = back(prompt + sep + answer).input_ids
            want_a = text.encode_answer(answer)
            got_a = back.encode(answer, add_special_tokens=False)
            for what, want, got in (("prompt", want_p, got_p), ("prompt+answer", want_e, got_e),
                                    ("answer", want_a, got_a)):
                if want != got:
                    fail(f"case {c.id} {what} {prompt!r} / {answer!r}: editbench ids {want}, "
                         f"exported tokenizer {got}")
                checked += 1
            examples.append(want_e)
            alone = back(sep + answer).input_ids  # how EasyEdit-style editors tokenise a target for labels
            if alone != want_e[len(want_e) - len(alone):]:
                split_answers.append(f"{c.id}: {answer!r}")

    model2 = AutoModelForCausalLM.from_pretrained(out, dtype=hf.dtype)
    worst = 0.0
    with torch.no_grad():
        for ids in examples[:5]:
            x = torch.tensor([ids])
            worst = max(worst, (hf(x).logits - model2(x).logits).abs().max().item())
    if worst != 0.0:
        fail(f"reloaded model's logits differ from editbench's by up to {worst:g}")
    info = {"model": cfg.model.name, "dtype": str(hf.dtype), "folder": str(out), "tokenizer_class": type(back).__name__,
            "bos_token_id": back.bos_token_id, "eos_token_id": back.eos_token_id, "pad_token_id": back.pad_token_id,
            "adds_bos": back("a").input_ids[0] == back.bos_token_id,
            "encodings_checked": checked, "cases_checked": len(cases), "max_logit_diff": worst,
            "answers_tokenised_differently_alone": split_answers}
    (out / "editbench_export.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info))
    if split_answers:
        print(f"note: {len(split_answers)} answers tokenise differently alone (separator + answer) than at the end of "
              f"prompt + separator + answer; a reference that labels the target from its own tokenisation will "
              f"mislabel those: {split_answers[:5]}")


if __name__ == "__main__":
    main(sys.argv[1:])
