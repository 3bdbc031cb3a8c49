"""What produced a result row: the config's identity (`config_hash`, without the keys that do not
change what a run computes), the code (`git_hash`, `code_version`, which a resumed run must match),
the library versions and the hardware (bit-exact re-runs need the same CPU instruction set)."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from editbench import __version__

#: top-level keys that do not change what a run computes (left out of `config_hash`)
RUNTIME_KEYS = ("resume", "out_dir", "logger", "tag", "threads", "cache_dir", "cache_max_gb", "save_every_min",
                "keep_checkpoints", "diagnostics")


def config_hash(cfg: DictConfig) -> str:
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in RUNTIME_KEYS:
        d.pop(k, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_hash() -> str:
    """The commit of the code that runs (12 hex digits), '-dirty' when the package's sources differ
    from it; 'unknown' outside a git checkout."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        head = out.stdout.strip()
        if not head:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True,
                               timeout=5).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version() -> str:
    """What a resumed run must match: the package version and the git commit."""
    return f"{__version__}+{git_hash()}"


def versions() -> dict:
    import transformers

    return {"editbench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def hardware(device: torch.device) -> dict:
    """What the numbers were computed on: floating-point kernels differ by CPU instruction set and
    GPU, so a bit-exact re-run needs the same `cpu_capability` (and GPU), not only the versions."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "gpu": gpu}
