"""Dataset adapters: each turns one benchmark's records into a stream of `EditCase`s."""
from editbench.data.records import EditCase, EditRequest, Probe, ProbeSet, load_json_records

__all__ = ["EditCase", "EditRequest", "Probe", "ProbeSet", "load_json_records"]
