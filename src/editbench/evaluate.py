"""Scores an (edited) model on edit records: batched greedy generation or teacher forcing.

The evaluator owns tokenisation for scoring and the pre-edit locality outputs; the formulas are in
`metrics.py`. Every forward pass sets the adapter's token context, so site wrappers know which
positions are prompt tokens; on cached decoding steps (one new token) they do nothing.

**Exact shortcut for greedy scoring.** Greedy decoding from a prompt yields a candidate token
sequence c exactly when, run teacher-forced on prompt + c, the argmax at every answer position
equals c (induction over decoding steps). The evaluator first checks each row's expected answer
that way (the target for Rel/Gen, the unedited model's own output for Loc) and decodes only the
rows that fail. When the editor leaves every block below the edit site frozen, the hidden states
entering the edit-site block are the same at every checkpoint and for every editor: they are
computed once (`StateCache`) and each check runs only the blocks from the edit site up.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from editbench import metrics
from editbench.data import EditRecord
from editbench.models import EditableModel, TokenBatch

SCORINGS = ("greedy", "teacher_forced")


class StateCache:
    """Unedited-model quantities shared by all runs on one model: the hidden state entering the
    edit-site block for a token sequence, and the unedited model's greedy outputs. Persisted to
    `path` (atomically) so later runs and resumes reuse it."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.site: dict[tuple, torch.Tensor] = {}
        self.outputs: dict[tuple, list[int]] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            obj = torch.load(self.path, weights_only=False)
            self.site, self.outputs = obj["site"], obj["outputs"]

    def save(self) -> None:
        """Write the cache, merged with what other runs wrote meanwhile (last writer keeps both)."""
        if self.path and self.dirty:
            from editbench.checkpoint import atomic_torch_save

            if self.path.is_file():
                other = torch.load(self.path, weights_only=False)
                self.site = {**other["site"], **self.site}
                self.outputs = {**other["outputs"], **self.outputs}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"site": self.site, "outputs": self.outputs}, self.path)
            self.dirty = False


def cache_key(model_cfg: dict, scoring: str) -> str:
    """Identifies the unedited model's states: its config (not where it runs) and the library
    versions that compute them."""
    import transformers

    keep = {k: v for k, v in model_cfg.items() if k not in ("device", "device_map", "horen")}
    ident = (sorted(keep.items()), scoring, torch.__version__, transformers.__version__)
    return hashlib.sha1(repr(ident).encode()).hexdigest()[:16]


class Evaluator:
    def __init__(self, model: EditableModel, scoring: str = "greedy", batch_size: int = 32,
                 cache: StateCache | None = None):
        if scoring not in SCORINGS:
            from editbench.errors import EditbenchError
            raise EditbenchError(f"protocol.scoring={scoring!r} is not one of {SCORINGS} — pick one of them")
        self.m, self.scoring, self.batch_size = model, scoring, batch_size
        self.cache = cache or StateCache(None)

    # ------------------------------------------------------------------ public
    def pre_locality(self, records: Sequence[EditRecord]) -> list[list[int]]:
        """The unedited model's locality outputs (greedy: all decoded tokens; TF: argmax tokens)."""
        pairs = [(r.loc_prompt, r.loc_answer) for r in records]
        if self.scoring == "teacher_forced":
            return self._teacher_forced(self.m.model, pairs)[0]
        keys = [tuple(self.m.encode_prompt(x)) + (len(self.m.encode_answer(self.m.answer_sep + g)),) for x, g in pairs]
        todo = [i for i, k in enumerate(keys) if k not in self.cache.outputs]
        if todo:
            for i, out in zip(todo, self._generate_for(self.m.model, [pairs[i] for i in todo], None, False)):
                self.cache.outputs[keys[i]] = out
            self.cache.dirty = True
        return [self.cache.outputs[k] for k in keys]

    def evaluate(self, module: nn.Module, records: Sequence[EditRecord], pre_loc: Sequence[list[int]],
                 frozen_below_site: bool = True) -> dict:
        fast = frozen_below_site and module is self.m.model
        rel = self._accuracy(module, [(r.prompt, r.target) for r in records], fast)
        gen = self._accuracy(module, [(r.rephrase, r.target) for r in records], fast)
        post = self._locality(module, records, pre_loc, fast)
        loc = [metrics.agreement(self._loc_tail(a, r), self._loc_tail(b, r)) for a, b, r in zip(pre_loc, post, records)]
        out = {"rel": metrics.mean(rel), "gen": metrics.mean(gen), "loc": metrics.mean(loc)}
        out["op"] = metrics.overall(out["rel"], out["gen"], out["loc"])
        out["n_eval"] = len(records)
        self.cache.save()
        return out

    # ------------------------------------------------------------------ scoring modes
    def _loc_tail(self, ids: list[int], r: EditRecord) -> list[int]:
        """Greedy locality compares the last len(tok(loc_answer)) ids of the *full* output sequence,
        prompt included (EDITORS.md §3.1). The output ends at its first EOS, as HF `generate` (the
        reference decodes one prompt at a time) stops there: when the output is shorter than the
        answer, or the answer encodes longer without its leading space than the decode length, the
        tail reaches back into the (shared) prompt."""
        if self.scoring == "teacher_forced":
            return ids
        k = len(self.m.encode_answer(r.loc_answer))
        full = self.m.encode_prompt(r.loc_prompt) + self.m.until_eos(ids)
        return full[max(len(full) - k, 0):]

    def _locality(self, module, records, pre_loc, fast: bool) -> list[list[int]]:
        pairs = [(r.loc_prompt, r.loc_answer) for r in records]
        if self.scoring == "teacher_forced":
            return self._teacher_forced(module, pairs)[0]
        return self._generate_for(module, pairs, list(pre_loc), fast)

    def _accuracy(self, module, pairs: list[tuple[str, str]], fast: bool) -> list[float]:
        if self.scoring == "teacher_forced":
            preds, labels = self._teacher_forced(module, pairs)
            return [metrics.token_accuracy(p, y) for p, y in zip(preds, labels)]
        expected = [self.m.encode_answer(self.m.answer_sep + y) for _, y in pairs]
        gens = self._generate_for(module, pairs, expected, fast)
        targets = [self.m.encode_answer(y) for _, y in pairs]
        return [metrics.token_em(metrics.answer_ids(self.m.tok, g, len(y)), y) for g, y in zip(gens, targets)]

    def _generate_for(self, module, pairs, candidates, fast: bool) -> list[list[int]]:
        prompts = [self.m.encode_prompt(x) for x, _ in pairs]
        n_new = [len(self.m.encode_answer(self.m.answer_sep + y)) for _, y in pairs]
        out: list = [None] * len(pairs)
        if fast and candidates is not None:
            for i, ok in enumerate(self._confirm(prompts, candidates, n_new)):
                if ok:
                    out[i] = list(candidates[i][:n_new[i]])
        todo = [i for i in range(len(pairs)) if out[i] is None]
        gens = self._batched([prompts[i] for i in todo],
                             lambda idx: self.greedy(module, [prompts[todo[i]] for i in idx], [n_new[todo[i]] for i in idx]))
        for i, g in zip(todo, gens):
            out[i] = g
        return out

    # ------------------------------------------------------------------ the exact shortcut
    def _confirm(self, prompts, candidates, n_new) -> list[bool]:
        """True where greedy decoding would produce candidates[i][:n_new[i]] (see module doc)."""
        rows, checks = [], []
        for p, c, n in zip(prompts, candidates, n_new):
            c = list(c[:n])
            if len(c) < n:
                rows.append(None)
                continue
            # after an EOS the decoder pads with EOS on its own: only check through the first one
            rows.append((p + self.m.until_eos(c), len(p)))
        live = [i for i, r in enumerate(rows) if r is not None]
        ok = [False] * len(rows)
        for i, good in zip(live, self._batched([rows[i][0] for i in live], lambda idx: self._check([rows[live[i]] for i in idx]))):
            ok[i] = good
        return ok

    def _site_states(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        missing = [s for s in dict.fromkeys(tuple(s) for s in seqs) if s not in self.cache.site]
        for k in range(0, len(missing), self.batch_size):
            chunk = missing[k:k + self.batch_size]
            batch = self.m.batch([(list(s), len(s)) for s in chunk])
            h = self.m.prefix(batch).h
            for i, s in enumerate(chunk):
                self.cache.site[s] = h[i, h.shape[1] - len(s):].clone()
            self.cache.dirty = True
        return [self.cache.site[tuple(s)] for s in seqs]

    @torch.no_grad()
    def _check(self, rows: list[tuple[list[int], int]]) -> list[bool]:
        batch = self.m.batch(rows)
        states = self._site_states([ids for ids, _ in rows])
        T = batch.input_ids.shape[1]
        h = states[0].new_zeros((len(rows), T, states[0].shape[-1]))
        for i, s in enumerate(states):
            h[i, T - s.shape[0]:] = s
        hidden = self.m.suffix_hidden(EditableModel.Prefix(h, batch, None, 0))
        nxt = batch.predicts_label
        pred = self.m.model.lm_head(hidden[nxt]).argmax(-1)
        agree = pred == batch.labels[:, 1:][nxt[:, :-1]]
        counts = nxt.sum(1).tolist()
        return [bool(a.all()) for a in torch.split(agree, counts)]

    # ------------------------------------------------------------------ plain paths
    def _teacher_forced(self, module, pairs):
        rows = [self.m.encode_example(x, y) for x, y in pairs]

        def run(idx):
            batch = self.m.batch([rows[i] for i in idx])
            with torch.no_grad(), self.m.context(batch.prompt_mask):
                hidden = module.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=batch.position_ids, use_cache=False).last_hidden_state
                nxt = batch.predicts_label
                pred = module.lm_head(hidden[nxt]).argmax(-1).tolist()
            out, k = [], 0
            for i, n in enumerate(nxt.sum(1).tolist()):
                out.append((pred[k:k + n], batch.labels[i, 1:][nxt[i, :-1]].tolist()))
                k += n
            return out

        res = self._batched([r[0] for r in rows], run)
        return [p for p, _ in res], [y for _, y in res]

    def _batched(self, seqs: list[list[int]], fn) -> list:
        """Apply fn to index batches of similar length; results back in input order."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out: list = [None] * len(seqs)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            for i, r in zip(idx, fn(idx)):
                out[i] = r
        return out

    @torch.no_grad()
    def greedy(self, module, prompts: list[list[int]], n_new: list[int]) -> list[list[int]]:
        """Greedy decoding of n_new[i] tokens per prompt (left-padded batch, KV cache). A row that
        emits an EOS id keeps emitting `eos_id`, as HF `generate` pads finished rows."""
        batch = self.m.batch([(p, len(p)) for p in prompts])
        am, pos = batch.attention_mask, batch.position_ids
        eos, stops = self.m.eos_id, torch.tensor(self.m.eos_ids, device=batch.input_ids.device)
        steps, ids, past = max(n_new), batch.input_ids, None
        done = torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
        new = []
        with self.m.context(batch.prompt_mask):
            for _ in range(steps):
                out = module(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=past,
                             use_cache=True, logits_to_keep=1)
                nxt = out.logits[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                done |= torch.isin(nxt, stops)
                new.append(nxt)
                past, ids = out.past_key_values, nxt[:, None]
                am = torch.cat([am, torch.ones_like(am[:, :1])], dim=1)
                pos = pos[:, -1:] + 1
        gen = torch.stack(new, 1).tolist()
        return [g[:n] for g, n in zip(gen, n_new)]
