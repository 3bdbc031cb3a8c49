"""WISE (Wang et al. 2024, arXiv:2405.14768; docs/editors.md#wise), WISE-Retrieve: the side-memory mechanism of
`_side_memory` with equal-weight TIES merging and nothing else.

Implementation choices (docs/editors.md#wise): scores over real tokens only (the reference also averages over
pads), the decision taken on prompt tokens in both scoring modes (the reference's teacher-forced
score also covers the answer being scored), the training mask exactly per row (the reference
derives it from a separately padded batch), the unrelated row from `data.aux`.
"""
from __future__ import annotations

from editbench.editors._side_memory import ActMargins, SideMemoryEditor
from editbench.validate import NonNegativeFloat, PositiveFloat, PositiveFraction, PositiveInt


class WISE(SideMemoryEditor):
    label = "WISE"

    def __init__(self, model, lr: PositiveFloat, n_iter: PositiveInt,
                 mask_ratio: PositiveFraction,
                 act_margin: ActMargins,
                 act_ratio: PositiveFloat, norm_constraint: PositiveFloat, weight_decay: NonNegativeFloat,
                 save_freq: PositiveInt, merge_freq: PositiveInt, density: PositiveFraction,
                 template_seeds: list[str], template_lengths: list[PositiveInt]):
        super().__init__(model, lr=lr, n_iter=n_iter, mask_ratio=mask_ratio, act_margin=list(act_margin),
                         act_ratio=act_ratio, norm_constraint=norm_constraint, weight_decay=weight_decay,
                         save_freq=save_freq, merge_freq=merge_freq, density=density,
                         template_seeds=list(template_seeds), template_lengths=list(template_lengths))
