"""Result sinks besides the files (which are always written): none, or Weights & Biases.

W&B runs offline unless `logger.mode=online` (the default mode is `WANDB_MODE` from the environment
when set, see conf/logger/wandb.yaml); its run id is derived from the run directory and the config
hash, so a resumed run (a stop, a SLURM requeue) keeps logging into the same W&B run. The rows it
logged are listed in the run directory (`wandb/editbench-logged.json`: step and time of each row), so
a resumed run logs only the rows that this W&B run does not have; offline, each process writes its
own `offline-run-*` directory of the one run id, and `wandb sync` joins them with no row twice.
Online, the API key and the server are
checked before the model loads (`check_environment`): without them `wandb.init` would retry for
minutes and then fail mid-run.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from editbench.errors import EditbenchError


class NullLogger:
    def start(self, run_dir: Path, config: dict, config_hash: str) -> None: ...

    def log(self, row: dict) -> None: ...

    def finish(self, run_dir: Path) -> None: ...

    def stop(self) -> None: ...


class WandbLogger:
    def __init__(self, project: str = "editbench", mode: Literal["offline", "online", "disabled"] = "offline",
                 entity: str | None = None,
                 group: str | None = None, log_report: bool = True):
        self.kw = {"project": project, "mode": mode, "entity": entity, "group": group}
        self.log_report = log_report
        self.run = None
        self.logged: dict[str, str | None] = {}  # step (N) -> time of the row this W&B run has for it
        self.logged_path: Path | None = None

    @classmethod
    def check_environment(cls, values: dict) -> None:
        """Online: an API key (WANDB_API_KEY or `wandb login`'s ~/.netrc) and a reachable server."""
        if values.get("mode") != "online":
            return
        import netrc
        import socket

        url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
        host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
        key = os.environ.get("WANDB_API_KEY")
        if not key:
            try:
                key = (netrc.netrc(os.environ.get("NETRC")).authenticators(host) or (None, None, None))[2]
            except (OSError, netrc.NetrcParseError):
                key = None
        offline = "or use logger.mode=offline and `wandb sync` the run later"
        if not key:
            raise EditbenchError(f"logger.mode=online but there is no W&B API key (WANDB_API_KEY, or ~/.netrc from "
                                 f"`wandb login`) — log in, {offline}")
        try:
            socket.create_connection((host, port), timeout=10).close()
        except OSError as e:
            raise EditbenchError(f"logger.mode=online but the W&B server {host}:{port} cannot be reached "
                                 f"({e.strerror or e}) — {offline}") from None

    def start(self, run_dir: Path, config: dict, config_hash: str) -> None:
        import wandb

        env = os.environ.get("WANDB_MODE")
        if env and env != self.kw["mode"]:
            print(f"[editbench] logger.mode={self.kw['mode']} overrides WANDB_MODE={env} from the environment")

        run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10] + "-" + config_hash[:6]
        self.logged_path = Path(run_dir) / "wandb" / "editbench-logged.json"
        try:
            logged = json.loads(self.logged_path.read_text())
            self.logged = dict(logged["rows"]) if logged.get("id") == run_id else {}
        except (OSError, ValueError, KeyError, TypeError):
            self.logged = {}
        self.run = wandb.init(id=run_id, resume="allow", dir=str(run_dir), config=config, **self.kw)

    def log(self, row: dict) -> None:
        from editbench.checkpoint import atomic_write_text

        step = str(row["N"])
        if step in self.logged and self.logged[step] == row.get("time"):  # logged before a stop or a requeue
            return
        flat = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(flat, step=row["N"], commit=True)  # written now: a row held for the next step dies with a kill
        self.logged[step] = row.get("time")
        atomic_write_text(self.logged_path, json.dumps({"id": self.run.id, "rows": self.logged}) + "\n")

    def stop(self) -> None:
        """The run stopped at a signal: end this process's part of the W&B run now, marked
        preempting, while W&B's service process still runs (SLURM's requeue sends it SIGTERM too);
        the next start resumes the run. A service already gone (it got the SIGTERM) is left be."""
        if self.run is None:
            return
        import wandb

        try:
            self.run.mark_preempting()
            self.run.finish(exit_code=1)
            wandb.teardown()
        except Exception:
            pass
        self.run = None

    def finish(self, run_dir: Path) -> None:
        if self.run is None:
            return
        if self.log_report:
            from editbench import report

            report.log_to_wandb(self.run, run_dir, Path(run_dir) / "report")
        self.run.finish()
