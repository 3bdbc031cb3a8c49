"""Routing diagnostics at a checkpoint, for editors that route (`Editor.routing` is not None:
HoReN and its ablations, GRACE; WISE and REPAIR's side-memory router): where the router sends the
prompts of the cases just scored.
The runner adds them to the checkpoint's row as flat `route_*` columns (so the report averages
and plots them like any metric) with the time they took (`route_s`).

- `route_<set>_own` / `_wrong` / `_none` for every set scored by accuracy (ZsRE: `rel` = the
  edit prompt, `gen` = its paraphrase): the share routed to the entry its own case's edit was
  written to, to another entry, or to none (editors whose entries are shared and renumbered, the
  side memories, give only `_none`);
- `route_<set>_retrieved` for every set scored by locality: the share routed to any entry (false
  retrieval);
- `route_<set>_disp`: the median distance the router's refinement moved a query (‖r − q‖, the
  Hopfield displacement; absent for routers that do not refine), per set — the selectivity HoReN claims is a larger
  displacement for paraphrases than for unrelated prompts;
- `route_keys_nn_min` / `_p01` / `_median`: the cosine between a key and its nearest other key,
  over the keys edits were written to (a seeded sample of at most `NN_SAMPLE` keys against all of
  them), i.e. how crowded the codebook is;
- `route_entries`: how many distinct entries the edits were written to.

How many edits took each codebook case (insertion, same-label reuse, conflict) is the editor's own
count, in `editor_info.cases`. A probe's prompt is routed exactly as at a prefill pass: the
evaluator's prompt ids, the site input of the unedited blocks below the site. The runner hands over
the evaluator's cached unedited states entering the site's block (those of the prompt + answer the
evaluation just checked, cut to the prompt), so only that block runs; the blocks below run only for
a prompt the cache does not hold.
"""
from __future__ import annotations

import random
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from editbench.data import EditCase

NN_SAMPLE = 2_000  # keys whose nearest neighbour is found (each against every key)


def routing_diagnostics(editor, encode_prompt, cases: Sequence[EditCase], case_index: Sequence[int],
                        states: Callable | None = None) -> dict:
    """The `route_*` fields for `cases` (stream positions `case_index`), {} for editors that do not
    route. `encode_prompt`: the model's prompt encoder (the evaluator's ids); `states`: the unedited
    states entering a block at each prompt's positions (`Evaluator.prompt_states`; see
    `Editor.routing`), None: computed through the blocks below the site."""
    t0 = time.perf_counter()
    entries = editor.edit_entries()
    if editor.routing([]) is None:
        return {}
    out: dict[str, float | int | None] = {}
    for name in dict.fromkeys(n for c in cases for n in c.probes):
        items = [(pos, p) for c, pos in zip(cases, case_index) if name in c.probes for p in c.probes[name].probes]
        scorer = next(c.probes[name].scorer for c in cases if name in c.probes)
        routed = editor.routing([encode_prompt(p.prompt) for _, p in items], states)
        entry = routed.entry.numpy()
        hit = entry >= 0
        if scorer == "locality":
            out[f"route_{name}_retrieved"] = float(hit.mean())
        elif entries is not None and len(entries) >= max(case_index, default=-1) + 1:
            own = np.array([entries[pos] for pos, _ in items])
            out[f"route_{name}_own"] = float((hit & (entry == own)).mean())
            out[f"route_{name}_wrong"] = float((hit & (entry != own)).mean())
            out[f"route_{name}_none"] = float((~hit).mean())
        else:  # own entries unknown (a run resumed from an older checkpoint): matched or not only
            out[f"route_{name}_none"] = float((~hit).mean())
        if routed.displacement is not None and len(items):
            out[f"route_{name}_disp"] = float(routed.displacement.median())
    out.update(nearest_key_cosines(editor.routing_keys()))
    out["route_entries"] = len(set(entries)) if entries is not None else None
    out["route_s"] = time.perf_counter() - t0
    return out


@torch.no_grad()
def nearest_key_cosines(keys: torch.Tensor | None, sample: int = NN_SAMPLE, seed: int = 0) -> dict:
    """min / 1st percentile / median over (a seeded sample of) keys of the cosine to the nearest
    other key; None values with fewer than two keys."""
    names = ("route_keys_nn_min", "route_keys_nn_p01", "route_keys_nn_median")
    if keys is None or len(keys) < 2:
        return dict.fromkeys(names)
    K = F.normalize(keys.float(), dim=-1)
    rows = list(range(len(K)))
    if len(rows) > sample:
        rows = sorted(random.Random(seed).sample(rows, sample))
    best = []
    for k in range(0, len(rows), 256):
        idx = torch.tensor(rows[k:k + 256], device=K.device)
        s = K[idx] @ K.T
        s[torch.arange(len(idx)), idx] = -float("inf")  # not itself
        best.append(s.max(dim=-1).values.cpu())
    nn = torch.cat(best).numpy()
    return dict(zip(names, (float(nn.min()), float(np.percentile(nn, 1)), float(np.median(nn)))))
