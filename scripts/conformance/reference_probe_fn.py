r"""Run a reference harness's own entry script, unchanged, and observe one editing function from outside.

    cd REF_CHECKOUT && PYTHONPATH=. OMP_NUM_THREADS=1 REF_VENV/bin/python \
        /path/to/editbench/scripts/conformance/reference_probe_fn.py OUT_DIR MODULE:FUNC \
        [--kwarg NAME=FILE.json] [--log-kwarg NAME] [--stop-after K] -- SCRIPT [script args...]

The sibling of `reference_probe.py` for harnesses that call a module-level function rather than an
`ALG_DICT` entry (the HoReN code's `run_unstructured_data_editing.py` imports
`apply_unke_to_model` from `src.models.unke` and calls it once per edit batch as
`fn(model, tok, hparams, batch, ex_data=...)`). Runs in the *reference's* environment (it imports
nothing from editbench). It replaces MODULE.FUNC before SCRIPT runs (so SCRIPT's
`from MODULE import FUNC` binds the wrapper), and the wrapper calls the original with the same
arguments, except:

* `--kwarg NAME=FILE.json`: FILE holds a JSON list with one value per call; call i gets
  `NAME=value[i]` instead of what the harness passed (a counterfactual input, e.g. editbench's own
  preservation examples for UnKE's `ex_data`; say so wherever its results are used);
* `--stop-after K`: after the K-th call (and its files) the process exits with status 0, before the
  harness evaluates (for update-only checks).

It writes to OUT_DIR:

* `edit_times.json`: the wall time of every call (`edit_s`) and, with `--log-kwarg NAME`, the
  value of that keyword argument as the original received it, call by call (`kwarg_<NAME>`);
* `delta_edit1.pt` / `delta_last.pt`: {parameter name: W - W0} for every parameter of the model
  (the first positional argument) that changed, after the first and after the latest call (W0: the
  weights before the first call; float32 differences of the stored weights, what
  `compare.py weights --base` compares them with).
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
    if "--" not in argv or len(argv[:argv.index("--")]) < 2 or len(argv) <= argv.index("--") + 1:
        sys.exit(__doc__.split("\n\n")[1])
    cut = argv.index("--")
    head, script_argv = argv[:cut], argv[cut + 1:]
    out, target = head[0], head[1]
    opts = head[2:]
    subst: dict[str, list] = {}
    log_names: list[str] = []
    stop_after = None
    i = 0
    while i < len(opts):
        if opts[i] == "--kwarg":
            name, path = opts[i + 1].split("=", 1)
            with open(path) as f:
                subst[name] = json.load(f)
        elif opts[i] == "--log-kwarg":
            log_names.append(opts[i + 1])
        elif opts[i] == "--stop-after":
            stop_after = int(opts[i + 1])
        else:
            sys.exit(f"unknown option {opts[i]!r}\n" + __doc__.split("\n\n")[1])
        i += 2
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    module_name, func_name = target.split(":", 1)
    module = importlib.import_module(module_name)
    orig = getattr(module, func_name)
    log: dict = {"target": target, "substituted_kwargs": sorted(subst), "edit_s": []}
    for name in log_names:
        log[f"kwarg_{name}"] = []
    w0: dict[str, torch.Tensor] = {}

    def wrapped(model, *args, **kwargs):
        call = len(log["edit_s"])
        for name in log_names:
            log[f"kwarg_{name}"].append(kwargs.get(name))
        for name, values in subst.items():
            if call >= len(values):
                sys.exit(f"--kwarg {name}: {len(values)} values but call {call + 1} needs one more")
            kwargs[name] = values[call]
        if not w0:
            w0.update({n: p.detach().clone() for n, p in model.named_parameters()})
        t = time.perf_counter()
        result = orig(model, *args, **kwargs)
        log["edit_s"].append(time.perf_counter() - t)
        d = {n: (p.detach() - w0[n]).cpu() for n, p in model.named_parameters()
             if n in w0 and not torch.equal(p.detach(), w0[n])}
        if call == 0:
            torch.save(d, os.path.join(out, "delta_edit1.pt"))
        torch.save(d, os.path.join(out, "delta_last.pt"))
        with open(os.path.join(out, "edit_times.json"), "w") as f:
            json.dump(log, f, indent=1, default=str)
        if stop_after is not None and call + 1 >= stop_after:
            print(f"[reference_probe_fn] stopping after call {call + 1} (--stop-after {stop_after})")
            sys.exit(0)
        return result

    setattr(module, func_name, wrapped)
    sys.argv = list(script_argv)
    runpy.run_path(script_argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
