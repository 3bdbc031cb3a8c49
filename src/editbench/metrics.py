"""Rel / Gen / Loc / OP exactly as docs/protocol.md#metrics defines them (pure functions on token ids).

Mode G (greedy generation): decode the new tokens, strip leading whitespace, re-encode, truncate to
the target length, token exact-match (0 when the lengths differ). Mode TF (teacher forcing): argmax
at the answer positions against the answer tokens. Locality in both modes is agreement with the
pre-edit model's own outputs: matches over the longer length. Mode F (free generation): the model
generates until it stops (`free_cap`, `free_text`); Rel / Gen are exact match of the normalised
answer text (`normalize_answer`) and, leniently, the target as a leading phrase of it
(`prefix_match`); Loc is exact match of the normalised text with the unedited model's own.
"""
from __future__ import annotations

import math
import re
import string
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


_PUNCTUATION = frozenset(string.punctuation)


def free_cap(n_answer: int) -> int:
    """Free generation's token cap for a probe whose reference answer has `n_answer` tokens."""
    return 2 * n_answer + 8


def free_text(tok, ids: Sequence[int], stop_ids: frozenset[int]) -> str:
    """A free generation's answer: its ids up to the first stop (an EOS id, or a token whose text
    holds a newline; the cap otherwise), decoded without special tokens, cut at the first newline,
    stripped."""
    ids = list(ids)
    ends = [i for i, t in enumerate(ids) if t in stop_ids]
    ids = ids[:ends[0] + 1] if ends else ids
    return tok.decode(ids, skip_special_tokens=True).split("\n", 1)[0].strip()


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation, step for step: lower case, ASCII punctuation deleted, the
    articles a / an / the removed, whitespace collapsed."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def text_em(output: str, target: str) -> float:
    """1.0 when the normalised output equals the normalised target."""
    return float(normalize_answer(output) == normalize_answer(target))


def prefix_match(output: str, target: str) -> float:
    """1.0 when the normalised target is the normalised output's first words (the lenient metric)."""
    out, tgt = normalize_answer(output), normalize_answer(target)
    return float(bool(tgt) and (out == tgt or out.startswith(tgt + " ")))


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
