"""FT-L: fine-tune the edit-site weight (the MLP down_proj) on each edit's target tokens.

Adam on the site weight only, the frozen prefix computed once per edit, stop once the target loss
falls below `stop_loss`; an optional L-inf bound keeps the total weight change within
`norm_constraint` of the original weight (Zhu et al. 2020, as ROME's FT-L baseline).
"""
from __future__ import annotations

import torch

from editbench.editors.base import Editor, StepCount
from editbench.validate import NonNegativeFloat, PositiveFloat, PositiveInt


class FineTune(Editor):
    label = "FT-L"

    def __init__(self, model, lr: PositiveFloat, n_iter: PositiveInt, stop_loss: NonNegativeFloat,
                 norm_constraint: PositiveFloat | None):
        super().__init__(model, lr=lr, n_iter=n_iter, stop_loss=stop_loss, norm_constraint=norm_constraint)
        self.weight = model.site_module().weight
        self.original = self.weight.detach().clone()
        self.train_steps = StepCount()

    def edit(self, requests) -> None:
        batch = self.model.batch([self.model.encode_example(r.prompt, r.target) for r in requests])
        pre = self.model.prefix(batch)  # the whole suffix reruns: a weight edit changes every position
        self.weight.requires_grad_(True)
        opt = torch.optim.Adam([self.weight], lr=self.hparams["lr"])
        taken = 0
        try:
            for _ in range(self.hparams["n_iter"]):
                loss = self.model.target_loss(pre)
                if loss.item() < self.hparams["stop_loss"]:
                    break
                taken += 1
                opt.zero_grad()
                loss.backward()
                opt.step()
                c = self.hparams["norm_constraint"]
                if c:
                    with torch.no_grad():
                        self.weight.copy_(torch.clamp(self.weight, self.original - c, self.original + c))
        finally:
            self.weight.requires_grad_(False)
            self.train_steps.add(taken)

    def state_dict(self) -> dict:
        return {"weight": self.weight.detach().cpu().clone(),  # the weight itself: reload is bit-exact
                "steps_total": self.train_steps.total}

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            self.weight.copy_(sd["weight"].to(self.weight))
        self.train_steps.total = sd.get("steps_total", 0)  # absent from checkpoints written before it was counted

    def report(self) -> dict:
        return self.train_steps.report()

    def num_params(self) -> int:
        return self.weight.numel()
