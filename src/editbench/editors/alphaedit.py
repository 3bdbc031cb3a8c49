"""AlphaEdit (Fang et al. 2025; docs/editors.md#alphaedit): MEMIT's multi-layer least-squares update, projected onto the null
space of the preserved keys' second moment, with earlier edits' keys in the normal equations.

Setup, per edited layer l: C0_l = E[k kᵀ] of the unedited model's down_proj inputs (`stats.py`),
its eigenvectors U_s with eigenvalue < `nullspace_threshold` (C0 is symmetric PSD: eigenvalues =
singular values) and the projector P_l = U_s U_sᵀ; C_p,l = 0.
Per edit: z* = z₀ + δ, δ added to the last edited block's output at the subject's last token
(optimised as in ROME, `_locate.optimise_delta`); then for each layer l in order, with the updates
of the lower layers already applied: k_l = the down_proj input at the subject's last token
(averaged within the "{}" group and within the sampled-template group, then across the two),
R = (z* − z_cur) / (#layers − i), D the change of layer l's down_proj output that moves its block's
output by R (R itself in LLaMA / Qwen blocks, which add that output to the residual as it is; found
through the block where it normalises the output first, as Gemma-3's does:
`EditableModel.site_change_for`), Δ_l = solve(P_l (k_l k_lᵀ + C_p,l) + λI, P_l k_l Dᵀ), W_l += Δ_lᵀ;
finally C_p,l += k_l k_lᵀ with k_l as the edited model gives it (the same k_l: it depends only on the
layers below l). The editor keeps P_l C_p,l, not C_p,l. The layers are per
model: `conf/editor_model/alphaedit_<model>.yaml`.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from editbench.editors._locate import (WeightDeltas, at_lookup, block_output, check_layers, edit_rows, nn_linear,
                                       optimise_delta, prompt_rows, sample_templates)
from editbench.editors.base import Editor, SetupContext
from editbench.models import EditSite
from editbench.stats import load_corpus, second_moments
from editbench.validate import NonNegativeFloat, PositiveFloat, PositiveInt


class AlphaEdit(Editor):
    label = "AlphaEdit"
    aligned = False

    def __init__(self, model, layers: list[int] | None, rewrite_module: str, v_num_grad_steps: PositiveInt,
                 v_lr: PositiveFloat, v_weight_decay: NonNegativeFloat, kl_factor: NonNegativeFloat,
                 clamp_norm_factor: PositiveFloat, kl_prompt: str, l2: NonNegativeFloat,
                 nullspace_threshold: PositiveFloat, mom2_dataset: str, mom2_n_samples: PositiveInt,
                 mom2_max_length: PositiveInt, template_seeds: Annotated[list[str], Field(min_length=1)],
                 template_lengths: Annotated[list[PositiveInt], Field(min_length=1)],
                 templates_per_seed: PositiveInt, template_top_k: PositiveInt):
        super().__init__(model, layers=layers, rewrite_module=rewrite_module, v_num_grad_steps=v_num_grad_steps,
                         v_lr=v_lr, v_weight_decay=v_weight_decay, kl_factor=kl_factor,
                         clamp_norm_factor=clamp_norm_factor, kl_prompt=kl_prompt, l2=l2,
                         nullspace_threshold=nullspace_threshold, mom2_dataset=mom2_dataset,
                         mom2_n_samples=mom2_n_samples, mom2_max_length=mom2_max_length,
                         template_seeds=list(template_seeds), template_lengths=list(template_lengths),
                         templates_per_seed=templates_per_seed, template_top_k=template_top_k)
        layers = check_layers(model, layers or [], "alphaedit")
        self.sites = [EditSite(layer, rewrite_module) for layer in layers]
        d_in = nn_linear(model, self.sites[0]).in_features
        for s in self.sites:
            nn_linear(model, s)
        self.deltas = WeightDeltas(model, self.sites)
        # per layer, once (as ROME's `delta_at`): whether down_proj's output reaches the residual as it is
        self.direct = [model.output_reaches_residual(s) for s in self.sites]
        self.templates: list[str] = ["{}"]
        self.P: list[torch.Tensor] = []  # null-space projector per layer (set up from the statistics)
        # P_l C_p,l (C_p,l = Σ k kᵀ of past edits), float64: each edit adds the rank-one (P_l k) kᵀ, so
        # the normal equations' matrix costs O(d²) per edit instead of a d³ product with P_l
        self.PC = [torch.zeros(d_in, d_in, dtype=torch.float64, device=model.device) for _ in self.sites]
        self.stats_info: dict = {}
        self.last = {"steps": None, "loss": None}

    def touches(self) -> list[EditSite]:
        return list(self.sites)

    def setup(self, ctx: SetupContext) -> None:
        hp = self.hparams
        self.templates = sample_templates(self.model, hp["template_seeds"], hp["template_lengths"],
                                          hp["templates_per_seed"], ctx.seed, hp["template_top_k"])
        corpus = load_corpus(hp["mom2_dataset"], hp["mom2_n_samples"])
        mom = second_moments(self.model, self.sites, corpus, ctx.cache_dir, hp["mom2_max_length"])
        self.P, null_dims = [], []
        for s in self.sites:
            ev, U = torch.linalg.eigh(mom.C[(s.layer, s.module)].double())
            Us = U[:, ev < hp["nullspace_threshold"]]
            self.P.append((Us @ Us.T).to(self.model.device))
            null_dims.append(int(Us.shape[1]))
        self.stats_info = {**mom.info, "null_space_dims": null_dims}

    def _keys(self, r, site: EditSite) -> torch.Tensor:
        """The down_proj input at the subject's last token: the mean of the "{}" group's key and the
        sampled-template group's mean key (MEMIT's two context-template groups)."""
        batch, look = prompt_rows(self.model, self.templates, r.prompt, r.subject)
        x, _ = self.model.site_io(batch, site)
        k = at_lookup(x, look).double()
        return (k[0] + k[1:].mean(0)) / 2 if k.shape[0] > 1 else k[0]

    def edit(self, requests) -> None:
        for r in requests:
            self._edit_one(r)

    def _edit_one(self, r) -> None:
        hp, m = self.hparams, self.model
        z_layer = self.sites[-1].layer
        b0, l0 = prompt_rows(m, ["{}"], r.prompt, r.subject)
        z0 = at_lookup(block_output(m, b0, z_layer), l0)[0].float()
        rows = edit_rows(m, self.templates, r.prompt, r.subject, r.target, hp["kl_prompt"])
        res = optimise_delta(m, rows, z_layer, float(z0.norm()), hp["v_lr"], hp["v_num_grad_steps"],
                             hp["kl_factor"], hp["v_weight_decay"], hp["clamp_norm_factor"])
        z_star = (z0 + res.delta).double()
        n = len(self.sites)
        for i, s in enumerate(self.sites):
            # layer l's key depends only on the layers below it, all updated by now: the key the reference
            # recomputes after the last layer's update to add to C_p is this one, so C_p takes it here
            k = self._keys(r, s)
            z_cur = at_lookup(block_output(m, b0, z_layer), l0)[0].double()
            R = (z_star - z_cur) / (n - i)
            D = R if self.direct[i] else m.site_change_for(s, b0, int(l0[0]), R)
            Pk = self.P[i] @ k
            self.PC[i] += torch.outer(Pk, k)  # P (C_p + k kᵀ): C_p now holds this edit's key
            A = self.PC[i].clone()
            A.diagonal().add_(hp["l2"])
            upd = torch.linalg.solve(A, torch.outer(Pk, D))  # d_in x d_out
            self.deltas.add(s, upd.T.float())
        self.last = {"steps": res.steps, "loss": res.loss}

    def state_dict(self) -> dict:
        return {"deltas": self.deltas.state_dict(), "PC": [c.cpu().clone() for c in self.PC],
                "templates": list(self.templates)}

    def load_state_dict(self, sd: dict) -> None:
        self.deltas.load_state_dict(sd["deltas"])
        if "PC" in sd:
            self.PC = [c.to(self.model.device, torch.float64, copy=True) for c in sd["PC"]]  # += above: own copies
        else:  # a checkpoint written before P C_p was kept holds C_p (float32)
            self.PC = [P @ c.to(self.model.device, torch.float64) for P, c in zip(self.P, sd["Cp"])]
        self.templates = list(sd["templates"])

    def report(self) -> dict:
        return {"layers": [s.layer for s in self.sites], "templates": self.templates, "mom2": self.stats_info,
                "last_edit": self.last}

    def num_params(self) -> int:
        return self.deltas.num_params()
