"""The side-memory mechanism shared by WISE and REPAIR (docs/editors.md#side-memory-wise-repair): a side copy W' of
the edit-site weight, trained on the edits under a random gradient mask per knowledge shard, and an
activation router that sends a whole sequence through a side memory only when that memory "fires"
on it. Editors never import each other; both build on `SideMemoryEditor`.

Activation score of a weight V on a sequence: mean over its tokens of ||act(V x_t) - act(W x_t)||
(act = the model's hidden activation, W = the unedited weight; max instead of mean past 100
tokens). Per edit: 11 rows (the edit under the no-context template and 10 context templates the
unedited model generated once) plus one unrelated row; loss = target CE of the edit rows + the
three-margin activation loss [alpha, beta, gamma] = `act_margin` (+ whatever `extra_loss` a
subclass adds); SGD with weight decay, the gradient masked by the shard's Bernoulli(`mask_ratio`)
mask, W' clamped into [W - c, W + c]; the published early stop. Every `save_freq` edits W' is saved
as a memory and reset to W, with a new mask (a subclass may act on the finished shard first:
`end_shard`); every `merge_freq` edits the last merge_freq / save_freq saved memories are
TIES-merged into one (WISE-Retrieve, the only mode the reference runs use), with equal weights or
the subclass's `merge_coefficients`.

Routing (retrieve): the current W' fires when its score reaches act_ratio x the smallest in-scope
score its shard's edits reached in training; a saved memory is taken instead when its score is
higher still and above its own act_ratio x minimum. One decision per sequence, taken on the
prompt's tokens in the pass that first sees the prompt (a generation's prefill, or a
teacher-forced pass) and kept in `Pass.state` for that generation's cached decode steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from editbench.editors._common import SiteWrapper, site_batches
from editbench.editors.base import Editor, Routing, SetupContext
from editbench.errors import EditbenchError
from editbench.models import EditableModel, Pass, TokenBatch
from editbench.validate import NonNegativeFloat

ActMargins = Annotated[list[NonNegativeFloat], Field(min_length=3, max_length=3)]  # [alpha, beta, gamma]
ROUTE = "side_memory_route"  # Pass.state: per-row memory index chosen at prefill (-1 = the unedited weight)


def ties_merge(base: torch.Tensor, weights: list[torch.Tensor], density: float,
               coefficients: list[float] | None = None) -> torch.Tensor:
    """TIES merge of fine-tuned copies of `base` (Yadav et al. 2023; the WISE code's `merge/gta.py`): task vectors
    d_i = W_i - base, each pruned to its top-`density` fraction by magnitude (peft's `prune`), an
    elected sign per entry (the sign of sum_i w_i d_i, >= 0 counts as +), and the weighted mean
    sum(w d m) / sum(w m) of the entries that agree with it (zeros dropped; an empty divisor is 1).

    Equal coefficients (the reference's weights/k, and the default) give the plain mean of the
    agreeing entries, which is peft's `ties` with unit weights; that is used then. peft weights the
    task vectors but neither the elected sign nor the divisor, so unequal coefficients (REPAIR's
    loss-weighted merge) use this function's own three lines, tested against a hand-computed case."""
    from peft.utils.merge_utils import prune, ties

    deltas = [w.float() - base.float() for w in weights]
    if coefficients is None or len(set(coefficients)) == 1:
        merged = ties(deltas, torch.ones(len(deltas)), density)
    else:
        d = torch.stack([prune(t, density, method="magnitude") for t in deltas])
        c = torch.tensor(coefficients, dtype=d.dtype, device=d.device).view(-1, *[1] * base.dim())
        sign = torch.where((c * d).sum(0) >= 0, 1.0, -1.0)
        keep = (torch.sign(d) == sign).to(d.dtype)
        den = (c * keep).sum(0)
        merged = (c * d * keep).sum(0) / torch.where(den == 0, torch.ones_like(den), den)
    return (base.float() + merged).to(base.dtype)


@dataclass
class Trained:
    """What training one edit into W' left for a subclass (REPAIR's distillation teacher): the
    final answer-position logits of its edit rows, flattened row by row with `counts[r]`
    positions for row r."""

    logits: torch.Tensor
    counts: list[int]


class SideMemoryEditor(Editor):
    """WISE-Retrieve's mechanism; `hparams` must hold lr, n_iter, mask_ratio, act_margin, act_ratio,
    norm_constraint, weight_decay, save_freq, merge_freq, density, template_seeds, template_lengths."""
    state_growth = "per_edit"

    def __init__(self, model, **hparams):
        super().__init__(model, **hparams)
        self.check_config(self.hparams)
        site = model.site_module()
        if not isinstance(site, nn.Linear):
            raise EditbenchError(f"editor={type(self).__name__.lower()} needs a linear "
                                 f"layer at the edit site, found {type(site).__name__} — point "
                                 f"model.edit_site.module at an MLP down_proj")
        self.W = site.weight.detach()
        self.act = model.mlp_activation()  # the model's own MLP activation
        self.side = self.W.clone()  # W': the current shard's side memory
        self.mask: torch.Tensor | None = None  # the current shard's gradient mask
        self.min_a = math.inf  # smallest in-scope training score among the current shard's edits
        self.shard_losses: list[float] = []  # final training loss of each of the current shard's edits
        self.memories: list[dict] = []  # {"weight", "min_a", "loss", "merged"}: saved shards, merged memories
        self.edit_count = 0
        self.templates: list[str] = ["{}"]
        self.aux: list[tuple[str, str]] = []
        self.aux_used = 0  # unrelated rows drawn so far (cycled through `aux`)
        # the last `edit()` call: SGD steps (forward + backward passes) over the edits it trained, their number, the
        # last one's final loss (bookkeeping for `report()`; a REPAIR call may retrain re-queued edits too)
        self.last: dict = {"steps": 0, "trained": 0, "loss": None}
        self.gen = torch.Generator(device="cpu")  # replaced by the run's in `setup`
        model.replace_site(SiteWrapper(site, self._intervene, model.passes))

    @classmethod
    def check_config(cls, hp: dict) -> None:
        if hp["merge_freq"] % hp["save_freq"]:
            raise EditbenchError(f"editor.merge_freq={hp['merge_freq']} is not a multiple of editor.save_freq="
                                 f"{hp['save_freq']} — set merge_freq to k x save_freq")
        if len(hp["template_seeds"]) == 0 or len(hp["template_lengths"]) == 0:
            raise EditbenchError("editor.template_seeds and editor.template_lengths need at least one entry each — "
                                 "restore them from the editor's YAML")

    # ------------------------------------------------------------------ setup: context templates
    def setup(self, ctx: SetupContext) -> None:
        """Context templates from the unedited model (once; deterministic for a seed): each seed
        word continued for each length with the model's own generation settings."""
        self.gen = ctx.generator()
        self.aux = list(ctx.aux)
        if not self.aux:
            raise EditbenchError(f"editor={type(self).__name__.lower()} trains on "
                                 f"unrelated prompts, but the dataset provides none — use a dataset with locality "
                                 f"prompts (data.aux)")
        m = self.model
        texts = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(ctx.seed)
            for n in self.hparams["template_lengths"]:
                for seed_text in self.hparams["template_seeds"]:
                    ids = torch.tensor([m.encode_prompt(seed_text)], device=m.device)
                    with m.bind(Pass("unedited", torch.ones_like(ids, dtype=torch.bool))):
                        out = m.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                               num_beams=1, num_return_sequences=1, pad_token_id=m.pad_id)
                    texts.append(m.tok.decode(out[0], skip_special_tokens=True).replace("{", " ").replace("}", " "))
        self.templates = ["{}"] + [t + " {}" for t in texts]

    # ------------------------------------------------------------------ scores and routing
    def _intervene(self, x: torch.Tensor, y0: torch.Tensor, p: Pass) -> torch.Tensor:
        """The site's output in an edited pass: each sequence through the memory its prefill chose."""
        if p.kind == "train":  # side memories train above the site from cached site inputs
            raise RuntimeError("a side-memory training pass reached the edit site")
        if p.kind == "prefill" and ROUTE not in p.state:
            p.state[ROUTE] = self.route(x, y0, p.prompt_mask)
        elif ROUTE not in p.state:
            raise RuntimeError("a decode step reached the side memory with no routing decision from its prefill pass")
        return self.apply_route(x, y0, p.state[ROUTE])

    def delta(self, y: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        """||act(y_t) - act(y0_t)|| per position (B x T)."""
        return (self.act(y.float()) - self.act(y0.float())).norm(dim=-1)

    @staticmethod
    def _score(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sequence score from per-position deltas over `mask` positions: the mean, or the max past
        100 positions (the reference's rule for long inputs)."""
        n = mask.sum(1)
        mean = (d * mask).sum(1) / n.clamp(min=1)
        mx = torch.where(mask, d, torch.zeros_like(d)).max(dim=1).values
        return torch.where(n > 100, mx, mean)

    def _weights(self) -> list[tuple[torch.Tensor, float]]:
        """Candidate memories in routing order: the current W' first, then the saved ones."""
        return [(self.side, self.min_a)] + [(mem["weight"], mem["min_a"]) for mem in self.memories]

    @torch.no_grad()
    def route(self, x: torch.Tensor, y0: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Per row: -1 (the unedited weight) or the index into `_weights()`."""
        ratio = self.hparams["act_ratio"]
        route = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        best = None
        for i, (w, min_a) in enumerate(self._weights()):
            s = self._score(self.delta(x @ w.t().to(x.dtype), y0), prompt_mask)
            if i == 0:
                route = torch.where(s >= min_a * ratio, 0, route)
                best = s
            else:
                take = (s > best) & (s > min_a * ratio)
                route = torch.where(take, i, route)
                best = torch.where(take, s, best)
        return route

    def routing(self, prompts, states=None) -> Routing:
        """The prefill pass's routing decision per prompt: -1 (the unedited weight) or a memory
        (`_weights()` index). Memories are shared by many edits and renumbered as shards are
        saved and merged, so no edit has an entry of its own (`edit_entries` stays None)."""
        entry = [self.route(x, y0, mask).cpu() for x, y0, mask in site_batches(self.model, prompts, states=states)]
        return Routing(torch.cat([torch.zeros(0, dtype=torch.long)] + entry), None)

    def apply_route(self, x: torch.Tensor, y0: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        y = y0.clone()
        weights = self._weights()
        for i in route.unique().tolist():
            if i >= 0:
                rows = route == i
                y[rows] = x[rows] @ weights[i][0].t().to(x.dtype)
        return y

    # ------------------------------------------------------------------ editing
    def _rows(self, request) -> TokenBatch:
        """The edit under every context template, then one unrelated row (activation only)."""
        prompt, target = request.prompt, request.target
        rows = [self.model.encode_example(t.format(prompt), target) for t in self.templates]
        loc_prompt, loc_answer = self.aux[self.aux_used % len(self.aux)]
        self.aux_used += 1
        loc_ids, _ = self.model.encode_example(loc_prompt, loc_answer)
        rows.append((loc_ids, len(loc_ids) - 1))  # scored for its activation only: no target
        return self.model.batch(rows)

    def extra_loss(self, logits: torch.Tensor, counts: list[int]) -> torch.Tensor | None:
        """A subclass's additional training term, from the answer-position logits of the edit rows
        (flattened row by row, `counts[r]` positions for row r). None by default."""
        return None

    def train_edit(self, request) -> Trained:
        """Train one edit into W' (docs/editors.md#wise, step 3). W' changes only the site's output, and
        the block's residual stream adds it: the site's input x, its unedited output y0 and the
        state after the site block are computed once per edit, and each step runs only the blocks
        above the site (on the edit rows: the unrelated row enters the loss through its
        activation score at the site alone)."""
        hp = self.hparams
        batch = self._rows(request)
        n_edit_rows = len(self.templates)
        x, y0 = self.model.site_io(batch)
        edit_rows = TokenBatch(*(t[:n_edit_rows] for t in (batch.input_ids, batch.attention_mask,
                                                             batch.prompt_mask, batch.labels)))
        above = self.model.site.layer + 1
        pre = self.model.prefix(edit_rows, layer=above)
        side = self.side.clone().requires_grad_(True)
        opt = torch.optim.SGD([side], lr=hp["lr"], weight_decay=hp["weight_decay"])
        alpha, beta, gamma = hp["act_margin"]
        c = hp["norm_constraint"]
        real = batch.attention_mask.bool()
        labels = edit_rows.labels
        nxt = edit_rows.predicts_label
        counts = nxt.sum(1).tolist()
        losses: list[float] = []
        delta_in = logits = None
        for _ in range(hp["n_iter"]):
            if len(losses) >= 2 and abs(losses[-1] - losses[-2]) <= 1e-4 and losses[-1] <= 0.02:
                break
            y = x @ side.t().to(x.dtype)
            h = pre.h + (y - y0)[:n_edit_rows]  # the state after the site block, with W' in place of W
            hidden = self.model.suffix_hidden(EditableModel.Prefix(h, pre.batch, None, 0, above),
                                              Pass("train", edit_rows.prompt_mask), needed=nxt)
            logits = self.model.model.lm_head(hidden[nxt]).float()
            ce = nn.functional.cross_entropy(logits, labels[:, 1:][nxt[:, :-1]], reduction="none")
            per_row = torch.zeros(n_edit_rows, device=ce.device).index_add(0, nxt.nonzero()[:, 0], ce)
            l_ft = (per_row / (nxt.sum(1) + 1)).mean()  # the reference's denominator: one masked slot more
            scores = self._score(self.delta(y, y0), real)
            delta_in, delta_out = scores[:n_edit_rows], scores[n_edit_rows:]
            l_act = (pos_mean(delta_out - delta_in + gamma) + pos_mean(delta_out - alpha)
                     + pos_mean(beta - delta_in))
            loss = l_ft + l_act
            extra = self.extra_loss(logits, counts)
            if extra is not None:
                loss = loss + extra
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            side.grad *= self.mask
            opt.step()
            with torch.no_grad():
                side.copy_(torch.maximum(torch.minimum(side, self.W + c), self.W - c))
        self.last["steps"] += len(losses)  # every loss computed went through a backward and an SGD step
        self.last["trained"] += 1
        self.last["loss"] = losses[-1]
        self.side = side.detach()
        score = float(delta_in.detach().mean())
        self.min_a = min(self.min_a, score)
        self.shard_losses.append(losses[-1])
        return Trained(logits.detach(), counts)

    def edit(self, requests) -> None:
        (request,) = requests
        hp = self.hparams
        self.last = {"steps": 0, "trained": 0, "loss": None}
        if self.edit_count % hp["save_freq"] == 0:  # a new knowledge shard: a fresh gradient mask
            self.start_shard()
        self.add_edit(request)
        self.edit_count += 1
        if self.edit_count % hp["save_freq"] == 0:
            self.end_shard()
            self.save_shard()
        if self.edit_count % hp["merge_freq"] == 0:
            self.merge()

    def add_edit(self, request) -> None:
        """Train one edit of the stream into the open shard (a subclass may record it first)."""
        self.train_edit(request)

    def start_shard(self) -> None:
        self.mask = torch.rand(self.W.shape, generator=self.gen).lt(self.hparams["mask_ratio"]).to(self.W.device)

    def end_shard(self) -> None:
        """Called when a shard's last edit is trained, before it is saved. Nothing by default."""

    def save_shard(self) -> None:
        """Save W' (and its tracker) as a memory; reset W' to W."""
        loss = sum(self.shard_losses) / max(len(self.shard_losses), 1)
        self.memories.append({"weight": self.side.clone(), "min_a": self.min_a, "loss": loss, "merged": False})
        self.side, self.min_a, self.shard_losses = self.W.clone(), math.inf, []

    def merge_coefficients(self, group: list[dict]) -> list[float] | None:
        """TIES weights of the memories being merged; None: equal (the reference WISE's weights/k)."""
        return None

    def merge(self) -> None:
        k = self.hparams["merge_freq"] // self.hparams["save_freq"]
        group, self.memories = self.memories[-k:], self.memories[:-k]
        coefficients = self.merge_coefficients(group)
        weight = ties_merge(self.W, [g["weight"] for g in group], self.hparams["density"], coefficients)
        losses = [g["loss"] for g in group if math.isfinite(g["loss"])]
        self.memories.append({"weight": weight, "min_a": min(g["min_a"] for g in group),
                              "loss": sum(losses) / len(losses) if losses else math.inf, "merged": True})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"side": self.side.cpu().clone(), "mask": None if self.mask is None else self.mask.cpu().clone(),
                "min_a": self.min_a, "shard_losses": list(self.shard_losses), "edit_count": self.edit_count,
                "aux_used": self.aux_used, "templates": list(self.templates),
                "memories": [{**m, "weight": m["weight"].cpu().clone()} for m in self.memories],
                "generator": self.gen.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        dev = self.W.device
        self.side = sd["side"].to(dev)
        self.mask = None if sd["mask"] is None else sd["mask"].to(dev)
        self.min_a, self.edit_count, self.templates = sd["min_a"], sd["edit_count"], list(sd["templates"])
        self.shard_losses, self.aux_used = list(sd["shard_losses"]), sd["aux_used"]
        self.memories = [{**m, "weight": m["weight"].to(dev)} for m in sd["memories"]]
        self.gen.set_state(sd["generator"])

    def num_params(self) -> int:
        return self.W.numel() * (1 + len(self.memories))

    def report(self) -> dict:
        return {"templates": self.templates, "memories": len(self.memories),
                "merged_memories": sum(m["merged"] for m in self.memories), "last_edit": dict(self.last)}


def pos_mean(v: torch.Tensor) -> torch.Tensor:
    """Mean of the positive entries (0 when there are none): the reference's margin-loss reduction."""
    pos = v > 0
    return (v * pos).sum() / pos.sum().clamp(min=1)
