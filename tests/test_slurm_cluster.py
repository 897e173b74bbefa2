"""launch/slurm.sh on a real SLURM cluster: Debian's munge and slurm-wlm (22.05 on Debian 12),
installed and started on this machine as a one-node cluster by tests/slurm/cluster.sh.

One --requeue job, 2 tasks of the tiny digits teacher (CPU partition, gloo), goes through the
three ways a job is stopped: the time limit (SLURM signals the batch shell, which has the tasks save
and requeues the job), `scontrol requeue`, and `scancel`. Periodic checkpoints are off, so every
saved step is the signal's. Skipped only where no cluster can run: not root, or the packages
missing and no apt-get to install them.
"""

import math
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "tests", "slurm", "cluster.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sh")
NO_CLUSTER = 77  # cluster.sh install: not root, or no packages and no apt-get
SIGNAL_MARGIN = 90  # seconds; SLURM sends the signal 90 to 120 s before the time limit
ENDED = ("FAILED", "COMPLETED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "DEADLINE")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """The environment of a client of a running one-node cluster (SLURM_CONF); the daemons and
    any job left are stopped afterwards, also when the test fails."""
    install = subprocess.run([CLUSTER, "install"], capture_output=True, text=True, timeout=900)
    if install.returncode == NO_CLUSTER:
        pytest.skip(install.stderr.strip())
    assert install.returncode == 0, install.stderr
    directory = tmp_path_factory.mktemp("slurm")
    try:
        start = subprocess.run([CLUSTER, "start", str(directory)], capture_output=True, text=True,
                               timeout=120)
        assert start.returncode == 0, start.stderr
        yield dict(os.environ, SLURM_CONF=str(directory / "slurm.conf"))
    finally:
        subprocess.run([CLUSTER, "stop", str(directory)], timeout=180)


def _slurm(env, *args) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def _job(env, job_id) -> dict[str, str]:
    """`scontrol show job`'s fields (JobState, Restarts, RunTime, ...)."""
    return dict(re.findall(r"(\w+)=(\S*)", _slurm(env, "scontrol", "show", "job", job_id)))


def _read(path) -> str:
    return path.read_text() if path.exists() else ""


class Job:
    """A submitted job: its files in the log dir, and waiting for its states and log lines."""

    def __init__(self, env, job_id, log_dir, deadline):
        self.env, self.id, self.log_dir, self.deadline = env, job_id, log_dir, deadline

    def task0(self, attempt):
        return self.log_dir / f"digits-{self.id}-attempt{attempt}-task0.out"

    def batch_log(self, attempt) -> str:
        """The batch log's section of one attempt."""
        sections = _read(self.log_dir / f"digits-{self.id}.out").split("=== job ")
        return "".join(s for s in sections if s.startswith(f"{self.id} attempt {attempt} "))

    def diagnosis(self) -> str:
        logs = sorted(self.log_dir.glob(f"digits-{self.id}*.out"))
        tails = "\n".join(f"--- {p.name}\n{_read(p)[-3000:]}" for p in logs)
        return f"job {_job(self.env, self.id)}\n{tails}"

    def wait(self, what, condition):
        while not (found := condition()):
            assert time.time() < self.deadline, f"timed out waiting for {what}\n{self.diagnosis()}"
            state = _job(self.env, self.id)["JobState"]
            assert state not in ENDED, f"the job ended ({state}) while waiting for {what}\n{self.diagnosis()}"
            time.sleep(1)
        return found

    def wait_for_step(self, attempt, pattern) -> int:
        """The step in the first line of task 0's log of `attempt` that matches `pattern`."""
        match = self.wait(
            f"'{pattern}' in {self.task0(attempt).name}",
            lambda: re.search(pattern, _read(self.task0(attempt))),
        )
        return int(match.group(1))

    def wait_for_training(self, attempt, after) -> None:
        """Until task 0 logs metrics of a step after `after` (training, not compiling)."""
        self.wait(
            f"a metric line after step {after} in {self.task0(attempt).name}",
            lambda: any(int(s) > after for s in re.findall(r"\[(\d+)\] examples_per_sec=",
                                                          _read(self.task0(attempt)))),
        )

    def wait_until_requeued(self, restarts):
        def requeued():
            state = _job(self.env, self.id)
            return state["JobState"] == "PENDING" and state["Restarts"] == str(restarts)

        self.wait(f"the job pending for its restart {restarts}", requeued)


def _saved_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_time_limit_and_requeue_resume_from_the_saved_step_and_scancel_cancels(
    tmp_path, slurm_env, digits_data_dir
):
    started = time.time()
    log_dir, workdir = tmp_path / "logs", tmp_path / "run"
    env = dict(slurm_env)  # the job's environment too: sbatch exports it to the tasks
    env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("device_count=8", "device_count=1")
    submit = subprocess.run(
        [SLURM, "--requeue", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1",
         "--time=10", f"--signal-margin={SIGNAL_MARGIN}", "--job-name=digits",
         f"--log-dir={log_dir}", f"--python={sys.executable}",
         "--config=configs/digits_diffusion.py:model=tiny", f"--workdir={workdir}",
         f"--data-dir={digits_data_dir}", "--",
         "--config.training.batch_size=16", "--config.data.shuffle_buffer=500",
         "--config.training.num_steps=1000000", "--config.training.checkpoint_every=1000000",
         "--config.training.log_every=3", "--config.training.sample_every=0"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    job_id = re.search(r"Submitted batch job (\d+)", submit.stdout).group(1)
    assert sorted(os.listdir(log_dir)) == [f"digits-{job_id}.sbatch"]  # no temporary file left
    job = Job(env, job_id, log_dir, deadline=started + 330)

    # The time limit. Once the tasks train, it is moved to 60-120 s from now (it counts in
    # minutes). slurmctld checks time limits every 30 s and sends the warning (SIGUSR1 to the
    # batch shell) at the first check at most SIGNAL_MARGIN + 30 s before the limit: here the
    # next one, with the run past its first step and at least 30 s before the limit.
    assert job.wait_for_step(0, r"starting at step (\d+)") == 0
    job.wait_for_training(0, after=0)
    run_time = sum(int(x) * 60**i for i, x in enumerate(reversed(
        _job(env, job_id)["RunTime"].split(":"))))
    _slurm(env, "scontrol", "update", f"JobId={job_id}",
           f"TimeLimit={math.ceil((run_time + SIGNAL_MARGIN - 30) / 60)}")
    job.wait_until_requeued(1)
    saved = job.wait_for_step(0, r"saved step (\d+), exiting for requeue")
    batch = job.batch_log(0)
    assert "SIGUSR1 (time limit near, or preemption): SIGTERM to the tasks" in batch, batch
    assert f"srun exited with status 0; task 0: saved step {saved}, exiting for requeue" in batch
    assert f"requeueing job {job_id}" in batch
    assert _saved_steps(workdir) == [saved] and saved > 0
    # SLURM holds a requeued job for about two minutes; start it sooner, with room to run (not in
    # the second of the requeue: slurmd refuses a launch credential no newer than its revocation).
    _slurm(env, "scontrol", "update", f"JobId={job_id}", "StartTime=now+2", "TimeLimit=10")

    # `scontrol requeue`: SLURM sends SIGTERM to the tasks and requeues the job itself.
    assert job.wait_for_step(1, r"resuming from step (\d+)") == saved
    job.wait_for_training(1, after=saved)
    _slurm(env, "scontrol", "requeue", job_id)
    job.wait_until_requeued(2)
    requeued = job.wait_for_step(1, r"saved step (\d+), exiting for requeue")
    assert requeued > saved and _saved_steps(workdir) == [saved, requeued]
    batch = job.batch_log(1)
    assert "SIGTERM: the job is cancelled, requeued or preempted" in batch, batch
    assert "SIGUSR1" not in batch and "requeueing job" not in batch
    _slurm(env, "scontrol", "update", f"JobId={job_id}", "StartTime=now+2")

    # `scancel`: the tasks save (they have KillWait, 30 s) and the job stays cancelled.
    assert job.wait_for_step(2, r"resuming from step (\d+)") == requeued
    job.wait_for_training(2, after=requeued)
    _slurm(env, "scancel", job_id)
    job.wait("the job to leave the queue", lambda: not _slurm(env, "squeue", "-h", "-j", job_id).strip())
    cancelled = job.wait_for_step(2, r"saved step (\d+), exiting for requeue")
    assert cancelled > requeued and _saved_steps(workdir) == [saved, requeued, cancelled]
    time.sleep(2)
    state = _job(env, job_id)
    assert (state["JobState"], state["Restarts"]) == ("CANCELLED", "2"), job.diagnosis()
    assert "requeueing job" not in job.batch_log(2)
