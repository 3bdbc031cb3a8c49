"""Helpers shared by the locate-then-edit editors (ROME, AlphaEdit): exact weight deltas, context
templates sampled from the unedited model, subject-token lookup, and the optimisation of a vector
added to the residual stream at the subject's last token (docs/editors.md#the-delta-optimisation).
Editors never import each other."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from editbench.errors import EditbenchError
from editbench.models import EditableModel, EditSite, Pass, PromptFormat


class WeightDeltas:
    """The in-place changes of the parameters an editor rewrites, kept as W = W0 + D with D the
    accumulated delta: `state_dict` holds D only (never a copy of an unedited weight) and a reload
    sets W0 + D, bit-identical to the weight the uninterrupted editor computed. Keys are
    `<layer>.<path in the block>` (the weight of each site's module, or any named parameter)."""

    def __init__(self, model: EditableModel, sites: Sequence[EditSite] = (), params: dict | None = None):
        self.params = {_key(s): model.module_at(s).weight for s in sites}
        self.params.update(params or {})
        self.base = {k: p.detach().clone() for k, p in self.params.items()}
        self.delta: dict[str, torch.Tensor] = {}

    @classmethod
    def of_block(cls, model: EditableModel, layer: int) -> "WeightDeltas":
        """Every parameter of decoder block `layer` (weights, norms, biases)."""
        return cls(model, params={f"{layer}.{n}": p for n, p in model.blocks[layer].named_parameters()})

    def add(self, site: EditSite, update: torch.Tensor) -> None:
        """W += update for the weight of the module at `site`."""
        self.add_key(_key(site), update)

    def add_key(self, k: str, update: torch.Tensor) -> None:
        d = self.delta.get(k)
        self.delta[k] = update.to(self.base[k].dtype) if d is None else d + update.to(d.dtype)
        self._apply(k)

    def _apply(self, k: str) -> None:
        with torch.no_grad():
            self.params[k].copy_(self.base[k] + self.delta[k])

    def state_dict(self) -> dict:
        return {k: d.detach().cpu().clone() for k, d in self.delta.items()}

    def load_state_dict(self, sd: dict) -> None:
        unknown = set(sd) - set(self.params)
        if unknown:
            raise EditbenchError(f"checkpoint holds weight deltas for {sorted(unknown)}, which this editor's config "
                                 f"does not edit — resume with the layers the run started with")
        self.delta = {}
        for k, d in sd.items():
            self.delta[k] = d.to(self.base[k], copy=True)
            self._apply(k)

    def num_params(self) -> int:
        return sum(d.numel() for d in self.delta.values())


def _key(site: EditSite) -> str:
    return f"{site.layer}.{site.module}.weight"


def check_layers(model: EditableModel, layers: Sequence[int], editor: str, what: str = "layers",
                 shown=None) -> list[int]:
    """`layers` as ints, or a one-line error naming the pair file to fix (`shown`: the value as
    configured, when it is not the list itself)."""
    n = len(model.blocks)
    if not layers:
        raise EditbenchError(f"editor={editor} has no {what} for model {model.name} — add "
                             f"conf/editor_model/{editor}_{model.name}.yaml (see {editor}_llama3_8b.yaml)")
    bad = [int(x) for x in layers if not 0 <= int(x) < n]
    if bad:
        value = list(layers) if shown is None else shown
        raise EditbenchError(f"editor.{what}={value} names layer(s) {bad} outside model {model.name} (0..{n - 1}) — "
                             f"fix conf/editor_model/{editor}_{model.name}.yaml")
    return [int(x) for x in layers]


# ---------------------------------------------------------------------------------------- templates
@torch.no_grad()
def sample_templates(model: EditableModel, seeds: Sequence[str], lengths: Sequence[int], per_seed: int,
                     seed: int, top_k: int) -> list[str]:
    """`"{}"` and, for each total length (prompt + new tokens) and each seed word, `per_seed`
    texts sampled top-k from the unedited model, braces removed, each + ". {}" (ROME's context
    templates). Deterministic for `seed`; the global RNG is left as it was."""
    out = ["{}"]
    m = model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for length in lengths:
            for word in seeds:
                ids = torch.tensor([m.encode_prompt(word)] * per_seed, device=m.device)
                new = max(int(length) - ids.shape[1], 1)
                with m.bind(Pass("unedited", torch.ones_like(ids, dtype=torch.bool))):
                    gen = m.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                           min_new_tokens=new, do_sample=True, top_k=top_k, top_p=1.0,
                                           temperature=1.0, pad_token_id=m.pad_id)
                for row in gen:
                    text = m.tok.decode(row, skip_special_tokens=True)
                    out.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return out


# ---------------------------------------------------------------------------------------- lookup
def subject_last(model: PromptFormat, prompt: str, subject: str) -> int:
    """Index, in `model.encode_prompt(prompt)`, of the token holding the subject's last character
    (first occurrence of the subject; ROME's `subject_last`)."""
    text = model.format_prompt(prompt)
    at = text.find(prompt)
    pos = prompt.find(subject) if subject else -1
    if at < 0 or pos < 0:
        raise EditbenchError(f"subject {subject!r} is not in prompt {prompt!r} — the dataset must give each edit a "
                             f"subject that is a substring of its prompt")
    end = at + pos + len(subject)
    enc = model.tok(text, add_special_tokens=not model.chat_template, return_offsets_mapping=True)
    idx = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end]
    if not idx:
        raise EditbenchError(f"no token of prompt {prompt!r} covers subject {subject!r}")
    return idx[-1]


@dataclass
class Rows:
    """A left-padded batch of edit rows plus the KL row, and the batch index of each row's lookup token."""

    batch: object  # TokenBatch
    lookup: torch.Tensor  # B (positions in the padded batch)
    n_edit: int  # rows 0..n_edit-1 carry the target; row n_edit (if any) is the KL row


def _lookup_batch(model: EditableModel, rows: list[tuple[list[int], int]], looks: list[int]):
    """Left-pad `rows`; each row's lookup index moved into the padded batch's coordinates."""
    batch = model.batch(rows)
    T = batch.input_ids.shape[1]
    return batch, torch.tensor([T - len(ids) + k for (ids, _), k in zip(rows, looks)], device=model.device)


def edit_rows(model: EditableModel, templates: Sequence[str], prompt: str, subject: str, target: str,
              kl_prompt: str | None) -> Rows:
    """Each context template around the prompt, + the target (labelled), then the KL prompt."""
    rows, looks = [], []
    for t in templates:
        p = t.format(prompt)
        rows.append(model.encode_example(p, target))
        looks.append(subject_last(model, p, subject))
    if kl_prompt is not None:
        p = kl_prompt.format(subject)
        ids = model.encode_prompt(p)
        rows.append((ids, len(ids)))
        looks.append(subject_last(model, p, subject))
    return Rows(*_lookup_batch(model, rows, looks), len(templates))


def prompt_rows(model: EditableModel, templates: Sequence[str], prompt: str, subject: str):
    """Each context template around the prompt (no target): (batch, lookup positions)."""
    texts = [t.format(prompt) for t in templates]
    rows = [(ids, len(ids)) for ids in map(model.encode_prompt, texts)]
    return _lookup_batch(model, rows, [subject_last(model, p, subject) for p in texts])


def at_lookup(x: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """B x T x d -> B x d at each row's lookup position."""
    return x[torch.arange(x.shape[0], device=x.device), lookup]


def block_output(model: EditableModel, batch, layer: int) -> torch.Tensor:
    """Hidden states leaving block `layer` (entering `layer + 1`) on every position, current weights."""
    return model.prefix(batch, layer=layer + 1).h


# ---------------------------------------------------------------------------------------- value
@dataclass
class DeltaResult:
    delta: torch.Tensor  # d_model
    steps: int
    loss: float


def optimise_delta(model: EditableModel, rows: Rows, layer: int, init_norm: float, lr: float, n_steps: int,
                   kl_factor: float, weight_decay: float, clamp_factor: float, stop_loss: float = 5e-2,
                   at: EditSite | None = None) -> DeltaResult:
    """Optimise δ added to the hidden state leaving block `layer` at each row's subject-last token
    (AlphaEdit's and UnKE's δ on that block's residual output), or, with `at` (a site in block
    `layer`), to that module's output there (ROME's δ on the MLP output, for a block that does not
    add it to the residual as it is: `EditableModel.output_reaches_residual`; where it does, the
    two are the same δ and the residual is used). Loss: mean over edit rows of the target NLL /
    |target| + kl_factor · KL(p_δ ‖ p_0) at the KL row's lookup + weight_decay · ‖δ‖ / init_norm².
    Adam; stop once the loss < `stop_loss`; no step after the last evaluation; after each step
    ‖δ‖ ≤ clamp_factor · init_norm. The blocks below where δ enters and every position before the
    earliest lookup run once (δ cannot reach them)."""
    if layer + 1 >= len(model.blocks):
        raise EditbenchError(f"the value layer {layer} is the model's last block — edit a lower layer")
    b = rows.batch
    start = int(rows.lookup.min())
    pre = model.prefix(b, layer=layer + 1 if at is None else layer, start=start)
    look = rows.lookup - start
    n_edit = rows.n_edit
    labels = pre.batch.labels
    nxt = pre.batch.predicts_label  # positions whose logits predict a target token
    kl_row = n_edit < b.input_ids.shape[0]
    needed = nxt.clone()
    if kl_row:
        needed[n_edit, look[n_edit]] = True
    add_mask = torch.zeros(pre.h.shape[:2], dtype=pre.h.dtype, device=pre.h.device)
    add_mask[torch.arange(len(look)), look] = 1.0
    tgt = labels[:, 1:][nxt[:, :-1]]
    row_of = torch.nonzero(nxt)[:, 0]
    per_row = torch.bincount(row_of, minlength=n_edit).clamp(min=1).to(torch.float32)

    width = pre.h.shape[-1] if at is None else nn_linear(model, at).out_features
    delta = torch.zeros(width, dtype=torch.float32, device=pre.h.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    max_norm = clamp_factor * init_norm
    kl_init = None
    steps, value = 0, math.inf
    hook = None if at is None else model.module_at(at).register_forward_hook(
        lambda _m, _args, y: y + add_mask[..., None].to(y.dtype) * delta.to(y.dtype))
    try:
        for it in range(n_steps):
            h = pre.h + add_mask[..., None] * delta.to(pre.h.dtype) if at is None else pre.h
            hidden = model.suffix_hidden(replace(pre, h=h), Pass("train", pre.batch.prompt_mask, {}), needed=needed)
            logp = F.log_softmax(model.model.lm_head(hidden[nxt]).float(), -1)
            tok_nll = -logp.gather(1, tgt[:, None])[:, 0]
            nll = (torch.zeros(n_edit, device=delta.device).index_add(0, row_of, tok_nll) / per_row[:n_edit]).mean()
            loss = nll
            if kl_row:
                kl_logp = F.log_softmax(model.model.lm_head(hidden[n_edit, look[n_edit]][None]).float(), -1)
                if kl_init is None:
                    kl_init = kl_logp.detach()
                loss = loss + kl_factor * F.kl_div(kl_init, kl_logp, log_target=True, reduction="batchmean")
            loss = loss + weight_decay * delta.norm() / init_norm ** 2
            value = loss.item()
            steps = it
            if value < stop_loss or it == n_steps - 1:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                n = delta.norm()
                if n > max_norm:
                    delta.mul_(max_norm / n)
    finally:
        if hook is not None:
            hook.remove()
    return DeltaResult(delta.detach(), steps, value)


def nn_linear(model: EditableModel, site: EditSite) -> nn.Linear:
    mod = model.module_at(site)
    if not isinstance(mod, nn.Linear):
        raise EditbenchError(f"model {model.name}: {site.layer}.{site.module} is a {type(mod).__name__}, not a "
                             f"linear layer — fix the editor's module path")
    return mod
