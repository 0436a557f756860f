"""The web UI's job runner on real `tunery train` processes (tiny model): progress, abort, failure, reattach.

Each job is started exactly as the Train tab starts it (``start_job`` with
``["train", CONFIG]``), so these tests cover the process management, the
supervisor's exit status and the files the UI reads, without a browser.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_tiny import REPO_ROOT, run_config, save_tiny_model, write_config

from tunery.train.checkpoint import list_checkpoints
from tunery.webui.runner import (
    Job,
    JobRegistry,
    abort_job,
    abort_latest,
    error_line,
    job_state,
    log_tail,
    read_progress,
    start_job,
    wait_for,
)

WAIT_S = 240  # a hang guard, not a timing assertion


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("webui-runner") / "model")


@pytest.fixture(autouse=True)
def quiet_private_home(tmp_path, monkeypatch):
    """Jobs inherit the environment: a private cache folder and one thread each (2 shared cores)."""
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT / "src"))


def start_training(registry: JobRegistry, tmp_path: Path, model_dir: Path, **keys):
    output_dir = tmp_path / "run"
    config = write_config(tmp_path / "training_args.yaml", run_config(model_dir, output_dir, **keys))
    return start_job(registry, "train", ["train", str(config)], config, output_dir, output_dir / "train.log")


def test_a_run_reports_progress_and_finishes(tmp_path, model_dir):
    registry = JobRegistry(tmp_path / "jobs")
    job = start_training(registry, tmp_path, model_dir, max_steps=4)
    assert job_state(registry, job).state == "running"
    assert registry.latest("train").id == job.id
    assert job.command == ["tunery", "train", str(tmp_path / "training_args.yaml")]

    state = wait_for(registry, job, WAIT_S)
    assert (state.state, state.returncode) == ("finished", 0)
    progress = read_progress(job.output_dir)
    assert (progress.step, progress.total, progress.percentage) == (4, 4, 100.0)
    assert [step for step, _ in progress.losses] == [1, 2, 3, 4]
    assert all(loss > 0 for _, loss in progress.losses)
    assert progress.elapsed and progress.remaining == "0:00:00"
    assert "Done:" in log_tail(job.log_path)
    assert (Path(job.output_dir) / "adapter_model.safetensors").is_file()


def test_abort_stops_the_run_and_keeps_a_checkpoint(tmp_path, model_dir):
    registry = JobRegistry(tmp_path / "jobs")
    job = start_training(registry, tmp_path, model_dir, max_steps=100_000, save_steps=100_000)
    deadline = time.monotonic() + WAIT_S
    while read_progress(job.output_dir).step < 2 and time.monotonic() < deadline:
        assert job_state(registry, job).running, log_tail(job.log_path)
        time.sleep(0.2)
    assert abort_latest(registry, job.kind)  # what the Abort buttons call: the newest job of its kind

    state = wait_for(registry, job, WAIT_S)
    assert (state.state, state.returncode) == ("aborted", 130)
    checkpoints = list_checkpoints(job.output_dir)
    assert checkpoints, log_tail(job.log_path)
    step = int(checkpoints[-1].name.split("-")[-1])
    assert 2 <= step < 100_000
    assert not abort_job(registry, job)  # nothing left to stop
    assert not abort_latest(registry, job.kind)


def test_a_failed_run_shows_its_error_line(tmp_path, model_dir):
    registry = JobRegistry(tmp_path / "jobs")
    job = start_training(registry, tmp_path, model_dir, dataset="no_such_dataset")
    state = wait_for(registry, job, WAIT_S)
    assert (state.state, state.returncode) == ("failed", 2)
    assert state.error.startswith("error: Unknown dataset 'no_such_dataset'")
    assert read_progress(job.output_dir).total == 0  # no bar to freeze: nothing was logged


def test_a_restarted_server_reattaches_to_a_job_it_did_not_start(tmp_path, model_dir):
    """Start the job from another process that exits at once, as a server that was stopped would."""
    output_dir = tmp_path / "run"
    config = write_config(tmp_path / "training_args.yaml", run_config(model_dir, output_dir, max_steps=3))
    starter = (
        "import sys; from tunery.webui.runner import JobRegistry, start_job; "
        "start_job(JobRegistry(sys.argv[1]), 'train', ['train', sys.argv[2]], sys.argv[2], sys.argv[3], "
        "sys.argv[3] + '/train.log')"
    )
    subprocess.run([sys.executable, "-c", starter, str(tmp_path / "jobs"), str(config), str(output_dir)],
                   check=True, timeout=60)

    registry = JobRegistry(tmp_path / "jobs")  # what a new server reads
    job = registry.latest("train")
    assert job is not None and job.output_dir == str(output_dir)
    assert job_state(registry, job).state in ("running", "finished")
    state = wait_for(registry, job, WAIT_S)
    assert state.state == "finished", log_tail(job.log_path)
    assert read_progress(job.output_dir).percentage == 100.0


def test_a_damaged_registry_forgets_jobs_instead_of_failing(tmp_path):
    registry = JobRegistry(tmp_path)
    (tmp_path / "jobs.json").write_text("{not json")
    assert registry.jobs() == [] and registry.latest("train") is None
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": [{"id": "x"}]}))
    assert registry.jobs() == []


def test_log_tail_shows_progress_bars_as_a_terminal_does(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("loading\ntrain:  10%|#  | 1/10\rtrain:  20%|## | 2/10\r\x1b[31mred\x1b[0m\nlast line\n")
    assert log_tail(log) == "loading\nred\nlast line"
    assert log_tail(log, lines=1) == "last line"
    assert log_tail(tmp_path / "missing.log") == ""


def test_error_line_prefers_tunery_errors_then_tracebacks():
    log = "x\nerror: bad key 'lora_rnak'\nTraceback\nValueError: y"
    assert error_line(log) == "error: bad key 'lora_rnak'"
    assert error_line("Traceback (most recent call last):\n  File x\nRuntimeError: out of memory") == \
        "RuntimeError: out of memory"
    assert error_line("all good") == ""



def wait_for_command_line(pid: int, timeout: float = 10.0) -> None:
    """Popen returns once exec has begun; Linux fills in the new command line a moment later
    (reading it in between gives b''). A real supervisor is checked this way only long after."""
    deadline = time.monotonic() + timeout
    while not Path(f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_job_that_wrote_its_status_is_not_signalled_while_its_supervisor_exits(tmp_path):
    # the window between the supervisor writing status.json and exiting: a stand-in process
    # whose command line names the status file, as the real supervisor's does
    registry = JobRegistry(tmp_path / "jobs")
    job = Job(id="train-1", kind="train", command=["tunery", "train"], config_path="", output_dir="",
              log_path=str(tmp_path / "log"), pid=0, started=time.time())
    status_path = registry.status_path(job)
    status_path.parent.mkdir(parents=True)
    # (a Python process: `sh -c "sleep 30"` may exec sleep and lose the status path from its command line)
    stand_in = [sys.executable, "-c", "import time; time.sleep(30)", str(status_path.resolve())]
    supervisor = subprocess.Popen(stand_in)
    try:
        wait_for_command_line(supervisor.pid)
        job.pid = supervisor.pid
        registry.add(job)
        assert job_state(registry, job).running
        status_path.write_text(json.dumps({"returncode": 130, "ended": time.time()}))
        assert (job_state(registry, job).state, job_state(registry, job).returncode) == ("aborted", 130)
        assert not abort_job(registry, job)
        assert supervisor.poll() is None  # no SIGINT was sent
    finally:
        supervisor.kill()
        supervisor.wait()


def test_abort_latest_has_nothing_to_stop_without_a_running_job(tmp_path):
    assert not abort_latest(JobRegistry(tmp_path / "jobs"), "train")


def test_the_curve_adds_the_mean_reward_of_rl_runs(tmp_path):
    from tunery.webui import t
    from tunery.webui.train_tab import loss_frame

    entries = [{"current_steps": step, "total_steps": 2, "loss": 0.01 * step, "reward/mean": step / 4}
               for step in (1, 2)]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    progress = read_progress(tmp_path)
    assert progress.rewards == [(1, 0.25), (2, 0.5)]
    frame = loss_frame(progress, "en")
    rewards = frame[frame["curve"] == t("train.curve_reward", "en")]
    assert rewards["step"].tolist() == [1, 2] and rewards["loss"].tolist() == [0.25, 0.5]
