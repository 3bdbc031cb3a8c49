"""UltraEdit (Gu et al. 2025; docs/editors.md#ultraedit): one forward + backward per edit, a closed-form ridge update of every
edited linear module from its input keys and output gradients, standardised by lifelong running
statistics.

Per edit (prompt + " " + target, the target-only next-token CE, −100 on every prompt and pad
position): for each edited module m, K_m = its inputs and G_m = ∂loss/∂(its output) at the cached
positions (`token: mask` → every real token; `token: ans` → the target tokens). Each module then
updates the running normaliser of its weight shape with the rows [K_m, G_m] (all same-shape
modules share one normaliser; each updates it once per edit, in module order, before any update
is computed). With ẑ = ([K, G] − μ) / (σ + eps) split into K̂, Ĝ: V_i = −lr ‖k̂_i‖² ĝ_i (in chunks of
`editor_batch_size` rows) and ΔW_m = (K_mᵀK_m + I)⁻¹ K_mᵀ V with the raw keys; W_m += ΔW_mᵀ.
The modules are per model: `conf/editor_model/ultraedit_<model>.yaml`.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from editbench.editors._locate import WeightDeltas, check_layers, nn_linear
from editbench.editors.base import Editor
from editbench.errors import EditbenchError
from editbench.models import EditSite
from editbench.validate import PositiveFloat, PositiveInt

EPS = torch.finfo(torch.float32).eps  # the reference normaliser's eps (its statistics are float32)


class RunningMoments:
    """Running mean and second central moment over rows (the batch-merge update of docs/editors.md#ultraedit:
    n' = n + b, δ = mean_b − μ, μ += bδ/n', M2 += b·var_b + n·b·δ²/n', σ = sqrt(M2 / (n' − 1)),
    with var_b the unbiased batch variance, 0 for a single row). Float64."""

    def __init__(self, dim: int, device):
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(dim, dtype=torch.float64, device=device)

    def update(self, rows: torch.Tensor) -> None:
        x = rows.double()
        b = x.shape[0]
        n1 = self.n + b
        d = x.mean(0) - self.mean
        var = x.var(0) if b > 1 else torch.zeros_like(self.mean)
        self.mean += b * d / n1
        self.m2 += b * var + self.n * b * d.square() / n1
        self.n = n1

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / max(self.n - 1, 1)).sqrt()

    def normalise(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows.double() - self.mean) / (self.std + EPS)

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean.cpu().clone(), "m2": self.m2.cpu().clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.n = int(sd["n"])
        self.mean, self.m2 = sd["mean"].to(self.mean, copy=True), sd["m2"].to(self.m2, copy=True)  # updated in place


class UltraEdit(Editor):
    label = "UltraEdit"
    aligned = False

    def __init__(self, model, edit_modules: dict[str, list[int]] | None, lr: PositiveFloat,
                 token: Literal["mask", "ans"], editor_batch_size: PositiveInt):
        super().__init__(model, edit_modules=edit_modules, lr=lr, token=token, editor_batch_size=editor_batch_size)
        if not edit_modules:
            check_layers(model, [], "ultraedit", "edit_modules")
        self.sites = [EditSite(layer, path) for path, layers in edit_modules.items()
                      for layer in check_layers(model, layers, "ultraedit", "edit_modules")]
        self.shapes = {}
        for s in self.sites:
            lin = nn_linear(model, s)
            self.shapes[s.layer, s.module] = (lin.in_features, lin.out_features)
        self.norms = {shape: RunningMoments(sum(shape), model.device) for shape in dict.fromkeys(self.shapes.values())}
        self.deltas = WeightDeltas(model, self.sites)

    def touches(self) -> list[EditSite]:
        return sorted(self.sites, key=lambda s: (s.layer, s.module))

    def edit(self, requests) -> None:
        for r in requests:
            self._edit_one(r)

    def _keys_and_grads(self, r) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(K_m, G_m) per edited module, in config order, from one forward + backward."""
        m = self.model
        batch = m.batch([m.encode_example(r.prompt, r.target)])
        lowest = min(s.layer for s in self.sites)
        pre = m.prefix(batch, layer=lowest)  # the blocks below the lowest edited module run once
        pre = dataclasses.replace(pre, h=pre.h.detach().requires_grad_(True))  # so every output joins the graph
        rows = batch.labels != -100 if self.hparams["token"] == "ans" else batch.attention_mask.bool()
        caught: dict = {}

        def grab(key):
            def hook(_module, args, out):
                out.retain_grad()  # its .grad: ∂loss/∂(module output), through everything above
                caught[key] = (args[0].detach(), out)
            return hook

        handles = [m.module_at(s).register_forward_hook(grab((s.layer, s.module))) for s in self.sites]
        try:
            with torch.enable_grad():
                m.target_loss(pre).backward()
        finally:
            for h in handles:
                h.remove()
        out = []
        for s in self.sites:
            x, y = caught[(s.layer, s.module)]
            if y.grad is None:
                raise EditbenchError(f"no gradient reached {s.layer}.{s.module} — edit modules below the last block's "
                                     f"output")
            out.append((x[rows].float(), y.grad[rows].float()))
        return out

    def _edit_one(self, r) -> None:
        hp = self.hparams
        kg = self._keys_and_grads(r)
        for s, (K, G) in zip(self.sites, kg):  # every module updates its shape's normaliser first
            self.norms[self.shapes[s.layer, s.module]].update(torch.cat([K, G], -1))
        for s, (K, G) in zip(self.sites, kg):
            d_in, d_out = self.shapes[s.layer, s.module]
            norm = self.norms[(d_in, d_out)]
            V = []
            for a in range(0, K.shape[0], hp["editor_batch_size"]):
                z = norm.normalise(torch.cat([K[a:a + hp["editor_batch_size"]], G[a:a + hp["editor_batch_size"]]], -1))
                k_hat, g_hat = z[:, :d_in], z[:, d_in:]
                V.append(-hp["lr"] * k_hat.square().sum(-1, keepdim=True) * g_hat)
            V = torch.cat(V)
            Kd = K.double()
            mat = Kd.T @ Kd + torch.eye(d_in, dtype=torch.float64, device=K.device)
            shift = torch.linalg.solve(mat, Kd.T @ V)  # d_in x d_out
            self.deltas.add(s, shift.T.float())

    def state_dict(self) -> dict:
        return {"deltas": self.deltas.state_dict(),
                "norms": {f"{a}x{b}": n.state_dict() for (a, b), n in self.norms.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.deltas.load_state_dict(sd["deltas"])
        for (a, b), n in self.norms.items():
            n.load_state_dict(sd["norms"][f"{a}x{b}"])

    def report(self) -> dict:
        return {"modules": [f"{s.layer}.{s.module}" for s in self.sites],
                "normaliser_rows": {f"{a}x{b}": n.n for (a, b), n in self.norms.items()}}

    def num_params(self) -> int:
        return self.deltas.num_params()
