"""WikiBigEdit (arXiv:2503.05683): `update` -> `ans`, Gen from `rephrase`, Loc from `loc` / `loc_ans`
(locality questions that share the edit's subject or relation: the hard case), and two portability
probe sets scored by accuracy, reported beside Rel / Gen / Loc and never folded into OP:
`personas` (a persona-style paraphrase; answer = the target) and `mhop` (a multi-hop question and
its own answer; only the records that have one, counted in `info`).

Sources, as for ZsRE: `hub`, `path`, else the 1,000 records shipped with editbench (file order =
HoReN's `data[:N]`; see `wikibigedit_first1000.md`).
Unrelated prompts for editors that train on them (`data.aux`): `zsre_nq` (default) takes the NQ
questions of the shipped ZsRE pool — WikiBigEdit's own locality questions are all evaluated once
the stream covers the file; `outside_stream` / `own_loc` as for ZsRE.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from editbench.data.records import EditCase, EditRequest, Probe, ProbeSet
from editbench.data.stream import RecordStream, text_field
from editbench.data.zsre import ZsreNQAux
from editbench.metrics import OP
from editbench.validate import NonNegativeInt

PACKAGED = Path(__file__).with_name("wikibigedit_first1000.jsonl")


def _field(rec: dict, key: str, i: int, where: str) -> str:
    v = rec.get(key)
    if isinstance(v, list) and len(v) == 1:  # HoReN wraps some fields in one-element lists
        v = v[0]
    return text_field("wikibigedit", rec, key, v, i, where)


class WikiBigEdit(ZsreNQAux, RecordStream):
    overall = OP  # Rel · Gen · Loc only: portability stays outside OP
    packaged = PACKAGED
    AUX_SOURCES = ("zsre_nq", "outside_stream", "own_loc")
    PROTOCOLS = ("lifelong_v1", "lifelong_v1_tf")

    def __init__(self, name: str = "wikibigedit", path: str | None = None, hub: str | None = None,
                 revision: str | None = None, split: str = "train", order_seed: int | None = None,
                 skip: NonNegativeInt = 0, aux: Literal["zsre_nq", "outside_stream", "own_loc"] = "zsre_nq"):
        super().__init__(name, path, hub, revision, split, order_seed, skip, aux)

    def _parse(self) -> list[EditCase]:
        out, n_mhop = [], 0
        for i, r in enumerate(self.raw):
            prompt, target = _field(r, "update", i, self.where), _field(r, "ans", i, self.where)
            sets = {"rel": ProbeSet("accuracy", (Probe(prompt, target),)),
                    "gen": ProbeSet("accuracy", (Probe(_field(r, "rephrase", i, self.where), target),)),
                    "loc": ProbeSet("locality", (Probe(_field(r, "loc", i, self.where),
                                                       _field(r, "loc_ans", i, self.where)),)),
                    "personas": ProbeSet("accuracy", (Probe(_field(r, "personas", i, self.where), target),))}
            if r.get("mhop"):
                sets["mhop"] = ProbeSet("accuracy", (Probe(_field(r, "mhop", i, self.where),
                                                           _field(r, "mhop_ans", i, self.where)),))
                n_mhop += 1
            out.append(EditCase(EditRequest(str(r.get("id", i)), prompt, target, r.get("subject") or ""), sets))
        self.info = {**self.provenance, "records_total": len(self.raw), "usable": len(out), "with_mhop": n_mhop}
        return out
