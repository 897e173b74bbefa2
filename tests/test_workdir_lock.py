"""One training run per workdir: the lock file, its stale cases, and two real runs on one workdir."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from etils import epath

from mcm_jax.run import workdir_lock
from mcm_jax.run.workdir_lock import LOCK_FILE, WorkdirLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_holder(workdir, **changes):
    """A lock file as another run would have written it (this process's identity, changed)."""
    record = {**workdir_lock._this_process(), "started": time.time(), "heartbeat": time.time()}
    record.update(changes)
    path = epath.Path(workdir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def _ended_process() -> tuple[int, float]:
    """The pid and start time of a process that has ended."""
    process = subprocess.Popen(["true"])
    started = psutil.Process(process.pid).create_time()
    process.wait()
    return process.pid, started


def test_a_second_holder_is_refused_while_the_first_holds_it(tmp_path):
    with WorkdirLock(str(tmp_path)):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(FileExistsError) as refused:
            WorkdirLock(str(tmp_path)).__enter__()
        message = str(refused.value)
        assert message.startswith(
            f"{tmp_path} is in use by another run: host {holder['host']}, pid {os.getpid()}, "
            "started "
        )
        assert "use another --workdir" in message
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end of the run
    with WorkdirLock(str(tmp_path)):  # and free again
        pass


@pytest.mark.parametrize(
    "holder, gone",
    [
        ("ended_process", True),
        ("reused_pid", True),  # the pid runs, but it is another program
        ("same_slurm_job", True),
        ("other_host_stale", True),
        ("other_host_alive", False),
        ("unreadable", True),
    ],
)
def test_a_lock_is_taken_over_only_when_its_run_is_gone(tmp_path, monkeypatch, holder, gone):
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    if holder == "ended_process":
        pid, started = _ended_process()
        _write_holder(tmp_path, pid=pid, pid_started=started, slurm_job="40")
    elif holder == "reused_pid":
        _write_holder(tmp_path, pid_started=12.0, slurm_job="40")
    elif holder == "same_slurm_job":
        _write_holder(tmp_path, host="node-7", slurm_job="41")
    elif holder == "other_host_stale":
        old = time.time() - workdir_lock.STALE_SECONDS - 5
        _write_holder(tmp_path, host="node-7", slurm_job="40", heartbeat=old)
    elif holder == "other_host_alive":
        _write_holder(tmp_path, host="node-7", slurm_job="40")
    else:
        (tmp_path / LOCK_FILE).write_text('{"host": "node-')  # cut short
    if not gone:
        with pytest.raises(FileExistsError, match="host node-7, pid"):
            WorkdirLock(str(tmp_path)).__enter__()
        return
    with WorkdirLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.05)
    with WorkdirLock(str(tmp_path)):
        first = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] > first


def test_the_lock_on_gcs(gcs_emulator, gcs_dir):
    with WorkdirLock(str(gcs_dir)):
        assert (gcs_dir / LOCK_FILE).exists()
        with pytest.raises(FileExistsError, match="is in use by another run"):
            WorkdirLock(str(gcs_dir)).__enter__()
    assert not (gcs_dir / LOCK_FILE).exists()


def _train_command(workdir, data_dir, num_steps):
    return [
        sys.executable, "-m", "mcm_jax.main", "--config=configs/digits_diffusion.py:model=tiny",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        "--config.training.batch_size=16", "--config.training.sample_every=0",
        "--config.training.log_every=5", "--config.training.checkpoint_every=5",
        f"--config.training.num_steps={num_steps}",
    ]


@pytest.mark.slow
def test_a_second_run_on_a_workdir_is_refused_and_a_killed_runs_lock_is_taken(
    tmp_path, digits_data_dir
):
    workdir, log = tmp_path / "run", tmp_path / "first.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(
            _train_command(workdir, digits_data_dir, 100_000), cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 300
        while not (workdir / "checkpoints" / "5").exists():
            assert first.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        second = subprocess.run(
            _train_command(workdir, digits_data_dir, 10), cwd=ROOT, capture_output=True,
            text=True, timeout=300,
        )
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert second.returncode == 1 and len(errors) == 1, second.stderr[-3000:]
        assert f"is in use by another run: host {os.uname().nodename}, pid {first.pid}," in errors[0]
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)  # killed: it cannot remove its lock
        first.wait()
    assert (workdir / LOCK_FILE).exists()
    resumed = subprocess.run(
        _train_command(workdir, digits_data_dir, 10), cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"taking over {workdir / LOCK_FILE} from an earlier run: process {first.pid} has ended" in resumed.stderr
    assert not (workdir / LOCK_FILE).exists()
