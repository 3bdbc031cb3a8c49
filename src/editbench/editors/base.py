"""The editor protocol. An editor is built by `hydra.utils.instantiate(cfg.editor, model=...)`.

The runner calls `edit()` with edit *requests* only (prompt, target, subject: never the probes the
evaluator scores), times it, evaluates `module()`, and saves `state_dict()` at every checkpoint;
`load_state_dict()` on a freshly loaded model must restore the edited model exactly. Site wrappers
read the context of each forward pass from `models.Pass` (never from attributes of the model or
the editor).
`state_dict()` holds *everything* that persists between edits (codebooks, side memories, weight
deltas, running statistics, caches), as tensors / plain Python data.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from editbench.data import EditRequest
from editbench.models import EditableModel, EditSite


@dataclass(frozen=True)
class SetupContext:
    """What an editor's one-time setup may use (the runner times it as `setup_s`, apart from
    editing): a cache directory for statistics of the unedited model (e.g. second moments of a
    layer's inputs, keyed by whatever decides them), the run seed, and auxiliary prompts the dataset
    provides for editors that train on unrelated text — disjoint from every evaluated probe.

    An editor's randomness comes from `generator()` only, never from the global RNG: it keeps the
    generator and puts `generator.get_state()` in its `state_dict`, so a resumed run draws what an
    uninterrupted one would."""

    cache_dir: Path
    seed: int
    aux: Sequence[tuple[str, str]] = ()

    def generator(self) -> torch.Generator:
        """A new CPU generator seeded with the run seed (draw on the CPU, then move to the device:
        the same numbers on every device)."""
        return torch.Generator(device="cpu").manual_seed(self.seed)


@dataclass
class StepCount:
    """The optimisation steps an editor took: in its last edit, and in every edit so far (the
    total belongs in the editor's state, under `steps_total`, so that a resumed run counts on)."""

    last: int | None = None
    total: int = 0

    def add(self, steps: int) -> None:
        """Count one edit's steps."""
        self.last, self.total = steps, self.total + steps

    def report(self) -> dict:
        return {"last_edit": {"steps": self.last}, "steps_total": self.total}


@dataclass(frozen=True)
class Routing:
    """Where an editor's router sends a batch of prompts (diagnostics; routing changes nothing):
    per prompt, the entry it is routed to (-1: none, the model's own output) and how far the
    router's refinement moved its query (None: the router does not refine queries)."""

    entry: torch.Tensor                # (B,) long
    displacement: torch.Tensor | None  # (B,) float


class Editor(ABC):
    #: the method's name in results tables; editors whose ablation switches change what the
    #: method *is* (e.g. HoReN with 0 Hopfield steps = GRACE+Norm) override `method`.
    label: str = "?"
    #: edits per `edit()` call; the runner cuts a batch at checkpoints, so a call may get fewer
    batch_size: int = 1
    #: True: the editor changes only the model config's edit site (the paper's aligned comparison);
    #: False: it edits layers of its own, named per model in `conf/editor_model/` (ROME family)
    aligned: bool = True
    #: how the state (`state_dict`) grows with the edits held — what `make stress` holds memory,
    #: checkpoint size and per-edit time to: "fixed" (weights or statistics changed in place: the
    #: same size after any number of edits) or "per_edit" (entries added as edits arrive — codebook
    #: rows, side-memory copies — so size grows at most linearly and a lookup scans them all)
    state_growth: str = "fixed"

    def __init__(self, model: EditableModel, **hparams):
        """Subclasses name every hyper-parameter in their signature, with no default: the values
        come from the editor's YAML (and `editor_model/` pair files) only, and the runner refuses
        a key no parameter takes."""
        self.model = model
        self.hparams = dict(hparams)

    @property
    def method(self) -> str:
        return self.label

    def touches(self) -> list[EditSite]:
        """Every (layer, module) site whose module this editor changes or wraps. The model stays
        unedited everywhere else (the conformance test checks it), so the evaluator reuses the
        unedited hidden states entering the lowest touched layer. Default: the model config's
        edit site (codebooks, side memories, a weight edit there)."""
        return [self.model.site]

    def setup(self, ctx: SetupContext) -> None:
        """Once per run, on the unedited model, before the first edit (and before
        `load_state_dict` on resume): precompute what editing needs. Nothing by default."""

    @abstractmethod
    def edit(self, requests: Sequence[EditRequest]) -> None:
        """Apply the edits in `requests` (at most `batch_size` of them), in place."""

    def module(self) -> nn.Module:
        """The causal LM the evaluator runs (with this editor's wrappers installed)."""
        return self.model.model

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, sd: dict) -> None: ...

    def report(self) -> dict:
        """JSON-serialisable facts about the editor's state, written into every result row as
        `editor_info` (e.g. generated templates, memory counts). Nothing by default."""
        return {}

    def routing(self, prompts: Sequence[Sequence[int]], states: Callable | None = None) -> Routing | None:
        """Where this editor's router sends each prompt (token ids, all of them prompt), read-only,
        for the runner's routing diagnostics at each checkpoint; None: the editor does not route
        (weight editors). `states(prompts, layer)`: the unedited hidden states entering block
        `layer` at each prompt's positions, from the evaluator's cache (`editors._common.site_batches`).
        An editor that routes also says which entry each edit was written to (`edit_entries`) and
        what its keys are (`routing_keys`)."""
        return None

    def edit_entries(self) -> Sequence[int] | None:
        """The entry each edit so far was written to, in stream order (None: not known, e.g. a run
        resumed from a checkpoint written before editors kept it)."""
        return None

    def routing_keys(self) -> torch.Tensor | None:
        """The keys prompts are routed by (one row per entry), for their nearest-neighbour spread."""
        return None

    @abstractmethod
    def num_params(self) -> int:
        """Parameters this editor added or changed (codebook entries, weight deltas, ...)."""
