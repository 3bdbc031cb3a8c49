"""What a dataset adapter produces: edit cases, each an *edit request* (all an editor ever sees)
plus named *probe sets* (what the evaluator scores; editors never receive them). JSON/JSONL reading.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from editbench.errors import EditbenchError


@dataclass(frozen=True)
class EditRequest:
    """One edit: make `prompt` produce `target`. `subject` (a substring of the prompt) is for
    editors that locate a subject token (ROME family)."""

    id: str
    prompt: str
    target: str
    subject: str = ""


@dataclass(frozen=True)
class Probe:
    """One scored prompt. `answer` is the expected answer (accuracy scorers) or the reference
    answer whose length sets the decode length (locality: agreement with the unedited model)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class ProbeSet:
    """Probes scored by one scorer of `editbench.evaluate.Evaluator.SCORERS`."""

    scorer: str
    probes: tuple[Probe, ...]


@dataclass(frozen=True)
class EditCase:
    """An edit request and the probe sets that test it, by metric name (`rel`, `gen`, `loc`, and
    dataset-specific ones). A case may lack a probe set that other cases have."""

    request: EditRequest
    probes: Mapping[str, ProbeSet] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.request.id


def load_json_records(path: str | Path, what: str) -> tuple[list[dict], str]:
    """Read a JSON list or a JSONL file: its records and the SHA-256 of its bytes (read once, so the
    digest is of exactly what was parsed); one-line errors for a missing or unparsable file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EditbenchError(f"{what}: data file not found: {p} — check data.path (or omit it to use the packaged data)")
    try:
        data = p.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EditbenchError(f"{what}: {p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}) — "
                             f"re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
    except OSError as e:
        raise EditbenchError(f"{what}: cannot read {p} ({e.strerror}) — check the file's permissions") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise EditbenchError(f"{what}: {p} is not valid JSON (line {e.lineno}: {e.msg}) — fix or replace the file") from None
    elif isinstance(whole := _one_object(text), dict) and (_records_key(whole) or p.suffix != ".jsonl" or
                                                          "\n" in text.strip()):
        raise EditbenchError(f"{what}: {p} {_object_problem(whole)}")
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EditbenchError(f"{what}: {p} line {lineno} is not valid JSON ({e.msg}) — fix or remove that line") from None
    if not all(isinstance(r, dict) for r in rows):
        raise EditbenchError(f"{what}: {p} must hold JSON objects, one per record — fix the file")
    return rows, hashlib.sha256(data).hexdigest()


def _one_object(text: str):
    """The file as one JSON document, or None when it is not one (e.g. JSONL of several lines)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _records_key(obj: dict) -> str | None:
    """The key of a JSON object under which a list of records sits (`{"records": [{...}, ...]}`)."""
    return next((k for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)), None)


def _object_problem(obj: dict) -> str:
    """Why a file holding one JSON object is not a record file (a record file is a JSON list of
    records, or JSONL: one record per line; a single-line `.jsonl` file is one record)."""
    if (k := _records_key(obj)) is not None:
        return (f"holds one JSON object with {len(obj[k])} records under '{k}', not a list of records — save that "
                f"list as the file (e.g. `jq -c '.{k}[]' FILE > records.jsonl`) and point data.path at it")
    return ("holds one JSON object, not a list of records — write a JSON list ([{...}, ...]) or JSONL (one record "
            "per line; a one-line .jsonl file is one record)")
