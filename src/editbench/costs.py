"""What editing costs: per-edit wall time and memory, measured around `editor.edit` by whoever
edits (the runner, the benchmark), never by the editors themselves."""
from __future__ import annotations

import resource
import time

import torch


def resident_gb(device: torch.device) -> float:
    """Memory held now: allocated on every visible GPU (CUDA), else this process's resident set."""
    if device.type == "cuda":
        return sum(torch.cuda.memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**30
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


class Costs:
    """Per-edit wall time and memory: `with costs: editor.edit(...)`.

    CUDA: the peak of memory allocated during an edit, summed over all visible devices (max over
    edits), and memory allocated now. CPU: no per-edit peak is measurable without a sampler, so
    only the resident set now and its growth over `baseline_gb` (the resident set just before the
    editor was built: model, data, unedited reference outputs) are reported."""

    def __init__(self, device: torch.device, baseline_gb: float = 0.0):
        self.device = device
        self.cuda = device.type == "cuda"
        self.edit_s: list[float] = []
        self.peak_gb = 0.0
        self.baseline_gb = baseline_gb

    def _devices(self) -> range:
        return range(torch.cuda.device_count())

    def __enter__(self):
        if self.cuda:
            for d in self._devices():
                torch.cuda.synchronize(d)
                torch.cuda.reset_peak_memory_stats(d)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            if self.cuda:
                for d in self._devices():
                    torch.cuda.synchronize(d)
                peak = sum(torch.cuda.max_memory_allocated(d) for d in self._devices()) / 2**30
                self.peak_gb = max(self.peak_gb, peak)
            self.edit_s.append(time.perf_counter() - self.t0)

    def resident_gb(self) -> float:
        return resident_gb(self.device)

    def row(self) -> dict:
        resident = self.resident_gb()
        return {"mem_device": "cuda" if self.cuda else "cpu", "peak_mem_gb": self.peak_gb if self.cuda else None,
                "resident_mem_gb": resident, "mem_growth_gb": resident - self.baseline_gb}
