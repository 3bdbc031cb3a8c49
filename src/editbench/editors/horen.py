"""HoReN: normalized Hopfield retrieval over a GRACE-style codebook at one MLP down_proj
(docs/editors.md#horen).

Query = the down_proj input averaged over the last ceil(rho * P) prompt tokens, L2-normalised;
one damped Hopfield step (beta, alpha, M steps, tolerance) over the whole codebook, dummy entry
included; the best cosine above tau selects an entry whose value is added to the down_proj output
at the last prompt token. Edit cases: no match -> insert; match with the same label -> train that
entry further; match with another label -> insert. The stored key is the pre-refinement query.

Ablation switches: `normalize` (false: raw dot products, no L2), `hopfield_steps` (0 = GRACE+Norm),
`alpha`, `beta`, `threshold`, `pooling_ratio`, `value_adaptor` (vector | lora), `same_label`
(exact: equal target token ids | reference: the reference code's mean-of-label-tensor test).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from editbench.editors._common import (TRAINED, Codebook, CodebookEditor, SiteWrapper, edit_labels, prompt_positions,
                                       train_entry)
from editbench.validate import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveFraction, PositiveInt


class HoReN(CodebookEditor):
    label = "HoReN"

    def __init__(self, model, threshold: float, pooling_ratio: PositiveFraction,
                 beta: PositiveFloat, alpha: Fraction, hopfield_steps: NonNegativeInt, tol: NonNegativeFloat,
                 normalize: bool, value_adaptor: Literal["vector", "lora"], lr: PositiveFloat, n_iter: PositiveInt,
                 stop_loss: NonNegativeFloat | None, patience: PositiveInt | None, val_init: Literal["cold", "warm"],
                 lora_rank: PositiveInt, lora_scale: float, lora_lr: PositiveFloat,
                 same_label: Literal["exact", "reference"]):
        super().__init__(model, threshold=threshold, pooling_ratio=pooling_ratio, beta=beta, alpha=alpha,
                         hopfield_steps=hopfield_steps, tol=tol, normalize=normalize, value_adaptor=value_adaptor,
                         lr=lr, n_iter=n_iter, stop_loss=stop_loss, patience=patience, val_init=val_init,
                         lora_rank=lora_rank, lora_scale=lora_scale, lora_lr=lora_lr, same_label=same_label)
        self.tau, self.rho, self.beta, self.alpha = threshold, pooling_ratio, beta, alpha
        self.steps, self.tol, self.normalize = hopfield_steps, tol, normalize
        self.lora = value_adaptor == "lora"
        d_in, d_out = model.d_in, model.d_out
        self.d_out, self.r = d_out, lora_rank
        site = model.site_module()
        self.book = Codebook(d_in, (2 * lora_rank * d_out,) if self.lora else (d_out,), site.weight.dtype, model.device)
        self.cases = {"insert_no_match": 0, "train_same_label": 0, "insert_conflict": 0}
        model.replace_site(SiteWrapper(site, self._intervene, model.passes))

    def setup(self, ctx) -> None:
        super().setup(ctx)
        dummy = self.draw(torch.randn, self.model.d_in, self.model.device)
        # entry 0: a random unit key, zero value, never-matching label
        self.book.add(dummy / dummy.norm(), 0.0, label=(), ref_label=float("nan"))

    @property
    def method(self) -> str:
        if self.steps == 0:
            return "GRACE+Norm" if self.normalize else "GRACE (pooled, dot)"
        if not self.normalize:
            return "HoReN w/o norm"
        return "HoReN-LoRA" if self.lora else "HoReN"

    # ------------------------------------------------------------------ retrieval
    def query(self, x: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        _, window = prompt_positions(prompt_mask, self.rho)
        w = window.to(x.dtype)[..., None]
        q = ((x * w).sum(1) / w.sum(1)).float()
        return F.normalize(q, dim=-1) if self.normalize else q

    def refine(self, q: torch.Tensor) -> torch.Tensor:
        """M damped Hopfield steps over every codebook entry (the dummy included)."""
        K = self.book.K.float()
        for _ in range(self.steps):
            attn = torch.softmax(self.beta * q @ K.T, dim=-1)
            r = attn @ K
            if self.normalize:
                r = F.normalize(r, dim=-1)
            if (r - q).norm(dim=-1).max() < self.tol:
                break
            q = (1 - self.alpha) * q + self.alpha * r
            if self.normalize:
                q = F.normalize(q, dim=-1)
        return q

    def match(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = q @ self.book.K.float().T
        return scores.max(dim=-1)

    def routed(self, x: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.query(x, prompt_mask)
        if self.book.n <= 1:  # the dummy alone routes nothing (as `_intervene`)
            return torch.full((len(q),), -1, dtype=torch.long), torch.zeros(len(q))
        r = self.refine(q)
        s, j = self.match(r)
        return torch.where(s > self.tau, j, -1), (r - q).norm(dim=-1)

    # ------------------------------------------------------------------ the site intervention
    def _intervene(self, x: torch.Tensor, y: torch.Tensor, p) -> torch.Tensor:
        if p.kind == "decode":
            return y  # a cached decoding step: the value went in at the last prompt token, at prefill
        pm = p.prompt_mask
        last, _ = prompt_positions(pm)
        rows = torch.arange(x.shape[0], device=x.device)
        y_p = y[rows, last]
        if TRAINED in p.state:  # training one edit: retrieval was decided once, before training
            param, hit = p.state[TRAINED]
            values, s = param.expand(x.shape[0], -1), torch.full((x.shape[0],), 1.0 if hit else -1.0, device=x.device)
            return self._add(y, rows, last, y_p, values, s, tau=0.0)
        if self.book.n <= 1:
            return y
        s, j = self.match(self.refine(self.query(x, pm)))
        return self._add(y, rows, last, y_p, self.book.V[j], s, self.tau)

    def _add(self, y, rows, last, y_p, values, s, tau):
        if self.lora:
            rd = self.r * self.d_out
            A = values[:, :rd].view(-1, self.r, self.d_out)
            B = values[:, rd:].view(-1, self.d_out, self.r)
            delta = self.hparams["lora_scale"] * (B @ (A @ y_p.float()[..., None]))[..., 0]
        else:
            delta = values
        delta = delta * (s > tau)[:, None]
        out = y.clone()
        out[rows, last] = y_p + delta.to(y.dtype)
        return out

    # ------------------------------------------------------------------ editing
    def _init_value(self, y_p: torch.Tensor) -> torch.Tensor:
        if self.lora:
            A = 0.01 * self.draw(torch.randn, self.r * self.d_out, y_p.device)
            return torch.cat([A, torch.zeros(self.d_out * self.r, device=y_p.device)])
        if self.hparams["val_init"] == "warm":
            return y_p.float()
        return self.draw(torch.rand, self.d_out, y_p.device)  # cold: U[0, 1)

    def _same(self, j: int, label, ref_label) -> bool:
        if self.hparams["same_label"] == "reference":
            return self.book.ref_labels[j] == ref_label
        return self.book.labels[j] == label

    def edit(self, requests) -> None:
        for req in requests:
            batch = self.model.batch([self.model.encode_example(req.prompt, req.target)])
            x, y = self.model.site_io(batch)
            label, ref_label = edit_labels(batch)
            q0 = self.query(x, batch.prompt_mask)
            s, j = self.match(self.refine(q0))
            s, j = float(s[0]), int(j[0])
            if s > self.tau and self._same(j, label, ref_label):
                row = j
                self.cases["train_same_label"] += 1
            else:
                last, _ = prompt_positions(batch.prompt_mask)
                row = self.book.add(q0[0], self._init_value(y[0, last[0]]), label, ref_label)
                self.cases["insert_no_match" if s <= self.tau else "insert_conflict"] += 1
            # As in the reference, the value is trained where retrieval sends this prompt: after an
            # insertion the new key normally wins; if the refined query lands elsewhere, nothing trains.
            self.written(row)
            s_after, j_after = self.match(self.refine(q0))
            hit = bool(s_after[0] > self.tau and int(j_after[0]) == row)
            hp = self.hparams
            self.train_steps.add(train_entry(self, row, hit, batch, hp["lora_lr"] if self.lora else hp["lr"]))

    # ------------------------------------------------------------------ size (state: CodebookEditor)
    def num_params(self) -> int:
        return self.book.n * (self.book.keys.shape[1] + self.book.values.shape[1])
