"""Rel / Gen / Loc / OP exactly as docs/protocol.md#metrics defines them (pure functions on token ids).

Mode G (greedy generation): decode the new tokens, strip leading whitespace, re-encode, truncate to
the target length, token exact-match (0 when the lengths differ). Mode TF (teacher forcing): argmax
at the answer positions against the answer tokens. Locality in both modes is agreement with the
pre-edit model's own outputs: matches over the longer length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence


def answer_ids(tok, new_ids: Sequence[int], n_target: int) -> list[int]:
    """Generated ids -> decoded text (special tokens skipped), left-stripped, re-encoded, truncated."""
    text = tok.decode(list(new_ids), skip_special_tokens=True).lstrip()
    return tok.encode(text, add_special_tokens=False)[:n_target]


def token_em(answer: Sequence[int], target: Sequence[int]) -> float:
    """Mean token equality, or 0 if the re-encoded answer is shorter than the target."""
    if len(answer) != len(target) or not target:
        return 0.0
    return sum(a == b for a, b in zip(answer, target)) / len(target)


def token_accuracy(pred: Sequence[int], labels: Sequence[int]) -> float:
    """Teacher-forced: fraction of answer positions whose argmax equals the answer token."""
    if not labels:
        return 0.0
    return sum(p == y for p, y in zip(pred, labels)) / len(labels)


def agreement(pre: Sequence[int], post: Sequence[int]) -> float:
    """Locality: positions where post-edit equals pre-edit output, over the longer length."""
    longest = max(len(pre), len(post))
    if longest == 0:
        return 1.0
    return sum(a == b for a, b in zip(pre, post)) / longest


@dataclass(frozen=True)
class Overall:
    """A dataset family's overall score: the geometric mean of named metrics. Defined once per
    family (the dataset adapter names it), so every table, plot and sink takes it from the rows."""

    name: str
    parts: tuple[str, ...]

    def __call__(self, scores: Mapping[str, float]) -> float:
        prod = math.prod(max(scores[p], 0.0) for p in self.parts)
        return math.pow(prod, 1 / len(self.parts)) if prod > 0 else 0.0


#: ZsRE / WikiBigEdit: OP = (Rel · Gen · Loc)^(1/3) (HoReN paper §E.3); portability stays outside
OP = Overall("op", ("rel", "gen", "loc"))


def overall(rel: float, gen: float, loc: float) -> float:
    """OP = geometric mean of Rel, Gen, Loc."""
    return OP({"rel": rel, "gen": gen, "loc": loc})


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
