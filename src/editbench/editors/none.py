"""The unedited model: a real row in every table (its Loc is 1 by definition, Rel/Gen the base rate)."""
from __future__ import annotations

from editbench.editors.base import Editor


class NoEdit(Editor):
    label = "Unedited"

    def __init__(self, model):
        super().__init__(model)

    def touches(self) -> list:
        return []

    def edit(self, requests) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        return None

    def num_params(self) -> int:
        return 0
