"""The pass context: what every forward pass that reaches an editor's site wrapper is bound to.

Every such pass runs inside `with model.bind(Pass(...))`; the `Pass` says what kind of pass it is
(training, prefill, one cached decode step, or a pass that must see the unedited site), which
positions are prompt tokens, and carries a per-sequence `state` dict that lives as long as one
generation (for decisions taken on the prompt and kept for the decode steps). The adapter keeps
the bound passes in a `PassSlot` and hands the slot to the wrappers; a wrapper reached with no
bound pass raises instead of silently skipping the edit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

PASS_KINDS = ("train", "prefill", "decode", "unedited")


@dataclass
class Pass:
    """The context of one forward pass, as site wrappers see it.

    kind: "train" (an editor's own training pass on prompt + target), "prefill" (a full sequence:
          the prompt pass of a generation, or teacher-forced scoring), "decode" (one cached
          decoding step: a single new token per row; the prompt went through at prefill), or
          "unedited" (wrappers must return the unedited site output).
    prompt_mask: B x T bool over the positions of this pass, True at prompt tokens (all False
          for a decode step).
    state: per-sequence values that survive the decode steps of one generation; each wrapper
          keeps its entries under its own key. An editor's training pass also carries the
          trainable value here.
    """

    kind: str
    prompt_mask: torch.Tensor
    state: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in PASS_KINDS:
            raise ValueError(f"unknown pass kind {self.kind!r}; one of {PASS_KINDS}")


class PassSlot:
    """Where the adapter puts the pass being run, for the site wrappers it hands the slot to."""

    def __init__(self):
        self._stack: list[Pass] = []

    @property
    def current(self) -> Pass:
        if not self._stack:
            raise RuntimeError("a forward pass reached an edit-site wrapper with no pass context — run "
                               "the model inside `with model.bind(Pass(...))` (the evaluator and editors do)")
        return self._stack[-1]

    @contextlib.contextmanager
    def bind(self, p: Pass) -> Iterator[Pass]:
        self._stack.append(p)
        try:
            yield p
        finally:
            self._stack.pop()
