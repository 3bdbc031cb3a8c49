"""GRACE: a codebook of (key, value, deferral radius) at one layer (Hartvigsen et al. 2023,
arXiv:2211.11031; docs/editors.md#grace). Key = the down_proj input at the last prompt token (raw, Euclidean); within the
nearest key's radius the down_proj output at that token is *replaced* by the key's value.

Insertion rules at each edit (epsilon0 = `eps_init`): empty codebook or farther than
epsilon0 + epsilon_j -> add; within reach but another label -> add and split both radii to d/2;
same label beyond epsilon_j -> expand (`coverage`: epsilon_j = d; `moving_average`: also move the
key halfway). Labels are appended with their keys (the original; the EasyEdit port's prepend is a
bug). Only `replace_last` is implemented (the HoReN runs' setting).
"""
from __future__ import annotations

from typing import Literal

import torch

from editbench.editors._common import (TRAINED, Codebook, CodebookEditor, SiteWrapper, edit_labels, prompt_positions,
                                       train_entry)
from editbench.validate import NonNegativeFloat, PositiveFloat, PositiveInt


class GRACE(CodebookEditor):
    label = "GRACE"

    def __init__(self, model, eps_init: NonNegativeFloat, eps_expand: Literal["coverage", "moving_average"],
                 lr: PositiveFloat, n_iter: PositiveInt, stop_loss: NonNegativeFloat | None, patience: PositiveInt | None,
                 val_init: Literal["cold", "warm"], replacement: Literal["replace_last"],
                 same_label: Literal["exact", "reference"]):
        super().__init__(model, eps_init=eps_init, eps_expand=eps_expand, lr=lr, n_iter=n_iter, stop_loss=stop_loss,
                         patience=patience, val_init=val_init, replacement=replacement, same_label=same_label)
        site = model.site_module()
        self.book = Codebook(model.d_in, (model.d_out,), site.weight.dtype, model.device)
        self.cases = {"add": 0, "split": 0, "expand": 0, "reuse": 0}
        model.replace_site(SiteWrapper(site, self._intervene, model.passes))

    def nearest(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = torch.cdist(q.float(), self.book.K.float())
        return d.min(dim=-1)

    def routed(self, x: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last, _ = prompt_positions(prompt_mask)
        if self.book.n == 0:
            return torch.full((len(x),), -1, dtype=torch.long), None
        d, j = self.nearest(x[torch.arange(len(x), device=x.device), last])
        return torch.where(d <= self.book.R[j], j, -1), None  # no refinement: the raw key decides

    def _intervene(self, x: torch.Tensor, y: torch.Tensor, p) -> torch.Tensor:
        if p.kind == "decode":
            return y  # a cached decoding step: the value went in at the last prompt token, at prefill
        last, _ = prompt_positions(p.prompt_mask)
        rows = torch.arange(x.shape[0], device=x.device)
        if TRAINED in p.state:  # training one edit: retrieval was decided once, before training
            param, within = p.state[TRAINED]
            values = param.expand(x.shape[0], -1)
            hit = torch.full((x.shape[0], 1), within, device=x.device)
        elif self.book.n == 0:
            return y
        else:
            d, j = self.nearest(x[rows, last])
            values, hit = self.book.V[j], (d <= self.book.R[j])[:, None]
        out = y.clone()
        out[rows, last] = torch.where(hit, values.to(y.dtype), y[rows, last])
        return out

    def edit(self, requests) -> None:
        eps0 = self.hparams["eps_init"]
        for req in requests:
            batch = self.model.batch([self.model.encode_example(req.prompt, req.target)])
            x, y = self.model.site_io(batch)
            last, _ = prompt_positions(batch.prompt_mask)
            key, y_p = x[0, last[0]], y[0, last[0]].float()
            init = y_p if self.hparams["val_init"] == "warm" else self.draw(torch.rand, y_p.shape[0], y_p.device)
            label, ref_label = edit_labels(batch)
            if self.book.n == 0:
                row = self.book.add(key, init, label, ref_label, eps0)
                self.cases["add"] += 1
            else:
                d, j = self.nearest(key[None])
                d, j = float(d[0]), int(j[0])
                same = (self.book.ref_labels[j] == ref_label if self.hparams["same_label"] == "reference"
                        else self.book.labels[j] == label)
                if d > eps0 + float(self.book.radii[j]):
                    row = self.book.add(key, init, label, ref_label, eps0)
                    self.cases["add"] += 1
                elif not same:
                    row = self.book.add(key, init, label, ref_label, d / 2)
                    self.book.radii[j] = d / 2 - 1e-5
                    self.cases["split"] += 1
                else:
                    row = j
                    if d > float(self.book.radii[j]):
                        if self.hparams["eps_expand"] == "moving_average":
                            self.book.keys[j] = (self.book.keys[j] + key) / 2
                        self.book.radii[j] = d
                        self.cases["expand"] += 1
                    else:
                        self.cases["reuse"] += 1
            self.written(row)
            d, j = self.nearest(key[None])
            hit = bool(int(j[0]) == row and float(d[0]) <= float(self.book.radii[row]))
            self.train_steps.add(train_entry(self, row, hit, batch, self.hparams["lr"]))

    def num_params(self) -> int:
        return self.book.n * (self.book.keys.shape[1] + self.book.values.shape[1] + 1)
