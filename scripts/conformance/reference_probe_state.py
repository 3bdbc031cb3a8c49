r"""Like reference_probe.py, and also record the editor's own state (side memories, masks, codebooks).

    cd REF_CHECKOUT && PYTHONPATH=. OMP_NUM_THREADS=1 [PROBE_GLOBALS=module:NAME,...] REF_VENV/bin/python \
        /path/to/editbench/scripts/conformance/reference_probe_state.py OUT_DIR ALG_DICT_MODULE ALG SCRIPT [args...]

Runs in the *reference's* environment and imports nothing from editbench. Everything
reference_probe.py writes is written too (it is run underneath: `edit_times.json`,
`delta_edit1.pt`, `delta_last.pt`). In addition, after the first and after the latest
`ALG_DICT[ALG]` call it saves `state_edit1.pt` / `state_last.pt`: {path: tensor} for every tensor
held by a module of the returned object (the edited model or an editor wrapping it) that is not
one of the original model's parameters. Tensors are found as registered parameters / buffers and
as plain attributes, also inside lists and tuples (`path.attr[i]`); tensors over 50M elements are
skipped. So a reference that wraps a layer (WISE's adapter, GRACE / HoReN codebooks) has its
side weights, masks and keys recorded, read-only, from outside. `PROBE_GLOBALS` names module
globals (e.g. a cached list of context templates) saved after the first call to `globals.json`.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

import torch

MAX_NUMEL = 50_000_000


def collect(obj, skip_ids: set[int]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if not isinstance(obj, torch.nn.Module):
        return out
    for mname, mod in obj.named_modules():
        items = list(mod._parameters.items()) + list(mod._buffers.items())
        items += [(k, v) for k, v in vars(mod).items() if not k.startswith("_")]
        for k, v in items:
            vals = [(f"{mname}.{k}", v)] if isinstance(v, torch.Tensor) else (
                [(f"{mname}.{k}[{i}]", t) for i, t in enumerate(v) if isinstance(t, torch.Tensor)]
                if isinstance(v, (list, tuple)) else [])
            for name, t in vals:
                if id(t) in skip_ids or t.numel() > MAX_NUMEL or name in out:
                    continue
                out[name] = t.detach().cpu().clone()
    return out


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        sys.exit(__doc__.split("\n\n")[1])
    out, module, alg = argv[:3]
    os.makedirs(out, exist_ok=True)
    table = importlib.import_module(module).ALG_DICT
    orig = table[alg]
    skip: set[int] = set()
    calls = [0]

    def observed(model, *args, **kwargs):
        if not skip:
            skip.update(id(p) for p in model.parameters())
        result = orig(model, *args, **kwargs)
        calls[0] += 1
        edited = result[0] if isinstance(result, tuple) else model
        state = collect(edited, skip)
        if calls[0] == 1:
            torch.save(state, os.path.join(out, "state_edit1.pt"))
            g = {}
            for spec in filter(None, os.environ.get("PROBE_GLOBALS", "").split(",")):
                mod_name, attr = spec.split(":")
                g[spec] = getattr(importlib.import_module(mod_name), attr, None)
            if g:
                with open(os.path.join(out, "globals.json"), "w") as f:
                    json.dump(g, f, indent=1, default=repr)
        torch.save(state, os.path.join(out, "state_last.pt"))
        return result

    table[alg] = observed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference_probe

    reference_probe.main(argv)  # wraps `observed` (timing, W - W0) and runs the script


if __name__ == "__main__":
    main(sys.argv[1:])
