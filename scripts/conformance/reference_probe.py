r"""Run a reference harness's own entry script, unchanged, and observe its editor from outside.

    cd REF_CHECKOUT && PYTHONPATH=. OMP_NUM_THREADS=1 REF_VENV/bin/python \
        /path/to/editbench/scripts/conformance/reference_probe.py OUT_DIR ALG_DICT_MODULE ALG SCRIPT [script args...]

Runs in the *reference's* environment (it imports nothing from editbench). EasyEdit-style harnesses
(EasyEdit, the HoReN code) call `ALG_DICT[ALG](model, tok, requests, hparams, ...)` once per edit;
this replaces that dictionary entry by a wrapper that calls the original and records, without
touching its arguments or results:

* `edit_times.json`: the wall time of every call (`edit_s`), and, when the callable is a bound
  method of an executor holding an `alg` object, how many distinct such objects were seen and,
  where `alg` has a `lifelong_normalizer` (UltraEdit), each normaliser's row count after every call;
* `delta_edit1.pt` / `delta_last.pt`: {parameter name: W - W0} for every parameter that changed,
  after the first and after the latest call (W0: the weights before the first call; float32
  differences of the stored weights, what `compare.py weights --base` compares them with).

Then runs SCRIPT as `__main__` with the remaining arguments (its outputs go where it writes them).
Example (the HoReN code, UltraEdit):

    reference_probe.py /work/conformance/ref_out src.util.alg_dict ULTRAEDIT \
        experiments/run_structured_data_editing.py --editing_method ULTRAEDIT --hparams_dir H.yaml \
        --data_dir DATA --data_type ZsRE --ds_size 10 --output_dir OUT --sequential_edit
"""
from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import time

import torch


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        sys.exit(__doc__.split("\n\n")[1])
    out, module, alg, script = argv[:4]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    table = importlib.import_module(module).ALG_DICT
    orig = table[alg]
    executor = getattr(orig, "__self__", None)
    log = {"edit_s": [], "distinct_alg_objects": 0, "normaliser_rows_after_each_edit": []}
    seen, w0 = set(), {}

    def wrapped(model, *args, **kwargs):
        if not w0:
            w0.update({n: p.detach().clone() for n, p in model.named_parameters()})
        t = time.perf_counter()
        result = orig(model, *args, **kwargs)
        log["edit_s"].append(time.perf_counter() - t)
        edited = result[0] if isinstance(result, tuple) else model
        d = {n: (p.detach() - w0[n]).cpu() for n, p in edited.named_parameters()
             if n in w0 and not torch.equal(p.detach(), w0[n])}
        if len(log["edit_s"]) == 1:
            torch.save(d, os.path.join(out, "delta_edit1.pt"))
        torch.save(d, os.path.join(out, "delta_last.pt"))
        a = getattr(executor, "alg", None)
        if a is not None:
            seen.add(id(a))
            log["distinct_alg_objects"] = len(seen)
            norms = getattr(a, "lifelong_normalizer", None)
            if norms is not None:
                log["normaliser_rows_after_each_edit"].append({k: int(v.n.item()) for k, v in norms.items()})
        with open(os.path.join(out, "edit_times.json"), "w") as f:
            json.dump(log, f, indent=1)
        return result

    table[alg] = wrapped
    sys.argv = [script, *argv[4:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
