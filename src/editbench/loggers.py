"""Result sinks besides the files (which are always written): none, or Weights & Biases.

W&B runs offline unless `logger.mode=online`; its run id is derived from the run directory and the
config hash, so a resumed run keeps logging into the same W&B run.
"""
from __future__ import annotations

import hashlib
from typing import Literal
from pathlib import Path


class NullLogger:
    def start(self, run_dir: Path, config: dict, config_hash: str) -> None: ...

    def log(self, row: dict) -> None: ...

    def finish(self, run_dir: Path) -> None: ...


class WandbLogger:
    def __init__(self, project: str = "editbench", mode: Literal["offline", "online", "disabled"] = "offline",
                 entity: str | None = None,
                 group: str | None = None, log_report: bool = True):
        self.kw = {"project": project, "mode": mode, "entity": entity, "group": group}
        self.log_report = log_report
        self.run = None

    def start(self, run_dir: Path, config: dict, config_hash: str) -> None:
        import wandb

        run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10] + "-" + config_hash[:6]
        self.run = wandb.init(id=run_id, resume="allow", dir=str(run_dir), config=config, **self.kw)

    def log(self, row: dict) -> None:
        flat = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(flat, step=row["N"])

    def finish(self, run_dir: Path) -> None:
        if self.run is None:
            return
        if self.log_report:
            from editbench import report

            report.log_to_wandb(self.run, run_dir, Path(run_dir) / "report")
        self.run.finish()
