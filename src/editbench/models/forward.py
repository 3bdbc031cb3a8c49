"""The forward passes an editor or the evaluator runs through the adapter (`ForwardPasses`, a
mixin of `EditableModel`, which supplies `model`, `device`, `site`, the eos / pad ids, the site
addressing of `sites.py`, `batch` and `bind`). Each binds its passes to a `Pass` (`passes.py`):

* `greedy()`: greedy decoding, with or without the KV cache, as HF `generate` does;
* the split of the network at the edit site: `prefix()` runs the frozen blocks below the edit
  site once (a `Prefix`), `suffix_hidden()` runs the edit-site block and everything above it, so
  value training never recomputes the frozen prefix; `target_loss()` is the training loss on a
  prefix;
* `run_block()`: one decoder block alone on given hidden states;
* `site_io()`: the input and unedited output of a site's module;
* `output_reaches_residual()`: whether a site's output is added to the residual stream as it is;
  `site_change_for()`: the change of a site's output that moves its block's output by a given one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from editbench.models.passes import Pass
from editbench.models.sites import EditSite
from editbench.models.text import TokenBatch


class _OnlyAt(nn.Module):
    """An MLP run on the positions of `mask` only (zeros elsewhere): see `suffix_hidden`."""

    def __init__(self, mlp: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.mlp, self.mask = mlp, mask

    def forward(self, x: torch.Tensor):
        y = self.mlp(x[self.mask][None])
        rest = ()
        if isinstance(y, tuple):  # MoE blocks also return their router logits
            y, rest = y[0], tuple(y[1:])
        out = torch.zeros_like(x)
        out[self.mask] = y[0].to(x.dtype)
        return (out, *rest) if rest else out


class _StopForward(Exception):
    pass


@dataclass
class Prefix:
    """What the frozen network below (and before) the edit point produced, computed once."""

    h: torch.Tensor  # hidden state entering block `layer`, positions start..T-1
    batch: TokenBatch  # the batch, cut to positions start..T-1 (attention_mask stays full length)
    past: tuple | None  # (keys, values) per layer for positions < start (None when start == 0)
    start: int
    layer: int  # the first block `suffix_hidden` runs
    #: the 4D attention mask the model built for these positions on the first `suffix_hidden` pass,
    #: handed back on the later ones (it depends only on the positions and the cache length, which
    #: every pass over this prefix shares; transformers returns a 4D mask as it is)
    mask: torch.Tensor | None = field(default=None, repr=False, compare=False)


class ForwardPasses:
    """The forward-pass methods of `EditableModel` (a mixin)."""

    Prefix = Prefix  # `EditableModel.Prefix`

    def _run_to_layer(self, layer: int, input_ids, attention_mask, position_ids, detach: bool = True,
                      **kw) -> torch.Tensor:
        captured = {}

        def grab(_module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _StopForward

        # block `layer`'s input; past the last block, the final norm's input
        where = self.blocks[layer] if layer < len(self.blocks) else self.model.model.norm
        handle = where.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["h"].detach() if detach else captured["h"]

    @torch.no_grad()
    def greedy(self, module, prompts: list[list[int]], n_new: list[int], unedited: bool = False,
               use_cache: bool = True, stop_ids: frozenset[int] | None = None,
               prompt_lens: list[int] | None = None) -> list[list[int]]:
        """Greedy decoding of n_new[i] tokens per prompt (left-padded batch). A row that emits an
        EOS id keeps emitting `eos_id`, as HF `generate` pads finished rows. With the KV cache the
        prompt goes through once (a "prefill" pass) and each new token is a "decode" pass; without
        it every step reruns the whole sequence as a "prefill" pass (prompt mask unchanged, new
        tokens not prompt), as the reference's `use_cache=False`. `unedited`: every pass is an
        "unedited" one (the unedited model's outputs, whatever wrappers are installed). One
        `Pass.state` lives through the whole generation (`module`: the editor's, which routes through
        this adapter's passes). `stop_ids`: the ids that end a row (default: the EOS ids); a row
        that emits one is then padded with `eos_id` too. `prompt_lens`: the rows' prompt lengths,
        where a row goes on after tokens already generated (`prompts[i][prompt_lens[i]:]`, none of
        them a stop): the first pass takes them as the generated positions they are, not as prompt;
        only the n_new[i] tokens after them are returned."""
        batch = self.batch([(p, len(p) if prompt_lens is None else n) for p, n in
                            zip(prompts, prompt_lens or [None] * len(prompts))])
        am, pos, pmask = batch.attention_mask, batch.position_ids, batch.prompt_mask
        eos = self.eos_id
        stops = torch.tensor(sorted(stop_ids) if stop_ids else self.eos_ids, device=batch.input_ids.device)
        steps, ids, past = max(n_new), batch.input_ids, None
        done = torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
        state: dict = {}
        new = []
        for step in range(steps):
            if use_cache and step > 0:
                kind, mask = "decode", torch.zeros_like(pmask[:, :1])
            else:
                kind, mask = "prefill", pmask
            with self.bind(Pass("unedited" if unedited else kind, mask, state)):
                out = module(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=past,
                             use_cache=use_cache, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            done |= torch.isin(nxt, stops)
            new.append(nxt)
            if bool(done.all()):  # every row has ended: the rest would be padding (added below)
                break
            am = torch.cat([am, torch.ones_like(am[:, :1])], dim=1)
            if use_cache:
                past, ids, pos = out.past_key_values, nxt[:, None], pos[:, -1:] + 1
            else:
                ids, pos = torch.cat([ids, nxt[:, None]], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
                pmask = torch.cat([pmask, torch.zeros_like(pmask[:, :1])], 1)
        gen = torch.stack(new, 1).tolist()
        return [(g + [eos] * (n - len(g)))[:n] for g, n in zip(gen, n_new)]

    def prefix(self, batch: TokenBatch, from_last_prompt: bool = False, layer: int | None = None,
               start: int = 0) -> Prefix:
        """Run the frozen (unedited) blocks below block `layer` (default: the edit site's) once.

        With `from_last_prompt` (or an explicit `start`), positions before the last prompt token
        (before `start`) are also run through the blocks *above* the site once and kept as a KV
        cache, so each training step recomputes only the positions from there on. Valid only for
        editors that change the hidden states at positions >= that point (codebook editors; a
        vector added at a subject token), not for weight edits.
        """
        if from_last_prompt:
            last = torch.where(batch.prompt_mask, torch.arange(batch.prompt_mask.shape[1], device=self.device), -1)
            start = int(last.max(dim=1).values.min())
        layer = self.site.layer if layer is None else layer
        pos = batch.position_ids
        if start == 0:
            with self.bind(Pass("unedited", batch.prompt_mask)):
                h = self._run_to_layer(layer, batch.input_ids, batch.attention_mask, pos, use_cache=False)
            return Prefix(h, batch, None, 0, layer)
        from transformers import DynamicCache

        cache = DynamicCache()
        # positions before the last prompt token: the unedited network, run once as a KV cache
        with self.bind(Pass("unedited", batch.prompt_mask[:, :start])):
            self.model.model(input_ids=batch.input_ids[:, :start], attention_mask=batch.attention_mask[:, :start],
                             position_ids=pos[:, :start], past_key_values=cache, use_cache=True)
        T = batch.input_ids.shape[1]
        with self.bind(Pass("unedited", batch.prompt_mask[:, start:])):
            h = self._run_to_layer(layer, batch.input_ids[:, start:], batch.attention_mask, pos[:, start:],
                                  past_key_values=cache, use_cache=True,
                                  cache_position=torch.arange(start, T, device=self.device))
        cache.crop(start)
        past = tuple((k.detach(), v.detach()) for k, v in cache.to_legacy_cache())
        cut = TokenBatch(batch.input_ids[:, start:], batch.attention_mask, batch.prompt_mask[:, start:],
                         batch.labels[:, start:])
        return Prefix(h, cut, past, start, layer)

    def suffix_hidden(self, pre: Prefix, p: Pass, needed: torch.Tensor | None = None) -> torch.Tensor:
        """Run block `pre.layer` and everything above it on a prefix, inside pass `p` (whose
        prompt mask covers the prefix's positions); final (normed) hidden states.

        `needed` (B x T bool over the prefix's positions): the caller reads only these positions,
        so the last block's MLP runs on them alone (every position still feeds the attention of
        every block; the other positions' outputs are left incomplete)."""
        inner = self.model.model
        full = inner.layers
        inner.layers = nn.ModuleList(list(full)[pre.layer:])
        last = inner.layers[-1]
        mlp = last.mlp
        if needed is not None:
            last.mlp = _OnlyAt(mlp, needed)
        T = pre.batch.attention_mask.shape[1]
        kw = {"use_cache": False}
        if pre.past is not None:
            from transformers import DynamicCache

            kw = {"past_key_values": DynamicCache(pre.past), "use_cache": True,  # a fresh cache per step
                  "cache_position": torch.arange(pre.start, T, device=self.device)}
        seen: list = []  # the mask each block receives, on the first pass over this prefix
        hooks = [] if pre.mask is not None else [
            b.register_forward_pre_hook(lambda _m, _a, k: seen.append(k.get("attention_mask")), with_kwargs=True)
            for b in inner.layers]
        try:
            with self.bind(p):
                out = inner(inputs_embeds=pre.h,
                            attention_mask=pre.batch.attention_mask if pre.mask is None else pre.mask,
                            position_ids=pre.batch.position_ids[:, -pre.h.shape[1]:], **kw)
        finally:
            for h in hooks:
                h.remove()
            inner.layers = full
            last.mlp = mlp
        if seen and isinstance(seen[0], torch.Tensor) and seen[0].dim() == 4 and all(m is seen[0] for m in seen):
            pre.mask = seen[0]  # one mask for every block (no sliding-window layers): reuse it
        return out.last_hidden_state

    def run_block(self, layer: int, h: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """Block `layer` alone on the hidden states `h` entering it (every position of `batch`),
        with the model's own mask and rotary embeddings; differentiable in the block's parameters."""
        inner = self.model.model
        full = inner.layers
        inner.layers = nn.ModuleList([full[layer]])  # the one block; its output is the final norm's input
        try:
            with self.bind(Pass("unedited", batch.prompt_mask)):
                return self._run_to_layer(1, None, batch.attention_mask, batch.position_ids, detach=False,
                                          inputs_embeds=h, use_cache=False)
        finally:
            inner.layers = full

    @torch.no_grad()
    def output_reaches_residual(self, site: EditSite) -> bool:
        """Whether the output of the module at `site` is added to the residual stream as it is: a
        change of it at one position changes block `site.layer`'s output there by that change and
        nothing else. True for `mlp.down_proj` in LLaMA / Qwen blocks (the MLP output is added to
        the residual); False where the block transforms it first (Gemma-2 / 3 normalise the MLP
        output, `post_feedforward_layernorm`, before adding it). Checked on the block itself, twice
        on the same random hidden states (a local generator: the global RNG is left as it was)."""
        module = self.module_at(site)
        g = torch.Generator().manual_seed(0)
        width = self.model.get_input_embeddings().embedding_dim
        dtype = next(self.blocks[site.layer].parameters()).dtype
        h = torch.randn(1, 4, width, generator=g).to(self.device, dtype)
        batch = self.batch([([self.pad_id] * 4, 4)])
        base = self.run_block(site.layer, h, batch)
        eps = None

        def add(_module, _args, y):
            nonlocal eps
            eps = torch.randn(y.shape[-1], generator=g).to(y.device, y.dtype)
            y = y.clone()
            y[:, 2] += eps
            return y

        handle = module.register_forward_hook(add)
        try:
            changed = self.run_block(site.layer, h, batch)
        finally:
            handle.remove()
        if eps is None or eps.shape[-1] != changed.shape[-1]:
            return False
        expect = torch.zeros_like(changed)
        expect[:, 2] = eps
        return float((changed - base - expect).float().norm()) <= 0.01 * float(eps.float().norm())

    def site_change_for(self, site: EditSite, batch: TokenBatch, pos: int, r: torch.Tensor,
                        max_iter: int = 100) -> torch.Tensor:
        """The change of the output of the module at `site`, at position `pos` of `batch` (one row),
        that moves block `site.layer`'s output there by `r`, with the current weights. Where the
        output reaches the residual as it is (`output_reaches_residual`) that change is `r` itself,
        returned as given. Otherwise it is the least-squares change, found through the block itself
        by L-BFGS from zero: a block that normalises the MLP output before adding it (Gemma-2 / 3)
        can move its output only along the directions the norm allows, so the result is the change
        whose effect is closest to `r`. The change at `pos` leaves every other position as it was
        (the module acts position by position after the block's attention)."""
        if self.output_reaches_residual(site):
            return r
        if batch.input_ids.shape[0] != 1:
            raise ValueError(f"site_change_for takes one row, got {batch.input_ids.shape[0]}")
        h = self.prefix(batch, layer=site.layer).h
        with torch.no_grad():
            target = self.run_block(site.layer, h, batch)[0, pos].float() + r.float()
        width = self.site_io(batch, site)[1].shape[-1]
        d = torch.zeros(width, dtype=torch.float32, device=self.device, requires_grad=True)

        def add(_module, _args, y):
            y = y.clone()
            y[:, pos] = y[:, pos] + d.to(y.dtype)
            return y

        opt = torch.optim.LBFGS([d], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                                tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = 0.5 * (self.run_block(site.layer, h, batch)[0, pos].float() - target).square().sum()
            loss.backward()
            return loss

        handle = self.module_at(site).register_forward_hook(add)
        try:
            with torch.enable_grad():
                opt.step(closure)
        finally:
            handle.remove()
        return d.detach().to(r.dtype)

    def target_loss(self, pre: Prefix, state: dict | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy over the target tokens, scoring only those positions, in
        a training pass (`state`: what the editor's wrapper reads during it, e.g. the value being
        trained)."""
        labels = pre.batch.labels
        nxt = pre.batch.predicts_label
        hidden = self.suffix_hidden(pre, Pass("train", pre.batch.prompt_mask, state if state is not None else {}))
        logits = self.model.lm_head(hidden[nxt])
        return nn.functional.cross_entropy(logits.float(), labels[:, 1:][nxt[:, :-1]])

    @torch.no_grad()
    def site_io(self, batch: TokenBatch, site: EditSite | None = None,
                h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input and unedited output of the module at `site` (default: the edit site) on every
        position of `batch` (one partial pass). `h`: the unedited hidden states entering block
        `site.layer` on every position of `batch` (e.g. cached): then only that block runs."""
        site = site or self.site
        captured = {}

        def grab(_module, args, output):
            captured["x"], captured["y"] = args[0].detach(), output.detach()
            raise _StopForward

        inner = self.model.model
        full = inner.layers
        handle = self.module_at(site).register_forward_hook(grab)
        try:
            with self.bind(Pass("unedited", batch.prompt_mask)):
                if h is None:
                    inner(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids, use_cache=False)
                else:
                    inner.layers = nn.ModuleList([full[site.layer]])
                    inner(inputs_embeds=h, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                          use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
            inner.layers = full
        return captured["x"], captured["y"]
