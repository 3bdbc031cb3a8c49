"""Dataset adapters: each turns one benchmark's records into a stream of `EditRecord`s."""
from editbench.data.records import EditRecord, load_json_records

__all__ = ["EditRecord", "load_json_records"]
