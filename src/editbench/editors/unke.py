"""UnKE (Deng et al. 2024; docs/editors.md#unke): a whole decoder block as the key -> value memory for free-text answers.

Per edit: z* = z₀ + δ, δ added to block L's output at the question's last token and optimised so the
model continues with the whole answer (mean NLL of the answer tokens + v_wd · ‖δ‖ / ‖z₀‖², Adam,
`v_num_grad_steps` iterations of which the last only evaluates, ‖δ‖ ≤ clamp · ‖z₀‖; no KL, no
early stop); then every parameter of block L is trained (AdamW, weight decay except on norm
weights) so that the block maps the question's inputs X_q to its outputs Y_q with z* at the last
question token, while keeping its outputs on `ex_data_num` preservation examples (sampled per edit
with the editor's own seeded generator): MSE(block(X_e), Y_e) + MSE(block(X_q), Ŷ_q).

Preservation data: the published runs sample Alpaca (`tatsu-lab/alpaca`); `preservation: aux`
(default, offline) uses the dataset's unrelated prompts (`SetupContext.aux`: ZsRE's NQ questions with
their answers, formatted like every prompt), `preservation: hub:<dataset>` reads an instruction set
with `instruction` / `input` / `output` through `datasets`. Which one ran is in every row. The
layer is per model: `conf/editor_model/unke_<model>.yaml`.
"""
from __future__ import annotations

import torch

from editbench.editors._locate import Rows, WeightDeltas, check_layers, optimise_delta
from editbench.editors.base import Editor, SetupContext
from editbench.errors import EditbenchError
from editbench.models import EditSite
from editbench.validate import NonNegativeFloat, PositiveFloat, PositiveInt


class UnKE(Editor):
    label = "UnKE"
    aligned = False

    def __init__(self, model, layer: int | None, v_num_grad_steps: PositiveInt, v_lr: PositiveFloat,
                 v_weight_decay: NonNegativeFloat, clamp_norm_factor: PositiveFloat, lr: PositiveFloat,
                 optim_num_step: PositiveInt, ex_data_num: PositiveInt, weight_decay: NonNegativeFloat,
                 preservation: str):
        super().__init__(model, layer=layer, v_num_grad_steps=v_num_grad_steps, v_lr=v_lr,
                         v_weight_decay=v_weight_decay, clamp_norm_factor=clamp_norm_factor, lr=lr,
                         optim_num_step=optim_num_step, ex_data_num=ex_data_num, weight_decay=weight_decay,
                         preservation=preservation)
        (self.layer,) = check_layers(model, [] if layer is None else [layer], "unke", "layer", layer)
        if self.layer + 1 >= len(model.blocks):
            raise EditbenchError(f"editor.layer={self.layer} is model {model.name}'s last block — UnKE needs a block "
                                 f"below it (fix conf/editor_model/unke_{model.name}.yaml)")
        self.block = model.blocks[self.layer]
        self.names = [n for n, _ in self.block.named_parameters()]
        self.deltas = WeightDeltas.of_block(model, self.layer)
        self.pool: list[tuple[str, str]] = []
        self.gen = torch.Generator(device="cpu")  # replaced by the run's in `setup`
        self.last = {"steps": None, "loss": None, "block_steps": None, "block_loss": None}

    def touches(self) -> list[EditSite]:
        return [EditSite(self.layer, path) for path in dict.fromkeys(n.rpartition(".")[0] for n in self.names)]

    def setup(self, ctx: SetupContext) -> None:
        self.gen = ctx.generator()
        spec = self.hparams["preservation"]
        if spec == "aux":
            self.pool = list(ctx.aux)
        elif spec.startswith("hub:"):
            try:
                import datasets

                rows = datasets.load_dataset(spec[4:], split="train")
                self.pool = [((r["instruction"] + ("\n" + r["input"] if r.get("input") else "")), r["output"])
                             for r in rows]
            except Exception as e:
                raise EditbenchError(f"editor.preservation={spec!r} could not be read through datasets "
                                     f"({type(e).__name__}) — use editor.preservation=aux offline") from None
        else:
            raise EditbenchError(f"editor.preservation={spec!r} is not 'aux' or 'hub:<dataset>' — use aux (offline)")
        if len(self.pool) < self.hparams["ex_data_num"]:
            raise EditbenchError(f"editor=unke needs {self.hparams['ex_data_num']} preservation examples but has "
                                 f"{len(self.pool)} — lower editor.ex_data_num or provide more (editor.preservation)")

    def edit(self, requests) -> None:
        for r in requests:
            self._edit_one(r)

    def _edit_one(self, r) -> None:
        hp, m, L = self.hparams, self.model, self.layer
        ids, n_prompt = m.encode_example(r.prompt, r.target)
        batch = m.batch([(ids, n_prompt)])
        T = batch.input_ids.shape[1]
        look = torch.tensor([T - len(ids) + n_prompt - 1], device=m.device)
        q_ids = ids[:n_prompt]
        q_batch = m.batch([(q_ids, len(q_ids))])
        X_q = m.prefix(q_batch, layer=L).h
        with torch.no_grad():
            Y_q = m.run_block(L, X_q, q_batch)
        z0 = Y_q[0, -1].float()
        res = optimise_delta(m, Rows(batch, look, 1), L, float(z0.norm()), hp["v_lr"], hp["v_num_grad_steps"],
                             0.0, hp["v_weight_decay"], hp["clamp_norm_factor"], stop_loss=-float("inf"))
        Y_hat = Y_q.clone()
        Y_hat[0, -1] = (z0 + res.delta).to(Y_hat.dtype)  # Ŷ_q[last] = Y_q[last] + (z* − cur_z)
        pick = torch.randperm(len(self.pool), generator=self.gen)[: hp["ex_data_num"]].tolist()
        ex = m.batch([m.encode_example(*self.pool[i]) for i in pick])
        X_e = m.prefix(ex, layer=L).h
        with torch.no_grad():
            Y_e = m.run_block(L, X_e, ex)
        real = ex.attention_mask.bool()
        before = {n: p.detach().clone() for n, p in self.block.named_parameters()}
        params = dict(self.block.named_parameters())
        decay = [p for n, p in params.items() if "norm" not in n]
        no_decay = [p for n, p in params.items() if "norm" in n]
        for p in params.values():
            p.requires_grad_(True)
        try:
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                                     {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"], betas=(0.9, 0.999),
                                    eps=1e-8)
            loss = None
            for _ in range(hp["optim_num_step"]):
                with torch.enable_grad():
                    out_e = m.run_block(L, X_e, ex)
                    out_q = m.run_block(L, X_q, q_batch)
                    loss = (torch.nn.functional.mse_loss(out_e[real], Y_e[real])
                            + torch.nn.functional.mse_loss(out_q, Y_hat))
                opt.zero_grad()
                loss.backward()
                opt.step()
        finally:
            for p in params.values():
                p.requires_grad_(False)
        with torch.no_grad():  # keep W = W₀ + D exactly (the state holds D); norms / biases likewise
            for n, p in params.items():
                update = p.detach() - before[n]
                p.copy_(before[n])
                self.deltas.add_key(f"{self.layer}.{n}", update)
        self.last = {"steps": res.steps, "loss": res.loss, "block_steps": hp["optim_num_step"],
                     "block_loss": None if loss is None else loss.item()}

    def state_dict(self) -> dict:
        return {"deltas": self.deltas.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.deltas.load_state_dict(sd["deltas"])
        self.gen.set_state(sd["gen"])

    def report(self) -> dict:
        return {"layer": self.layer, "preservation": self.hparams["preservation"], "preservation_pool": len(self.pool),
                "last_edit": self.last}

    def num_params(self) -> int:
        return self.deltas.num_params()
