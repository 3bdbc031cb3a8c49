"""`make slurm-test`: sweeps through SLURM, on a one-node cluster this module starts and stops.

Marked `slurm` and skipped unless selected (`pytest -m slurm`): it needs root (or sudo) to install
SLURM and munge when they are absent (`apt-get install slurm-wlm munge`). The cluster lives in a
temporary directory: its own slurm.conf (free ports, one partition holding this machine with its
real CPUs and memory), munge key and socket, state, spool, logs and pid files; munged, slurmctld
and slurmd run in the background until the module ends, pass or fail. Every job goes through
`python -m editbench -m hydra/launcher=slurm ...` on the tiny model with one thread:

(a) a two-job sweep (two values of FT-L's learning rate): both run directories `complete`, with
    rows; its edit time sizes the stream of (b) and (c) to about 70 s of edits on this machine;
(b) a job that runs out of time (`timeout_min=2`, SIGUSR2 `signal_delay_s=60` before the limit,
    which SLURM sends 30-60 s into the job): it checkpoints at the edit it is on, submitit requeues
    it, it resumes at that edit and completes with every metric at every N equal to an
    uninterrupted run of the same config (once it has been requeued from an edit, the test lifts
    its limit to 10 minutes, so the test's length does not depend on the machine's speed);
(c) `scontrol requeue` of the running job (a pre-emption: SLURM sends SIGTERM, then SIGKILL after
    KillWait): the same guarantee;
(d) summary.json, polled throughout (b) and (c): `requeued` whenever the job is not running after
    a stop (never `running` for a job that is not), `complete` at the end;
(e) W&B offline: one run id across the requeues (one `offline-run-*` directory per start), and
    each checkpoint's row in their history exactly once.

The cluster keeps no accounting database, so submitit's job-state poll (`sacct`) is answered by a
stand-in on PATH that reads the same fields from `squeue`. Requeued jobs wait `cred_expire` (10 s
here, SLURM's default 120 s) before they start again. EDITBENCH_SLURM_KEEP=1 keeps the directory.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import read_rows, read_summary  # noqa: E402

pytestmark = pytest.mark.slurm

METRICS = ("N", "rel", "gen", "loc", "op", "n_eval")
# FT-L with no early stop: every edit takes its 100 steps, so the stream's length sets its time
FT = ["model=tiny_llama", "editor=ft", "editor.n_iter=100", "editor.stop_loss=0", "threads=1"]
EDITS_S = 70  # seconds of edits in (b) and (c): past the time limit's SIGUSR2 (30-60 s into the job)
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=editbench", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.stderr_to_stdout=true"]
DEADLINE_S = 600


@pytest.fixture(scope="module", autouse=True)
def selected(request):
    expr = request.config.getoption("markexpr") or ""
    if "slurm" not in expr.replace("not slurm", ""):
        pytest.skip("starts a SLURM cluster (root, apt-get): run it with `make slurm-test` (pytest -m slurm)")


# ----------------------------------------------------------------------------- the cluster
def sbin(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def install_slurm() -> None:
    """apt-get install slurm-wlm munge, when any of their programs is missing."""
    if all(sbin(p) for p in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol")):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and not shutil.which("sudo"):
        pytest.fail("SLURM is not installed and this user cannot install it: run as root, or "
                    "`apt-get install -y slurm-wlm munge` first")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "slurm-wlm", "munge"], check=True, env=env)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


SACCT = """#!/bin/sh
# sacct stand-in (this test cluster keeps no accounting database): submitit's job-state poll,
# `sacct -o JobID,State,NodeList --parsable2 -j ID ...`, answered from squeue
ids=""
while [ $# -gt 0 ]; do
  [ "$1" = "-j" ] && { ids="$ids${ids:+,}$2"; shift; }
  shift
done
echo "JobID|State|NodeList"
[ -n "$ids" ] && exec squeue -h -t all -j "$ids" -o "%i|%T|%N"
"""


class Cluster:
    """One node, this machine: munged, slurmctld and slurmd, everything of theirs under `root`."""

    def __init__(self, root: Path):
        self.root, self.procs = root, []
        self.conf = root / "slurm.conf"

    def env(self, **extra) -> dict:
        bin_dir = self.root / "bin"
        return dict(os.environ, SLURM_CONF=str(self.conf), PATH=f"{bin_dir}:{os.environ['PATH']}:/usr/sbin", **extra)

    def slurm(self, *args: str, check: bool = True) -> str:
        return subprocess.run(args, env=self.env(), capture_output=True, text=True, check=check, timeout=30).stdout

    def start(self) -> None:
        root, user = self.root, pwd_name()
        for d in ("munge", "state", "spool", "log", "bin"):
            (root / d).mkdir(mode=0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = root / "munge" / "munge.sock"
        self.spawn("munged", sbin("munged"), "-F", "--force", f"--key-file={key}", f"--socket={sock}",
                   f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'munged.seed'}",
                   f"--log-file={root / 'log' / 'munged.log'}")
        wait_for(lambda: sock.exists(), 20, "munged's socket")
        node = subprocess.run([sbin("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        ctld_port, d_port = free_ports(2)
        host = node.split()[0].split("=", 1)[1]
        self.conf.write_text(f"""\
ClusterName=editbench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=sched_interval=2,bf_interval=2
DefMemPerCPU=1000
MinJobAge=600
KillWait=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=editbench Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        (root / "bin" / "sacct").write_text(SACCT)
        (root / "bin" / "sacct").chmod(0o755)
        self.spawn("slurmctld", sbin("slurmctld"), "-D", "-f", str(self.conf))
        self.spawn("slurmd", sbin("slurmd"), "-D", "-f", str(self.conf))
        wait_for(lambda: "idle" in self.slurm("sinfo", "-h", "-o", "%T", check=False), 60, "the node to be idle")

    def spawn(self, name: str, *cmd) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs.append(subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env(), start_new_session=True))

    def jobs(self) -> dict[str, str]:
        """job id -> state, for every job slurmctld knows (finished ones for MinJobAge)."""
        out = self.slurm("squeue", "-h", "-t", "all", "-o", "%i|%T", check=False)
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    def stop(self) -> None:
        """Cancel what still runs, wait for its processes to end, then end the three daemons."""
        if self.conf.exists() and len(self.procs) == 3:
            live = [j for j, s in self.jobs().items() if s in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING")]
            if live:
                self.slurm("scancel", *live, check=False)
                wait_for(lambda: not any(s in ("RUNNING", "COMPLETING") for s in self.jobs().values()), 60, None)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def pwd_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def wait_for(cond, timeout_s: float, what: str | None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    if what:
        pytest.fail(f"timed out waiting for {what}")
    return False


# ----------------------------------------------------------------------------- the jobs
@dataclass
class Front:
    """One `python -m editbench -m hydra/launcher=slurm ...` (or a plain run) and what was seen of it."""

    name: str
    out: Path
    proc: subprocess.Popen
    started: float
    ended: float | None = None
    seen: list = field(default_factory=list)  # (seconds, SLURM state, summary status, done) at each change
    requeued_at: float | None = None  # (c): when the test ran `scontrol requeue`

    def submitit(self) -> Path | None:
        return next(self.out.glob("sweeps/**/.submitit"), None)

    def job_ids(self) -> list[str]:
        d = self.submitit()
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d else []

    def run_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.out.rglob("summary.json"))

    def summary(self) -> dict | None:
        try:
            return read_summary(self.run_dirs()[0])
        except (IndexError, OSError, ValueError):
            return None

    def log(self) -> str:
        """The job's log over every start (stdout and stderr, appended across requeues)."""
        (job,) = self.job_ids()
        return (self.submitit() / job / f"{job}_0_log.out").read_text()


def editbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "editbench", *args]


@pytest.fixture(scope="module")
def campaign():
    """Everything at once: the reference run (no SLURM), the sweep (a), then the timed-out job (b)
    and the requeued one (c), polled every half second until all are done."""
    install_slurm()
    root = Path(tempfile.mkdtemp(prefix="eb-slurm-"))  # short: munge's socket path has a length limit
    cluster = Cluster(root)
    fronts: dict[str, Front] = {}
    t0 = time.monotonic()
    try:
        cluster.start()
        print(f"\n[slurm-test] cluster up in {time.monotonic() - t0:.0f}s: {root}")
        env = cluster.env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
                          TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                          EDITBENCH_CACHE=str(root / "cache"), WANDB_MODE="offline", WANDB_DIR=str(root / "wandb"),
                          WANDB_CACHE_DIR=str(root / "wandb" / "cache"),
                          WANDB_CONFIG_DIR=str(root / "wandb" / "config"), WANDB_DATA_DIR=str(root / "wandb" / "data"))
        env.pop("HYDRA_FULL_ERROR", None)
        (root / "wandb").mkdir()
        work = root / "work"  # the working directory: no top-level conf/
        work.mkdir()

        def launch(name: str, *args: str) -> Front:
            out = root / name
            log = open(root / f"{name}.front.log", "w")
            proc = subprocess.Popen(editbench(*args, f"out_dir={out}"), cwd=work, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            fronts[name] = Front(name, out, proc, time.monotonic() - t0)
            return fronts[name]

        sweep = launch("sweep", *SLURM, *FT, "n_edits=12", "editor.lr=0.01,0.02")
        wait_for(lambda: sweep.proc.poll() is not None, DEADLINE_S, "the sweep")
        sweep.ended = time.monotonic() - t0
        # the stream of (b) and (c): EDITS_S of edits at the sweep's pace (two jobs on the node, as now)
        edit_s = max([r["edit_s_mean"] for d in sweep.run_dirs() for r in read_rows(d)] or [0.3])
        n = min(max(int(EDITS_S / edit_s) // 3 * 3, 60), 900)
        stream = [*FT, "editor.lr=0.01", f"n_edits={n}", f"protocol.checkpoints=[{n // 3},{2 * n // 3}]"]
        print(f"[slurm-test] {edit_s * 1e3:.0f} ms/edit in the sweep: streams of {n} edits")
        launch("reference", *stream)
        timeout = launch("timeout", *SLURM, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60",
                         *stream, "logger=wandb")
        preempt = launch("preempt", *SLURM, "hydra.launcher.timeout_min=10", *stream, "logger=wandb")
        running_since, lifted = None, False
        while any(f.proc.poll() is None for f in fronts.values()):
            now = time.monotonic() - t0
            if now > DEADLINE_S:
                late = ", ".join(n for n, f in fronts.items() if f.ended is None)
                pytest.fail(f"not done after {DEADLINE_S}s: {late}")
            jobs = cluster.jobs()
            for f in fronts.values():
                if f.ended is None and f.proc.poll() is not None:
                    f.ended = now
            for f in (timeout, preempt):
                ids, s = f.job_ids(), f.summary()
                state = jobs.get(ids[0], "GONE") if ids else "UNSUBMITTED"
                obs = (state, s and s["status"], s and s["done"])
                if not f.seen or f.seen[-1][1:] != obs:
                    f.seen.append((round(now, 1), *obs))
            state, status = preempt.seen[-1][1:3]
            if preempt.requeued_at is None and state == "RUNNING" and status == "running":
                running_since = running_since or now
                if now - running_since >= 10:  # edits under way: pre-empt it
                    cluster.slurm("scontrol", "requeue", preempt.job_ids()[0])
                    preempt.requeued_at = now
            state, status, done = timeout.seen[-1][1:]
            if not lifted and state == "PENDING" and status == "requeued" and done:  # timed out from an edit
                cluster.slurm("scontrol", "update", f"JobId={timeout.job_ids()[0]}", "TimeLimit=10")
                lifted = True
            time.sleep(0.5)
        for f in fronts.values():
            f.ended = f.ended or time.monotonic() - t0
        restarts = {}
        for f in (timeout, preempt):
            info = cluster.slurm("scontrol", "show", "job", "-o", f.job_ids()[0], check=False)
            m = re.search(r"\bRestarts=(\d+)", info)
            restarts[f.name] = int(m.group(1)) if m else None
        yield {"root": root, "fronts": fronts, "restarts": restarts, "n_edits": n, "wall_s": time.monotonic() - t0}
    finally:
        for f in fronts.values():
            if f.proc.poll() is None:
                os.killpg(f.proc.pid, signal.SIGTERM)
                f.proc.wait(30)
        cluster.stop()
        print(f"[slurm-test] cluster stopped; {time.monotonic() - t0:.0f}s in all")
        if os.environ.get("EDITBENCH_SLURM_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


def front_ok(campaign, name: str) -> Front:
    f = campaign["fronts"][name]
    assert f.proc.returncode == 0, (campaign["root"] / f"{name}.front.log").read_text()[-3000:]
    return f


def metrics(run_dir: Path) -> list[dict]:
    return [{k: r[k] for k in METRICS} for r in read_rows(run_dir)]


def segments(log: str) -> list[dict]:
    """Each start of the job in its log: where it resumed (0: from the start) and where it stopped
    (the edit its stop line names, and the signal), None when it did neither."""
    out = []
    for part in log.split("Starting with JobEnvironment")[1:]:
        resumed = re.search(r"\[editbench\] resuming .* at edit (\d+) ", part)
        stopped = re.search(r"editbench: (?:requeue asked|requeued by SLURM) \((SIG\w+)\) at edit (\d+) of", part)
        out.append({"resumed_at": int(resumed.group(1)) if resumed else 0,
                    "stopped_at": int(stopped.group(2)) if stopped else None,
                    "signal": stopped.group(1) if stopped else None,
                    "completed": "Job completed successfully" in part})
    return out


def check_requeued_run(campaign, name: str, signal_name: str) -> list[dict]:
    """The job completed after at least one stop by `signal_name`; each start resumed exactly where
    the previous one stopped (no edit lost); the metrics equal the uninterrupted run's."""
    f = front_ok(campaign, name)
    (run_dir,) = f.run_dirs()
    segs = segments(f.log())
    report = ", ".join(f"start {i + 1}: from edit {s['resumed_at']}"
                       + ("" if s["stopped_at"] is None else f", stopped by {s['signal']} at edit {s['stopped_at']}")
                       + (", completed" if s["completed"] else "") for i, s in enumerate(segs))
    print(f"\n[slurm-test] {name}: {report}; SLURM restarts {campaign['restarts'][name]}; "
          f"{f.ended - f.started:.0f}s from submission to the end")
    assert len(segs) >= 2 and segs[-1]["completed"] and not any(s["completed"] for s in segs[:-1]), segs
    n = campaign["n_edits"]
    assert any(s["signal"] == signal_name and 0 < s["stopped_at"] < n for s in segs), segs
    for prev, nxt in zip(segs, segs[1:]):
        kept = prev["stopped_at"] if prev["stopped_at"] is not None else prev["resumed_at"]
        assert nxt["resumed_at"] == kept, f"edits lost: stopped at {kept}, resumed at {nxt['resumed_at']}"
    assert campaign["restarts"][name] == len(segs) - 1
    (reference,) = campaign["fronts"]["reference"].run_dirs()
    assert [r["N"] for r in metrics(run_dir)] == grid(n)
    assert metrics(run_dir) == metrics(reference)
    s = read_summary(run_dir)
    assert s["status"] == "complete" and s["done"] == n
    return segs


# ----------------------------------------------------------------------------- the checks
def grid(n: int) -> list[int]:
    return [n // 3, 2 * n // 3, n]


def test_a_two_job_sweep_completes_both_runs(campaign):
    f = front_ok(campaign, "sweep")
    dirs = f.run_dirs()
    assert sorted(d.name.split("editor.lr-", 1)[1].split("+", 1)[0] for d in dirs) == ["0.01", "0.02"]
    for d in dirs:
        assert read_summary(d)["status"] == "complete"
        rows = read_rows(d)
        assert rows and rows[-1]["N"] == 12 and all(k in r for r in rows for k in METRICS)
    print(f"\n[slurm-test] sweep: jobs {', '.join(f.job_ids())}, {f.ended - f.started:.0f}s")


def test_b_a_timed_out_job_checkpoints_is_requeued_and_resumes_exactly(campaign):
    check_requeued_run(campaign, "timeout", "SIGUSR2")


def test_c_scontrol_requeue_of_a_running_job_loses_no_edit(campaign):
    f = campaign["fronts"]["preempt"]
    assert f.requeued_at is not None, "the job never ran with edits under way"
    segs = check_requeued_run(campaign, "preempt", "SIGTERM")
    assert segs[0]["signal"] == "SIGTERM"


@pytest.mark.parametrize("name", ["timeout", "preempt"])
def test_d_summary_says_requeued_while_the_job_waits_and_complete_at_the_end(campaign, name):
    f = front_ok(campaign, name)
    seen = [(state, status) for _, state, status, _ in f.seen]
    started = next(i for i, (state, _) in enumerate(seen) if state == "RUNNING")
    after = seen[started:]
    print(f"\n[slurm-test] {name}: (SLURM state, summary) seen: " +
          " -> ".join(f"{state}/{status}" for state, status in dict.fromkeys(after)))
    assert ("PENDING", "requeued") in after
    assert all(status != "running" for state, status in after if state != "RUNNING"), after
    assert after[-1][1] == "complete"


@pytest.mark.parametrize("name", ["timeout", "preempt"])
def test_e_wandb_keeps_one_run_id_and_logs_each_row_once(campaign, name):
    f = front_ok(campaign, name)
    (run_dir,) = f.run_dirs()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    ids, steps = set(), []
    for d in offline:
        for rec in wandb_records(next(d.glob("run-*.wandb"))):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                ids.add(rec.run.run_id)
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                if "N" in items:
                    steps.append(items["N"])
    print(f"\n[slurm-test] {name}: W&B run {sorted(ids)}, {len(offline)} offline directories, rows at N={steps}")
    assert len(offline) >= 2  # one per start of the run
    assert len(ids) == 1
    assert steps == grid(campaign["n_edits"])  # each checkpoint once, in order, across the requeues


def wandb_records(path: Path):
    """The records of a W&B transaction log (`run-*.wandb`): a 7-byte header (":W&B", magic,
    version), then LevelDB-log records in 32 KiB blocks (crc32, length, type: full, first,
    middle, last), each a serialized `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, head = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", path
    i, buf = head, b""
    while i + head <= len(data):
        left = block - i % block
        if left < head:
            i += left
            continue
        _, length, kind = struct.unpack("<IHB", data[i:i + head])
        if kind == 0:  # padding to the block's end
            i += left
            continue
        chunk, i = data[i + head:i + head + length], i + head + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec
