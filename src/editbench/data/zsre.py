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

import random
from typing import Literal
from pathlib import Path

from editbench.data.records import EditCase, EditRequest, Probe, ProbeSet, load_json_records
from editbench.errors import EditbenchError
from editbench.metrics import OP
from editbench.validate import NonNegativeInt

PACKAGED_POOL = Path(__file__).with_name("zsre_pool.jsonl")
TARGETS = {"answer", "alt"}
AUX_SOURCES = ("outside_stream", "own_loc")


def _text(rec: dict, key: str, i: int, where: str) -> str:
    v = rec.get(key)
    if isinstance(v, list) and v and key == "answers":
        v = v[0]
    if not isinstance(v, str) or not v.strip():
        raise EditbenchError(f"zsre record {i} (id={rec.get('id', '?')}) in {where}: field '{key}' is missing or "
                             f"empty — fix the record or drop it from the file")
    return v


def make_case(case_id: str, prompt: str, target: str, rephrase: str, loc_prompt: str, loc_answer: str,
              subject: str = "") -> EditCase:
    """One ZsRE-style case: the request and its rel / gen / loc probe sets."""
    return EditCase(EditRequest(case_id, prompt, target, subject),
                    {"rel": ProbeSet("accuracy", (Probe(prompt, target),)),
                     "gen": ProbeSet("accuracy", (Probe(rephrase, target),)),
                     "loc": ProbeSet("locality", (Probe(loc_prompt, loc_answer),))})


class ZsRE:
    overall = OP  # the structured family's overall score (EDITORS.md §3.1)

    def __init__(self, name: str = "zsre", path: str | None = None, hub: str | None = None,
                 revision: str | None = None, split: str = "train", target: Literal["answer", "alt"] = "answer",
                 order_seed: int | None = 0, skip: NonNegativeInt = 0,
                 aux: Literal["outside_stream", "own_loc"] = "outside_stream"):
        if target not in TARGETS:
            raise EditbenchError(f"data.target={target!r} is not one of {sorted(TARGETS)} — use answer or alt")
        if aux not in AUX_SOURCES:
            raise EditbenchError(f"data.aux={aux!r} is not one of {AUX_SOURCES} — use outside_stream (default)")
        self.aux_source = aux
        self.name, self.target, self.order_seed, self.skip = name, target, order_seed, skip
        if hub:
            self.where = f"{hub}@{revision or 'main'}:{split}"
            self.raw = self._from_hub(hub, revision, split)
        else:
            self.where = str(path or PACKAGED_POOL)
            self.raw = load_json_records(self.where, "data=zsre")
        self.info: dict = {}
        self._records: list[EditCase] | None = None

    @staticmethod
    def _from_hub(hub, revision, split) -> list[dict]:
        import datasets

        try:
            return list(datasets.load_dataset(hub, revision=revision, split=split))
        except Exception as e:  # datasets raises many types for "not reachable / not found"
            raise EditbenchError(f"data=zsre: cannot load '{hub}' from the hub ({type(e).__name__}) — download it "
                                 f"and pass data.path=/local/file.jsonl") from None

    def records(self) -> list[EditCase]:
        """Every usable record in file order (parsed once); counts of skipped ones go to `self.info`."""
        if self._records is None:
            self._records = self._parse()
        return list(self._records)

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
        self.info = {"source": self.where, "records_total": len(self.raw), "skipped_no_locality": no_loc,
                     f"skipped_no_{self.target}": no_target, "usable": len(out)}
        return out

    def aux(self, stream: list[EditCase]) -> list[tuple[str, str]]:
        """Unrelated (prompt, answer) pairs for editors that train on them (`data.aux`):

        outside_stream (default): the NQ locality questions of the usable records, without any
            prompt the stream evaluates (records share NQ questions, so this goes by text, not by
            record), each once, in a seeded order;
        own_loc: the stream's own locality probes, in stream order — what the WISE reference
            does (it trains on the locality prompt it then evaluates); for reproducing it only."""
        if self.aux_source == "own_loc":
            return [(p.prompt, p.answer) for c in stream for p in c.probes["loc"].probes]
        evaluated = {p.prompt for c in stream for ps in c.probes.values() for p in ps.probes}
        pairs = dict.fromkeys((p.prompt, p.answer) for c in self.records() for p in c.probes["loc"].probes
                              if p.prompt not in evaluated)
        out = list(pairs)
        random.Random(f"aux-{self.order_seed}").shuffle(out)
        return out

    def stream(self, n: int) -> list[EditCase]:
        recs = self.records()
        if self.order_seed is not None:  # null: file order (to compare with other harnesses case by case)
            random.Random(self.order_seed).shuffle(recs)
        avail = len(recs) - self.skip
        if n > avail:
            raise EditbenchError(
                f"n_edits={n} but only {avail} usable ZsRE records with target '{self.target}' remain after skip="
                f"{self.skip} ({self.info['skipped_no_locality']} lack a locality question, "
                f"{self.info[f'skipped_no_{self.target}']} lack the target) — lower n_edits or use a larger data.path")
        self.info.update(order_seed=self.order_seed, skip=self.skip)
        return recs[self.skip:self.skip + n]
