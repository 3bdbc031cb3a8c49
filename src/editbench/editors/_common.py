"""Helpers shared by codebook editors (GRACE, HoReN): the edit-site wrapper, a growable codebook,
the codebook editors' state, prompt-position bookkeeping and the value-training loop. Editors never
import each other."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from editbench.editors.base import Editor, Routing, SetupContext, StepCount
from editbench.models.text import left_padded


TRAINED = "trained_value"  # Pass.state key: (value parameter, retrieval hit?) during a training pass


class SiteWrapper(nn.Module):
    """Stands in for the edit-site module: runs it, then lets the editor change its output in the
    context of the current pass (`models.Pass`, from the adapter's `PassSlot`)."""

    def __init__(self, base: nn.Module, intervene: Callable, passes):
        super().__init__()
        self.base = base
        self._intervene = intervene  # (x, y, pass) -> y'
        self._passes = passes

    @property
    def weight(self):  # so code that inspects the site (d_in, d_out) still works
        return self.base.weight

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self._passes.current
        y = self.base(x)
        return y if p.kind == "unedited" else self._intervene(x, y, p)


def prompt_positions(prompt_mask: torch.Tensor, ratio: float | None = None):
    """Index of the last prompt token per row and, with `ratio`, the B x T mask of the last
    max(ceil(ratio * P), 1) prompt tokens (P = prompt length incl. BOS; docs/editors.md#horen)."""
    T = prompt_mask.shape[1]
    ar = torch.arange(T, device=prompt_mask.device)
    last = torch.where(prompt_mask, ar, -1).max(dim=1).values
    if ratio is None:
        return last, None
    P = prompt_mask.sum(1)
    k = torch.tensor([max(math.ceil(ratio * int(n)), 1) for n in P], device=prompt_mask.device)
    rank = prompt_mask.long().cumsum(1) - 1  # 0..P-1 over prompt tokens
    window = prompt_mask & (rank >= (P - k)[:, None])
    return last, window


class Codebook:
    """Rows of keys / values / radii with amortised O(1) appends (capacity doubling)."""

    def __init__(self, d_key: int, d_value: tuple[int, ...], key_dtype, device):
        self.n = 0
        self.keys = torch.empty(16, d_key, dtype=key_dtype, device=device)
        self.values = torch.empty(16, *d_value, dtype=torch.float32, device=device)
        self.radii = torch.empty(16, dtype=torch.float32, device=device)
        self.labels: list[tuple[int, ...]] = []
        self.ref_labels: list[float] = []

    def _grow(self) -> None:
        for name in ("keys", "values", "radii"):
            old = getattr(self, name)
            new = torch.empty(2 * old.shape[0], *old.shape[1:], dtype=old.dtype, device=old.device)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def add(self, key, value, label: tuple[int, ...], ref_label: float, radius: float = 0.0) -> int:
        if self.n == self.keys.shape[0]:
            self._grow()
        self.keys[self.n] = key
        self.values[self.n] = value
        self.radii[self.n] = radius
        self.labels.append(label)
        self.ref_labels.append(ref_label)
        self.n += 1
        return self.n - 1

    @property
    def K(self) -> torch.Tensor:
        return self.keys[: self.n]

    @property
    def V(self) -> torch.Tensor:
        return self.values[: self.n]

    @property
    def R(self) -> torch.Tensor:
        return self.radii[: self.n]

    def state_dict(self) -> dict:
        return {"keys": self.K.cpu().clone(), "values": self.V.cpu().clone(), "radii": self.R.cpu().clone(),
                "labels": list(self.labels), "ref_labels": list(self.ref_labels)}

    def load_state_dict(self, sd: dict) -> None:
        self.n = 0
        self.labels, self.ref_labels = [], []
        dev = self.keys.device
        while self.keys.shape[0] < sd["keys"].shape[0]:
            self._grow()
        n = sd["keys"].shape[0]
        self.keys[:n] = sd["keys"].to(dev, self.keys.dtype)
        self.values[:n] = sd["values"].to(dev)
        self.radii[:n] = sd["radii"].to(dev)
        self.labels, self.ref_labels, self.n = list(map(tuple, sd["labels"])), list(sd["ref_labels"]), n


class CodebookEditor(Editor):
    """An editor whose whole state is a codebook (`self.book`), its counts of insertion cases
    (`self.cases`, name -> count) and the random generator that initialises new values (`self.gen`,
    the run's, from `setup`); the subclass builds the first two in its constructor."""
    state_growth = "per_edit"

    book: Codebook
    cases: dict[str, int]
    gen: torch.Generator
    train_steps: StepCount  # the optimisation steps its edits took

    def setup(self, ctx: SetupContext) -> None:
        self.gen = ctx.generator()
        self.entries = []
        self.train_steps = StepCount()

    #: the entry each edit was written to (stream order; None: resumed from a checkpoint without it)
    entries: list[int] | None = None

    def written(self, row: int) -> None:
        """Record the entry the current edit was written to (routing diagnostics: "own entry")."""
        if self.entries is not None:
            self.entries.append(row)

    def edit_entries(self) -> list[int] | None:
        return self.entries

    def routing_keys(self) -> torch.Tensor:
        rows = sorted(set(self.entries)) if self.entries else []
        return self.book.K[rows]

    @torch.no_grad()
    def routing(self, prompts, states=None) -> Routing:
        """The site wrapper's decision at a prefill pass over each prompt, in batches."""
        routed = [self.routed(x, mask) for x, _, mask in site_batches(self.model, prompts, states=states)]
        entry = torch.cat([torch.zeros(0, dtype=torch.long)] + [j.cpu() for j, _ in routed])
        disp = [d.float().cpu() for _, d in routed if d is not None]  # a router that refines: every batch
        return Routing(entry, torch.cat([torch.zeros(0)] + disp) if len(disp) == len(routed) else None)

    def routed(self, x: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(entry or -1, query displacement or None) per row of the edit site's input `x`."""
        raise NotImplementedError

    def report(self) -> dict:
        return {**self.train_steps.report(), "entries": self.book.n,
                "cases": dict(self.cases)}

    def draw(self, fn: Callable, n: int, device) -> torch.Tensor:
        """`fn` (torch.rand / torch.randn) of n float32 values from the editor's generator, on `device`."""
        return fn(n, generator=self.gen).to(device)

    def state_dict(self) -> dict:
        return {"book": self.book.state_dict(), "cases": dict(self.cases), "gen": self.gen.get_state(),
                "steps_total": self.train_steps.total, "entries": None if self.entries is None else list(self.entries)}

    def load_state_dict(self, sd: dict) -> None:
        self.book.load_state_dict(sd["book"])
        self.cases = dict(sd["cases"])
        self.train_steps.total = sd.get("steps_total", 0)  # absent from checkpoints written before it was counted
        self.entries = None if sd.get("entries") is None else list(sd["entries"])  # ditto: own entries unknown
        # A checkpoint written before codebook editors kept their own generator has none: their draws
        # came from the global RNG, which the runner restores from the same checkpoint before this call.
        self.gen.set_state(sd["gen"] if "gen" in sd else torch.get_rng_state())


def site_batches(model, prompts, size: int = 64, states: Callable | None = None):
    """(x, y0, prompt_mask) at the edit site for `prompts` (token ids, all of them prompt), `size`
    at a time, left-padded: what a site wrapper sees at a prefill pass over them. `states(prompts,
    layer)`: the unedited hidden states entering block `layer` at each prompt's positions (the
    evaluator's cache; valid while every block below the site is unedited), so only the site's
    block runs; None: the blocks below run too."""
    for k in range(0, len(prompts), size):
        chunk = [list(ids) for ids in prompts[k:k + size]]
        batch = model.batch([(ids, len(ids)) for ids in chunk])
        h = None if states is None else left_padded(states(chunk, model.site.layer), batch.input_ids.shape[1])
        with torch.no_grad():
            x, y0 = model.site_io(batch, h=h)
        yield x, y0, batch.prompt_mask


def edit_labels(batch) -> tuple[tuple[int, ...], float]:
    """(target token ids, the reference code's label: mean of the label tensor incl. the -100 mask)."""
    lab = batch.labels[0][batch.attention_mask[0].bool()]
    return tuple(lab[lab != -100].tolist()), float(lab.float().mean())


def train(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], lr: float, n_iter: int,
          stop_loss: float | None, patience: int | None) -> int:
    """Adam on `params` (a fresh optimizer per edit); stops when the target loss falls below
    `stop_loss` or has not improved for `patience` steps. Returns the number of steps taken."""
    opt = torch.optim.Adam(params, lr=lr)
    best, stale = math.inf, 0
    for step in range(n_iter):
        loss = loss_fn()
        value = loss.item()
        if stop_loss is not None and value < stop_loss:
            return step
        if value < best - 1e-4:
            best, stale = value, 0
        else:
            stale += 1
            if patience and stale >= patience:
                return step
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n_iter


def train_entry(editor, row: int, hit: bool, batch, lr: float) -> int:
    """Train codebook row `row` of a codebook editor on one edit; returns the optimisation steps
    taken. The training passes carry the trainable copy in `Pass.state[TRAINED]` with `hit`
    (whether retrieval sends this prompt to the row), so the site wrapper uses it; the frozen
    network before the last prompt token runs once."""
    param = editor.book.values[row].clone().requires_grad_(True)
    pre = editor.model.prefix(batch, from_last_prompt=True)
    state = {TRAINED: (param, hit)}
    hp = editor.hparams
    steps = train([param], lambda: editor.model.target_loss(pre, state), lr, hp["n_iter"], hp["stop_loss"],
                  hp["patience"])
    editor.book.values[row] = param.detach()
    return steps
