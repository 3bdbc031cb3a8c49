"""UnKE / UnKEBench (Deng et al. 2024, arXiv:2405.15349): unstructured edits whose targets are free-text paragraphs.

Each case: the request `question` -> `answer` and three probe sets scored on free text (greedy
generation up to the protocol's `max_new_tokens`, `evaluate.Evaluator`): `orig` (the question) and
`para` (`para_question`, where a record has one) with every free-text metric, and `sub` (each
`sub_question` against its `sub_answer`; ROUGE only, averaged within the case first) where a record
has sub-answers; `info` counts both, and result rows carry `n_para` / `n_sub` when not every case has one.
No locality set and no overall score: the paper reports none for UnKE. Chat formatting, if any,
is the model adapter's (`model.chat_template`, from the tokenizer's own template).

Sources: `source: unkebench` (the shipped UnKEBench v2, 1,002 records) or `contest` (the shipped
DataFountain contest items, supplementary), or `path` / `hub` (same fields). File order by default.
Unrelated prompts for editors that train on them: ZsRE's NQ questions (`aux: zsre_nq`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from editbench.data.records import EditCase, EditRequest, Probe, ProbeSet
from editbench.data.stream import RecordStream, text_field
from editbench.data.zsre import ZsreNQAux
from editbench.errors import EditbenchError
from editbench.validate import NonNegativeInt

SHIPPED = {"unkebench": Path(__file__).with_name("unkebench_v2.jsonl"),
           "contest": Path(__file__).with_name("unke_contest_edits.jsonl")}


def _field(rec: dict, key: str, i: int, where: str) -> str:
    return text_field("unke", rec, key, rec.get(key), i, where)


class UnKE(ZsreNQAux, RecordStream):
    overall = None  # no locality, no overall score (docs/protocol.md#free-text-metrics)
    AUX_SOURCES = ("zsre_nq",)
    PROTOCOLS = ("unstructured_v1",)

    def __init__(self, name: str = "unke", source: Literal["unkebench", "contest"] = "unkebench",
                 path: str | None = None, hub: str | None = None, revision: str | None = None, split: str = "train",
                 order_seed: int | None = None, skip: NonNegativeInt = 0, aux: Literal["zsre_nq"] = "zsre_nq"):
        if source not in SHIPPED:
            raise EditbenchError(f"data.source={source!r} is not one of {sorted(SHIPPED)} — use unkebench (default)")
        self.packaged = SHIPPED[source]
        self.source = source
        super().__init__(name, path, hub, revision, split, order_seed, skip, aux)

    def _parse(self) -> list[EditCase]:
        out, n_sub, n_para = [], 0, 0
        for i, r in enumerate(self.raw):
            q, a = _field(r, "question", i, self.where), _field(r, "answer", i, self.where)
            sets = {"orig": ProbeSet("freetext", (Probe(q, a),))}
            if r.get("para_question") is not None:  # every UnKEBench record; half of the contest items
                sets["para"] = ProbeSet("freetext", (Probe(_field(r, "para_question", i, self.where), a),))
                n_para += 1
            subq, suba = r.get("sub_question") or [], r.get("sub_answer") or []
            if subq and suba:
                if len(subq) != len(suba) or not all(isinstance(x, str) and x.strip() for x in subq + suba):
                    raise EditbenchError(f"unke record {i} (id={r.get('id', '?')}) in {self.where}: sub_question and "
                                         f"sub_answer must be lists of non-empty strings of equal length — fix the record")
                sets["sub"] = ProbeSet("freetext_rouge", tuple(Probe(x, y) for x, y in zip(subq, suba)))
                n_sub += 1
            out.append(EditCase(EditRequest(str(r.get("id", i)), q, a, ""), sets))
        self.info = {**self.provenance, "records_total": len(self.raw), "usable": len(out), "with_para": n_para,
                     "with_sub": n_sub}
        return out
