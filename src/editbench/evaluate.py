"""Scores an (edited) model on edit records: batched greedy generation or teacher forcing.

The evaluator owns tokenisation for scoring and the pre-edit locality cache; the formulas are in
`metrics.py`. Every forward pass sets the adapter's token context, so site wrappers know which
positions are prompt tokens; on cached decoding steps (one new token) they do nothing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from editbench import metrics
from editbench.data import EditRecord
from editbench.models import EditableModel

SCORINGS = ("greedy", "teacher_forced")


class Evaluator:
    def __init__(self, model: EditableModel, scoring: str = "greedy", batch_size: int = 32):
        if scoring not in SCORINGS:
            from editbench.errors import EditbenchError
            raise EditbenchError(f"protocol.scoring={scoring!r} is not one of {SCORINGS} — pick one of them")
        self.m, self.scoring, self.batch_size = model, scoring, batch_size

    # ------------------------------------------------------------------ public
    def locality_outputs(self, module: nn.Module, records: Sequence[EditRecord]) -> list[list[int]]:
        pairs = [(r.loc_prompt, r.loc_answer) for r in records]
        if self.scoring == "greedy":
            keep = [len(self.m.encode_answer(g)) for _, g in pairs]
            return [ids[len(ids) - k:] for ids, k in zip(self._generate_for(module, pairs), keep)]
        return self._teacher_forced(module, pairs)[0]

    def evaluate(self, module: nn.Module, records: Sequence[EditRecord], pre_loc: Sequence[list[int]]) -> dict:
        rel = self._accuracy(module, [(r.prompt, r.target) for r in records])
        gen = self._accuracy(module, [(r.rephrase, r.target) for r in records])
        post = self.locality_outputs(module, records)
        loc = [metrics.agreement(a, b) for a, b in zip(pre_loc, post)]
        out = {"rel": metrics.mean(rel), "gen": metrics.mean(gen), "loc": metrics.mean(loc)}
        out["op"] = metrics.overall(out["rel"], out["gen"], out["loc"])
        out["n_eval"] = len(records)
        return out

    # ------------------------------------------------------------------ scoring modes
    def _accuracy(self, module, pairs: list[tuple[str, str]]) -> list[float]:
        if self.scoring == "teacher_forced":
            preds, labels = self._teacher_forced(module, pairs)
            return [metrics.token_accuracy(p, y) for p, y in zip(preds, labels)]
        gens = self._generate_for(module, pairs)
        targets = [self.m.encode_answer(y) for _, y in pairs]
        return [metrics.token_em(metrics.answer_ids(self.m.tok, g, len(y)), y) for g, y in zip(gens, targets)]

    def _generate_for(self, module, pairs: list[tuple[str, str]]) -> list[list[int]]:
        prompts = [self.m.encode_prompt(x) for x, _ in pairs]
        n_new = [len(self.m.encode_answer(self.m.answer_sep + y)) for _, y in pairs]
        return self._batched(prompts, lambda idx: self.greedy(module, [prompts[i] for i in idx], [n_new[i] for i in idx]))

    def _teacher_forced(self, module, pairs):
        rows = [self.m.encode_example(x, y) for x, y in pairs]

        def run(idx):
            batch = self.m.batch([rows[i] for i in idx])
            with torch.no_grad(), self.m.context(batch.prompt_mask):
                hidden = module.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=batch.position_ids, use_cache=False).last_hidden_state
                nxt = torch.zeros_like(batch.prompt_mask)
                nxt[:, :-1] = batch.labels[:, 1:] != -100
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
        emits EOS keeps emitting EOS, as HF `generate` pads finished rows."""
        batch = self.m.batch([(p, len(p)) for p in prompts])
        am, pos = batch.attention_mask, batch.position_ids
        eos = self.m.eos_id
        steps, ids, past = max(n_new), batch.input_ids, None
        done = torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
        new = []
        with self.m.context(batch.prompt_mask):
            for _ in range(steps):
                out = module(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=past,
                             use_cache=True, logits_to_keep=1)
                nxt = out.logits[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                done |= nxt == eos
                new.append(nxt)
                past, ids = out.past_key_values, nxt[:, None]
                am = torch.cat([am, torch.ones_like(am[:, :1])], dim=1)
                pos = pos[:, -1:] + 1
        gen = torch.stack(new, 1).tolist()
        return [g[:n] for g, n in zip(gen, n_new)]
