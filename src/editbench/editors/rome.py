"""ROME (Meng et al. 2022; docs/editors.md#rome): a rank-one, covariance-weighted update of one MLP `down_proj`, per edit,
applied in place and kept across the stream (sequential ROME).

Per edit: the key k* is the down_proj input at the subject's last token, averaged over the context
templates; u = C⁻¹k* / ‖C⁻¹k*‖ with C = E[k kᵀ] of the unedited model's down_proj inputs over a
general-text corpus (`stats.py`); δ added to the block's MLP output (the down_proj output) at the
subject's last token is optimised (on the residual stream where the block adds the MLP output to it
as it is, as LLaMA and Qwen do; at the down_proj output itself where the block normalises it first,
as Gemma-2 / 3 do) so the target follows every template-wrapped prompt (NLL / |target|), with
kl_factor · KL(p_δ ‖ p_0) on "{subject} is a" and v_wd · ‖δ‖ / ‖v₀‖², Adam, early stop below 0.05,
‖δ‖ ≤ clamp · ‖v₀‖; then W += v_r uᵀ with v_r = δ / (k · u), k the down_proj input on the plain
prompt. The layer is per model: `conf/editor_model/rome_<model>.yaml`.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from editbench.editors._locate import (WeightDeltas, at_lookup, check_layers, edit_rows, nn_linear,
                                       optimise_delta, prompt_rows, sample_templates)
from editbench.editors.base import Editor, SetupContext
from editbench.errors import EditbenchError
from editbench.models import EditSite
from editbench.stats import load_corpus, second_moments
from editbench.validate import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


class ROME(Editor):
    label = "ROME"
    aligned = False

    def __init__(self, model, layer: NonNegativeInt | None, rewrite_module: str, v_num_grad_steps: PositiveInt,
                 v_lr: PositiveFloat, v_weight_decay: NonNegativeFloat, kl_factor: NonNegativeFloat,
                 clamp_norm_factor: PositiveFloat, kl_prompt: str, mom2_adjustment: bool, mom2_dataset: str,
                 mom2_n_samples: PositiveInt, mom2_max_length: PositiveInt, mom2_max_condition: PositiveFloat,
                 template_seeds: Annotated[list[str], Field(min_length=1)],
                 template_lengths: Annotated[list[PositiveInt], Field(min_length=1)],
                 templates_per_seed: PositiveInt, template_top_k: PositiveInt):
        super().__init__(model, layer=layer, rewrite_module=rewrite_module, v_num_grad_steps=v_num_grad_steps,
                         v_lr=v_lr, v_weight_decay=v_weight_decay, kl_factor=kl_factor,
                         clamp_norm_factor=clamp_norm_factor, kl_prompt=kl_prompt, mom2_adjustment=mom2_adjustment,
                         mom2_dataset=mom2_dataset, mom2_n_samples=mom2_n_samples, mom2_max_length=mom2_max_length,
                         mom2_max_condition=mom2_max_condition, template_seeds=list(template_seeds),
                         template_lengths=list(template_lengths), templates_per_seed=templates_per_seed,
                         template_top_k=template_top_k)
        (L,) = check_layers(model, [] if layer is None else [layer], "rome", "layer", layer)
        self.site = EditSite(L, rewrite_module)
        nn_linear(model, self.site)
        self.deltas = WeightDeltas(model, [self.site])
        # where δ enters: the residual stream where that equals the MLP output, else the site's output
        self.delta_at = None if model.output_reaches_residual(self.site) else self.site
        self.templates: list[str] = ["{}"]
        self.C_chol: torch.Tensor | None = None  # Cholesky factor of C (mom2_adjustment)
        self.stats_info: dict = {}
        self.last = {"steps": None, "loss": None}

    def touches(self) -> list[EditSite]:
        return [self.site]

    def setup(self, ctx: SetupContext) -> None:
        hp = self.hparams
        self.templates = sample_templates(self.model, hp["template_seeds"], hp["template_lengths"],
                                          hp["templates_per_seed"], ctx.seed, hp["template_top_k"])
        if hp["mom2_adjustment"]:
            corpus = load_corpus(hp["mom2_dataset"], hp["mom2_n_samples"])
            mom = second_moments(self.model, [self.site], corpus, ctx.cache_dir, hp["mom2_max_length"])
            C = mom.C[(self.site.layer, self.site.module)].double()
            ev = torch.linalg.eigvalsh(C)
            cond = float(ev[-1] / ev[0]) if ev[0] > 0 else float("inf")
            if not cond <= hp["mom2_max_condition"]:
                raise EditbenchError(f"the second moment C of layer {self.site.layer} {self.site.module} is singular or "
                                     f"ill-conditioned (condition number {cond:.3g} > editor.mom2_max_condition="
                                     f"{hp['mom2_max_condition']:g}) — raise editor.mom2_n_samples or use a larger "
                                     f"corpus (editor.mom2_dataset)")
            self.C_chol = torch.linalg.cholesky(C)
            self.stats_info = {**mom.info, "condition": cond}

    def edit(self, requests) -> None:
        for r in requests:
            self._edit_one(r)

    def _edit_one(self, r) -> None:
        hp, m, site = self.hparams, self.model, self.site
        L = site.layer
        # key: the down_proj input at the subject's last token, averaged over the context templates
        batch, look = prompt_rows(m, self.templates, r.prompt, r.subject)
        x, _ = m.site_io(batch, site)
        k_star = at_lookup(x, look).mean(0).double()
        u = torch.cholesky_solve(k_star[:, None], self.C_chol)[:, 0] if self.C_chol is not None else k_star
        u = (u / u.norm()).float()
        # the plain prompt's down_proj input / output at the subject's last token (v0 = MLP output)
        b0, l0 = prompt_rows(m, ["{}"], r.prompt, r.subject)
        x0, y0 = m.site_io(b0, site)
        k0, v0 = at_lookup(x0, l0)[0].float(), at_lookup(y0, l0)[0].float()
        rows = edit_rows(m, self.templates, r.prompt, r.subject, r.target, hp["kl_prompt"])
        res = optimise_delta(m, rows, L, float(v0.norm()), hp["v_lr"], hp["v_num_grad_steps"], hp["kl_factor"],
                             hp["v_weight_decay"], hp["clamp_norm_factor"], at=self.delta_at)
        v_r = res.delta / torch.dot(k0, u)  # (v* - o) / (k · u), with v* = v0 + δ and o = v0
        self.deltas.add(site, torch.outer(v_r, u))
        self.last = {"steps": res.steps, "loss": res.loss}

    def state_dict(self) -> dict:
        return {"deltas": self.deltas.state_dict(), "templates": list(self.templates)}

    def load_state_dict(self, sd: dict) -> None:
        self.deltas.load_state_dict(sd["deltas"])
        self.templates = list(sd["templates"])

    def report(self) -> dict:
        return {"layer": self.site.layer, "templates": self.templates, "mom2": self.stats_info,
                "last_edit": self.last}

    def num_params(self) -> int:
        return self.deltas.num_params()
