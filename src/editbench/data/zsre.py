"""ZsRE in the MEND/EasyEdit schema (src, rephrase, answers, alt, loc, loc_ans).

Sources, in order of precedence: `hub` (a `datasets` id, with `revision` and `split`), `path` (any
JSON list or JSONL file), else the pool shipped with editbench (10,550 records; see
`zsre_pool.md`). The stream is a seeded permutation (`order_seed`) of the usable records, or file
order with `order_seed: null`, starting at `skip` (so a calibration slice can be kept disjoint
from reported runs).

Each case: the request (`src` -> target, `subject`) and three probe sets: `rel` (the edit prompt),
`gen` (`rephrase`), both scored by accuracy against the target, and `loc` (`loc` / `loc_ans`),
scored by agreement with the unedited model. Overall: OP, the geometric mean of the three.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from editbench.data.records import EditCase, EditRequest, Probe, ProbeSet
from editbench.data.stream import RecordStream, outside, text_field
from editbench.errors import EditbenchError
from editbench.metrics import OP
from editbench.validate import NonNegativeInt

PACKAGED_POOL = Path(__file__).with_name("zsre_pool.jsonl")
TARGETS = {"answer", "alt"}


def _text(rec: dict, key: str, i: int, where: str) -> str:
    v = rec.get(key)
    if isinstance(v, list) and v and key == "answers":
        v = v[0]
    return text_field("zsre", rec, key, v, i, where)


def make_case(case_id: str, prompt: str, target: str, rephrase: str, loc_prompt: str, loc_answer: str,
              subject: str = "") -> EditCase:
    """One ZsRE-style case: the request and its rel / gen / loc probe sets."""
    return EditCase(EditRequest(case_id, prompt, target, subject),
                    {"rel": ProbeSet("accuracy", (Probe(prompt, target),)),
                     "gen": ProbeSet("accuracy", (Probe(rephrase, target),)),
                     "loc": ProbeSet("locality", (Probe(loc_prompt, loc_answer),))})


class ZsRE(RecordStream):
    overall = OP  # the structured family's overall score (docs/protocol.md#op)
    packaged = PACKAGED_POOL
    PROTOCOLS = ("lifelong_v1", "lifelong_v1_tf")

    def __init__(self, name: str = "zsre", path: str | None = None, hub: str | None = None,
                 revision: str | None = None, split: str = "train", target: Literal["answer", "alt"] = "answer",
                 order_seed: int | None = 0, skip: NonNegativeInt = 0,
                 aux: Literal["outside_stream", "own_loc"] = "outside_stream"):
        if target not in TARGETS:
            raise EditbenchError(f"data.target={target!r} is not one of {sorted(TARGETS)} — use answer or alt")
        self.target = target
        super().__init__(name, path, hub, revision, split, order_seed, skip, aux)

    def _parse(self) -> list[EditCase]:
        out, no_loc, no_target = [], 0, 0
        for i, r in enumerate(self.raw):
            prompt = _text(r, "src", i, self.where)
            rephrase = _text(r, "rephrase", i, self.where)
            if self.target == "alt" and not r.get("alt"):
                no_target += 1
                continue
            target = _text(r, "alt" if self.target == "alt" else "answers", i, self.where)
            if not r.get("loc") or not r.get("loc_ans"):
                no_loc += 1  # e.g. KnowEdit-only records: no NQ locality question
                continue
            out.append(make_case(str(r.get("id", i)), prompt, target, rephrase, _text(r, "loc", i, self.where),
                                 _text(r, "loc_ans", i, self.where), r.get("subject") or ""))
        self.info = {**self.provenance, "records_total": len(self.raw), "skipped_no_locality": no_loc,
                     f"skipped_no_{self.target}": no_target, "usable": len(out)}
        return out

    def _shortage(self) -> str:
        return (f" with target '{self.target}' ({self.info['skipped_no_locality']} lack a locality question, "
                f"{self.info[f'skipped_no_{self.target}']} lack the target)")


def zsre_nq(stream: list[EditCase], order_seed: int | None) -> list[tuple[str, str]]:
    """The aux source `zsre_nq`: the NQ questions of the shipped ZsRE pool that `stream` never
    evaluates, each once, in a seeded order — for datasets whose own locality questions are all
    evaluated (or that have none)."""
    return outside(ZsRE().records(), stream, f"aux-{order_seed}")


class ZsreNQAux:
    """Mixin for an adapter (before `RecordStream` in its bases) that also offers the aux source
    `zsre_nq` (`zsre_nq`); the other sources are `RecordStream.aux`'s."""

    def aux(self, stream: list[EditCase]) -> list[tuple[str, str]]:
        if self.aux_source == "zsre_nq":
            return zsre_nq(stream, self.order_seed)
        return super().aux(stream)
