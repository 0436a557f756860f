"""Jobs the web UI runs as separate `tunery` processes, and what they report; no Gradio here.

``start_job`` runs ``python -m tunery <command> CONFIG`` under ``supervise`` in a
session of its own, with its output going to a log file: the page stays
responsive, closing the browser (or stopping the web UI) does not stop the job,
and ``abort_job`` stops it with SIGINT (training then saves a resumable
checkpoint and exits with status 130).

Every job is recorded in ``<jobs_dir>/jobs.json`` (``$TUNERY_HOME/webui`` by
default): id, kind, pid, command, config, output folder, log, started. A page
that is reloaded, or a server that is restarted, finds the latest job there and
reattaches: ``job_state`` says whether it still runs, finished, failed (with the
error line of its log) or was aborted; ``read_progress`` reads its
``trainer_log.jsonl``; ``log_tail`` shows the end of its log.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunery.env import tunery_home
from tunery.fileio import write_text_atomic
from tunery.train.callbacks import LOG_FILE

JOBS_FILE = "jobs.json"
KEEP_JOBS = 50  # older records are dropped; their output folders stay
ABORT_MARK = "abort-requested"
INTERRUPTED = (130, 143)  # exit statuses of a run stopped by SIGINT / SIGTERM
TAIL_BYTES = 64 * 1024
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ERROR_LINE = re.compile(r"^(error: .+|[\w.]*(Error|Exception|Interrupt)\b.*)$")

_children: dict[int, subprocess.Popen] = {}  # jobs this process started, so their exits are reaped
_children_lock = threading.Lock()


def default_jobs_dir() -> Path:
    return tunery_home() / "webui"


@dataclass
class Job:
    """One job as recorded in jobs.json."""

    id: str
    kind: str  # train | predict | compare | ...
    command: list[str]  # the command as a user would type it: ["tunery", "train", "CONFIG.yaml"]
    config_path: str
    output_dir: str
    log_path: str
    pid: int
    started: float
    cwd: str = ""

    def folder(self, jobs_dir: Path) -> Path:
        return Path(jobs_dir) / "jobs" / self.id


@dataclass
class JobState:
    """Where a job stands: running, finished, failed or aborted."""

    state: str
    returncode: int | None = None
    error: str = ""  # a failed job's error line

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass
class Progress:
    """What ``trainer_log.jsonl`` says so far."""

    step: int = 0
    total: int = 0
    percentage: float = 0.0
    elapsed: str = ""
    remaining: str = ""
    epoch: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    rewards: list[tuple[int, float]] = field(default_factory=list)  # reward/mean of the RL stages


# ----- the registry -------------------------------------------------------------------------------


class JobRegistry:
    """``jobs.json`` in ``jobs_dir``: the jobs started from the web UI, oldest first."""

    def __init__(self, jobs_dir: str | Path | None = None):
        self.root = Path(jobs_dir) if jobs_dir else default_jobs_dir()
        self.path = self.root / JOBS_FILE
        self.lock = threading.Lock()

    def jobs(self) -> list[Job]:
        try:
            records = json.loads(self.path.read_text(encoding="utf-8")).get("jobs", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            return []  # a missing or damaged registry only forgets old jobs
        fields = set(Job.__dataclass_fields__)
        return [Job(**{k: v for k, v in record.items() if k in fields}) for record in records
                if isinstance(record, dict) and fields - {"cwd"} <= set(record)]

    def add(self, job: Job) -> None:
        with self.lock:
            jobs = [*self.jobs(), job][-KEEP_JOBS:]
            self.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({"jobs": [asdict(j) for j in jobs]}, indent=1) + "\n")

    def latest(self, kinds: str | tuple[str, ...]) -> Job | None:
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        found = [job for job in self.jobs() if job.kind in kinds]
        return found[-1] if found else None

    def status_path(self, job: Job) -> Path:
        return job.folder(self.root) / "status.json"


# ----- starting, stopping, watching ---------------------------------------------------------------


def start_job(registry: JobRegistry, kind: str, args: list[str], config_path: str | Path,
              output_dir: str | Path, log_path: str | Path) -> Job:
    """Start ``tunery <args...>`` as a supervised process; record and return the job."""
    job_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder = registry.root / "jobs" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    status_path = folder / "status.json"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "tunery.webui.supervise", str(status_path.resolve()), "--",
            sys.executable, "-m", "tunery", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log shows progress as it happens
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    with _children_lock:
        _children[process.pid] = process
    job = Job(id=job_id, kind=kind, command=["tunery", *args], config_path=str(config_path),
              output_dir=str(output_dir), log_path=str(log_path), pid=process.pid, started=time.time(),
              cwd=os.getcwd())
    registry.add(job)
    return job


def is_alive(job: Job, status_path: Path) -> bool:
    """Whether the job's supervisor still runs (checked by its command line, so a reused pid is not it)."""
    with _children_lock:
        child = _children.get(job.pid)
    if child is not None:
        return child.poll() is None  # polling also reaps a finished child
    if Path("/proc/self").exists():  # Linux: the pid must still be this job's supervisor
        try:
            cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
            return str(status_path.resolve()) in cmdline
        except OSError:
            return False
    try:
        os.kill(job.pid, 0)
    except OSError:
        return False
    return True


def job_state(registry: JobRegistry, job: Job) -> JobState:
    """Running, finished, failed (with its error line) or aborted."""
    status_path = registry.status_path(job)
    alive = is_alive(job, status_path)
    status = read_status(status_path)
    aborted = (job.folder(registry.root) / ABORT_MARK).exists()
    if status is None:
        if alive:
            return JobState("running")
        if aborted:
            return JobState("aborted")
        return JobState("failed", None, error_line(log_tail(job.log_path, 200)) or "")
    code = status.get("returncode")
    if code == 0:
        return JobState("finished", 0)
    if aborted or code in INTERRUPTED:
        return JobState("aborted", code)
    return JobState("failed", code, error_line(log_tail(job.log_path, 200)))


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def abort_job(registry: JobRegistry, job: Job) -> bool:
    """Ask a running job to stop (SIGINT: training saves a checkpoint first); False if it had ended."""
    status_path = registry.status_path(job)
    # A written status means the command has ended, even while its supervisor is still exiting.
    if read_status(status_path) is not None or not is_alive(job, status_path):
        return False
    (job.folder(registry.root) / ABORT_MARK).touch()
    try:
        os.kill(job.pid, signal.SIGINT)
    except OSError:
        return False
    return True


def abort_latest(registry: JobRegistry, kinds: str | tuple[str, ...]) -> bool:
    """Abort the newest job of ``kinds``; False when there is none still running."""
    job = registry.latest(kinds)
    return job is not None and abort_job(registry, job)


def wait_for(registry: JobRegistry, job: Job, timeout: float, poll: float = 0.2) -> JobState:
    """Wait until the job ends or ``timeout`` seconds pass; its state then."""
    deadline = time.monotonic() + timeout
    state = job_state(registry, job)
    while state.running and time.monotonic() < deadline:
        time.sleep(poll)
        state = job_state(registry, job)
    return state


# ----- what a job wrote ---------------------------------------------------------------------------


def read_progress(output_dir: str | Path) -> Progress:
    """Step, percentage, times and the loss curve from ``output_dir/trainer_log.jsonl``."""
    path = Path(output_dir) / LOG_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return Progress()
    progress = Progress()
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # the line being written right now
            continue
        step = int(entry.get("current_steps", 0))
        if "loss" in entry:
            progress.losses.append((step, float(entry["loss"])))
        if "eval_loss" in entry:
            progress.eval_losses.append((step, float(entry["eval_loss"])))
        if "reward/mean" in entry:
            progress.rewards.append((step, float(entry["reward/mean"])))
        progress.step, progress.total = step, int(entry.get("total_steps", progress.total))
        progress.percentage = float(entry.get("percentage", progress.percentage))
        progress.elapsed = entry.get("elapsed_time", progress.elapsed)
        progress.remaining = entry.get("remaining_time", progress.remaining)
        progress.epoch = entry.get("epoch", progress.epoch)
    return progress


def log_tail(log_path: str | Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log as a terminal would show them (progress bars redrawn in place)."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    shown = [visible_text(line) for line in data.split("\n")]
    return "\n".join([line for line in shown if line][-lines:])


def visible_text(line: str) -> str:
    """What a terminal shows of a line a progress bar rewrote with carriage returns: the last version."""
    versions = [part for part in line.split("\r") if part.strip()]
    return ANSI.sub("", versions[-1]).rstrip() if versions else ""


def error_line(log_text: str) -> str:
    """The line that says why a job failed: `error: ...` from Tunery, else a traceback's last line."""
    matches = [line.strip() for line in log_text.splitlines() if ERROR_LINE.match(line.strip())]
    errors = [line for line in matches if line.startswith("error: ")]
    return (errors or matches or [""])[-1]
