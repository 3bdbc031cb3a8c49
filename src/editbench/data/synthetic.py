"""Synthetic facts: a generated stream of distinct fact edits, long enough for the 50,000-edit
mechanics rehearsal (`make stress`) — no shipped pool holds that many usable records.

The records are made by code, not shipped: record i (0 ≤ i < `size`) depends only on i and
`seed`, so a stream's first N records are the same whatever `size` is.

- subject: a made-up three-syllable name (syllables from `SUBJECT_SYLLABLES`) picked through a
  seeded affine bijection of the index space, so two records never share a subject;
- relation: one of `RELATIONS` (a question and a paraphrase of it), cycled through in a seeded order;
- target: a made-up answer word (three syllables from `ANSWER_SYLLABLES`, a second bijection), so two
  records never share a target either;
- locality: the same kind of question about a subject the stream never edits (indices from `size`
  on), phrased with one of `UNRELATED` (templates no edit uses), its own made-up answer setting the
  decode length (locality is scored as agreement with the unedited model, as for ZsRE).

Case shape and scoring are ZsRE's (`rel`, `gen`, `loc`; OP), so every editor and both scoring modes
apply. The facts are fictional: on a real model the unedited answers are guesses, which is what a
mechanics run needs (edits that the model did not already know) — its Rel / Gen / Loc are not
comparable with a real dataset's.
"""
from __future__ import annotations

import math
import random

from editbench.data.records import EditCase
from editbench.data.stream import RecordStream
from editbench.data.zsre import make_case
from editbench.errors import EditbenchError
from editbench.metrics import OP
from editbench.validate import NonNegativeInt, PositiveInt

SUBJECT_SYLLABLES = ("ka", "lo", "mi", "ra", "te", "vu", "no", "si", "be", "do", "fa", "gu", "ha", "je", "ku", "le",
                     "ma", "ne", "po", "ri", "sa", "to", "va", "zo", "bri", "dra", "fel", "gor", "hin", "jas", "kel",
                     "lun", "mor", "nal", "pir", "quo", "rus", "sel", "tam", "vor", "wen", "yal", "zer", "an", "el",
                     "in", "or", "ul")
ANSWER_SYLLABLES = ("bar", "cen", "dor", "fin", "gal", "hov", "ist", "jor", "kan", "lim", "mun", "nor", "pel", "rak",
                    "sim", "tor", "vel", "wik", "xan", "yor", "zum", "ab", "ek", "ot", "um", "ax", "ir", "os", "ey",
                    "ud", "ald", "bek", "cor", "dun", "eth", "fos", "gim", "hul", "kor", "lys")
# (question, paraphrase): {s} is the subject
RELATIONS = (
    ("In which city was {s} born?", "{s} was born in which city?"),
    ("What language did {s} write in?", "{s} wrote in which language?"),
    ("Which company employs {s}?", "{s} is employed by which company?"),
    ("What is the name of the river near {s}?", "Which river runs near {s}?"),
    ("Who is the founder of {s}?", "{s} was founded by whom?"),
    ("Which country is {s} located in?", "{s} lies in which country?"),
    ("What instrument does {s} play?", "{s} plays which instrument?"),
    ("Which team does {s} play for?", "{s} is a player of which team?"),
)
# locality questions: templates no edit request uses, about subjects no edit touches
UNRELATED = (
    "What is the favourite food of {s}?",
    "Which school did {s} attend?",
    "What colour is the flag of {s}?",
    "Who wrote the first book about {s}?",
)
_SUBJECTS = len(SUBJECT_SYLLABLES) ** 3  # 110,592 names: edited subjects [0, size), unrelated ones [size, 2·size)
_ANSWERS = len(ANSWER_SYLLABLES) ** 3    # 64,000 answers for edited subjects, distinct while size ≤ this
MAX_SIZE = min(_SUBJECTS // 2, _ANSWERS)


class _Bijection:
    """i -> (a·i + b) mod n with gcd(a, n) = 1: a seeded permutation of range(n), one index at a time."""

    def __init__(self, n: int, rng: random.Random):
        self.n = n
        self.a = next(a for a in iter(lambda: rng.randrange(1, n), None) if math.gcd(a, n) == 1)
        self.b = rng.randrange(n)

    def __call__(self, i: int) -> int:
        return (self.a * i + self.b) % self.n


def _word(j: int, syllables: tuple[str, ...]) -> str:
    k = len(syllables)
    return (syllables[j // (k * k)] + syllables[j // k % k] + syllables[j % k]).capitalize()


class SyntheticFacts(RecordStream):
    overall = OP
    PROTOCOLS = ("lifelong_v1", "lifelong_v1_tf")

    def __init__(self, name: str = "synthetic", size: PositiveInt = 50_000, seed: NonNegativeInt = 0,
                 skip: NonNegativeInt = 0, aux: str = "outside_stream"):
        if size > MAX_SIZE:
            raise EditbenchError(f"data.size={size} is more than the generator's {MAX_SIZE} distinct facts — use "
                                 f"data.size<={MAX_SIZE}")
        if aux not in self.AUX_SOURCES:
            raise EditbenchError(f"data.aux={aux!r} is not one of {self.AUX_SOURCES} — use outside_stream (default)")
        rng = random.Random(f"synthetic-{seed}")
        self.subject, self.answer = _Bijection(_SUBJECTS, rng), _Bijection(_ANSWERS, rng)
        self.relation_offset, self.unrelated_offset = rng.randrange(len(RELATIONS)), rng.randrange(len(UNRELATED))
        self.name, self.size, self.seed, self.skip, self.aux_source = name, size, seed, skip, aux
        self.order_seed = seed  # the records are generated in stream order: `seed` is the order
        self.where = f"synthetic(size={size}, seed={seed})"
        self.provenance = {"source": f"editbench:data/synthetic.py (size={size}, seed={seed})"}
        self.info = {}
        self._records = None

    def case(self, i: int) -> EditCase:
        """Record i of the stream."""
        s = _word(self.subject(i), SUBJECT_SYLLABLES)
        question, paraphrase = RELATIONS[(i + self.relation_offset) % len(RELATIONS)]
        other = _word(self.subject(i + self.size), SUBJECT_SYLLABLES)
        unrelated = UNRELATED[(i + self.unrelated_offset) % len(UNRELATED)]
        return make_case(f"syn-{self.seed}-{i:06d}", question.format(s=s), _word(self.answer(i), ANSWER_SYLLABLES),
                         paraphrase.format(s=s), unrelated.format(s=other),
                         _word(self.answer(i + self.size), ANSWER_SYLLABLES), subject=s)

    def _parse(self) -> list[EditCase]:
        out = [self.case(i) for i in range(self.size)]
        self.info = {**self.provenance, "records_total": self.size, "usable": self.size}
        return out

    def stream(self, n: int) -> list[EditCase]:
        if n > self.size - self.skip:
            raise EditbenchError(f"n_edits={n} but data=synthetic holds {self.size} records (skip={self.skip}) — raise "
                                 f"data.size (at most {MAX_SIZE}) or lower n_edits")
        self.info.update(records_total=self.size, usable=self.size, order_seed=self.seed, skip=self.skip)
        return [self.case(i) for i in range(self.skip, self.skip + n)]
