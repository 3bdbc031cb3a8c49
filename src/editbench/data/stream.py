"""What every record-file dataset adapter shares: where the records come from (a `datasets` hub
id, a JSON / JSONL file, or the copy shipped with editbench), the seeded stream with its offset,
and the unrelated prompts for editors that train on them. An adapter subclasses `RecordStream`
and turns raw records into `EditCase`s in `_parse`."""
from __future__ import annotations

import random
from pathlib import Path

from editbench.data.records import EditCase, load_json_records
from editbench.errors import EditbenchError


class RecordStream:
    #: the shipped records (a JSONL file next to the adapter)
    packaged: Path
    #: aux sources this adapter accepts (a subclass lists the ones that make sense for it)
    AUX_SOURCES: tuple[str, ...] = ("outside_stream", "own_loc")
    #: the protocols (by name) its records are scored under; None: any (checked before the model loads)
    PROTOCOLS: tuple[str, ...] | None = None

    def __init__(self, name: str, path: str | None, hub: str | None, revision: str | None, split: str,
                 order_seed: int | None, skip: int, aux: str):
        if aux not in self.AUX_SOURCES:
            raise EditbenchError(f"data.aux={aux!r} is not one of {self.AUX_SOURCES} — use {self.AUX_SOURCES[0]} "
                                 f"(default)")
        self.name, self.order_seed, self.skip, self.aux_source = name, order_seed, skip, aux
        #: where the records came from, for the result rows (`self.info` starts with it): the shipped
        #: copy by its place in the package (not this checkout's absolute path), a file also by its
        #: content (two runs read the same records exactly when the sha256 agree)
        self.provenance: dict
        if hub:
            self.where = f"{hub}@{revision or 'main'}:{split}"
            self.raw = self._from_hub(hub, revision, split)
            self.provenance = {"source": self.where}
        else:
            self.where = str(path or self.packaged)
            self.raw, sha256 = load_json_records(self.where, f"data={name}")
            self.provenance = {"source": self.where if path else f"editbench:data/{self.packaged.name}",
                               "sha256": sha256}
        self.info: dict = {}
        self._records: list[EditCase] | None = None

    def _from_hub(self, hub, revision, split) -> list[dict]:
        import datasets

        try:
            return list(datasets.load_dataset(hub, revision=revision, split=split))
        except Exception as e:  # datasets raises many types for "not reachable / not found"
            raise EditbenchError(f"data={self.name}: cannot load '{hub}' from the hub ({type(e).__name__}) — download "
                                 f"it and pass data.path=/local/file.jsonl") from None

    def _parse(self) -> list[EditCase]:
        """Usable cases in file order; sets `self.info` (counts of what was skipped and why)."""
        raise NotImplementedError

    def _shortage(self) -> str:
        """Why fewer records are usable than the file holds (for the n_edits error)."""
        return ""

    def records(self) -> list[EditCase]:
        """Every usable record in file order (parsed once); record ids must be unique (result files
        and `editbench diff` match records by id)."""
        if self._records is None:
            recs = self._parse()
            first: dict[str, int] = {}
            for i, c in enumerate(recs):
                if first.setdefault(c.id, i) != i:
                    raise EditbenchError(f"data={self.name}: record id {c.id!r} appears twice in {self.where} (usable "
                                         f"records {first[c.id]} and {i}) — give every record its own id (result "
                                         f"files and `editbench diff` match records by id)")
            self._records = recs
        return list(self._records)

    def stream(self, n: int) -> list[EditCase]:
        recs = self.records()
        if self.order_seed is not None:  # null: file order (to compare with other harnesses case by case)
            random.Random(self.order_seed).shuffle(recs)
        avail = len(recs) - self.skip
        if n > avail:
            raise EditbenchError(f"n_edits={n} but only {avail} usable {self.name} records remain after skip={self.skip}"
                                 f"{self._shortage()} — lower n_edits or use a larger data.path")
        self.info.update(order_seed=self.order_seed, skip=self.skip)
        return recs[self.skip:self.skip + n]

    def aux(self, stream: list[EditCase]) -> list[tuple[str, str]]:
        """Unrelated (prompt, answer) pairs for editors that train on them (`data.aux`):

        outside_stream: the locality questions of the usable records, without any prompt the
            stream evaluates (records share questions, so this goes by text, not by record), each
            once, in a seeded order;
        own_loc: the stream's own locality probes, in stream order — what the WISE reference
            does (it trains on the locality prompt it then evaluates); for reproducing it only.
        An adapter with other sources (e.g. `zsre_nq`) overrides this and defers to it for these."""
        if self.aux_source == "own_loc":
            return [(p.prompt, p.answer) for c in stream for p in c.probes["loc"].probes]
        return outside(self.records(), stream, f"aux-{self.order_seed}")


def text_field(dataset: str, rec: dict, key: str, value, i: int, where: str) -> str:
    """`value` (record `rec`'s field `key`, already unwrapped) if it is a non-empty string, else a
    one-line error naming the record and the field."""
    if not isinstance(value, str) or not value.strip():
        raise EditbenchError(f"{dataset} record {i} (id={rec.get('id', '?')}) in {where}: field '{key}' is missing or "
                             f"empty — fix the record or drop it from the file")
    return value


def outside(records: list[EditCase], stream: list[EditCase], seed: str) -> list[tuple[str, str]]:
    """The locality (prompt, answer) pairs of `records` whose prompt `stream` never evaluates,
    each once, shuffled with `seed`."""
    evaluated = {p.prompt for c in stream for ps in c.probes.values() for p in ps.probes}
    pairs = dict.fromkeys((p.prompt, p.answer) for c in records for p in c.probes["loc"].probes
                          if p.prompt not in evaluated)
    out = list(pairs)
    random.Random(seed).shuffle(out)
    return out
