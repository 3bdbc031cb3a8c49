"""The common edit record every dataset adapter produces, and JSON/JSONL reading."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from editbench.errors import EditbenchError


@dataclass(frozen=True)
class EditRecord:
    id: str
    prompt: str  # the edit question
    target: str  # the answer the edit must produce
    rephrase: str  # paraphrase of the prompt (generalization)
    loc_prompt: str  # unrelated prompt (locality)
    loc_answer: str  # its reference answer (sets the decode length; agreement is with the pre-edit model)
    subject: str = ""
    extra: dict = field(default_factory=dict)  # dataset-specific prompts (portability, multi-hop, ...)


def load_json_records(path: str | Path, what: str) -> list[dict]:
    """Read a JSON list or a JSONL file; one-line errors for a missing or unparsable file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EditbenchError(f"{what}: data file not found: {p} — check data.path (or omit it to use the packaged data)")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise EditbenchError(f"{what}: {p} is not valid JSON (line {e.lineno}: {e.msg}) — fix or replace the file") from None
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
    return rows
