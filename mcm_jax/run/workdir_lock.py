"""One training run per workdir: a lock file that names the run holding it.

Two runs in one workdir would interleave their checkpoints and overwrite each other's files. A
training run's process 0 therefore creates `<workdir>/run.lock` (JSON: host, pid, the process's
start time, when the run started, the SLURM job id) before it writes anything, rewrites it every
HEARTBEAT_SECONDS, and removes it when the run ends. A run that finds the file is refused with one
message naming the holder, unless the holder is gone:
- on the same host, its pid no longer runs, or runs another program (the start time differs);
- it was an earlier attempt of this SLURM job (a requeued job may run on another node);
- on another host, its heartbeat is older than STALE_SECONDS (a killed run cannot remove it).

On a local or network file system the file is created exclusively (O_EXCL), so of two runs that
start together exactly one gets it. gs:// has no exclusive create through epath: there the check
and the write are separate requests, so two runs started within about a second of each other can
both pass; a run started later is refused as anywhere else.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import psutil
from absl import logging
from etils import epath

from mcm_jax import files
from mcm_jax.run import distributed

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 60
STALE_SECONDS = 300


def _this_process() -> dict:
    pid = os.getpid()
    return {
        "host": socket.gethostname(), "pid": pid,
        "pid_started": psutil.Process(pid).create_time(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


def _holder_gone(holder: dict, me: dict, now: float) -> str | None:
    """Why the run that wrote `holder` no longer holds the workdir, or None if it may."""
    if holder.get("slurm_job") and holder["slurm_job"] == me["slurm_job"]:
        return f"it was an earlier attempt of SLURM job {me['slurm_job']}"
    if holder.get("host") == me["host"]:
        try:
            started = psutil.Process(holder["pid"]).create_time()
        except (psutil.NoSuchProcess, KeyError):
            return f"process {holder.get('pid')} has ended"
        if abs(started - holder.get("pid_started", 0)) > 1:
            return f"process {holder['pid']} has ended (its pid now runs another program)"
        return None
    if now - holder.get("heartbeat", 0) > STALE_SECONDS:
        return f"its last heartbeat was {now - holder.get('heartbeat', 0):.0f} s ago"
    return None


class WorkdirLock:
    """Holds `<workdir>/run.lock` for a training run (a context manager; process 0 only).

    Raises FileExistsError at entry, naming the run that holds the workdir, while it lives.
    """

    def __init__(self, workdir: str):
        self._path = epath.Path(workdir) / LOCK_FILE
        self._record: dict = {}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> "WorkdirLock":
        now = time.time()
        self._record = {**_this_process(), "started": now, "heartbeat": now}
        if not self._create():
            self._take_over_if_gone()
        self._heartbeat = threading.Thread(
            target=self._beat, name="mcm_jax-workdir-lock-heartbeat", daemon=True
        )
        self._heartbeat.start()
        distributed.at_failure(self._release)  # a failing multi-process job skips __exit__
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._heartbeat.join()
        distributed.at_failure(self._release, cancel=True)
        self._release()

    def _release(self) -> None:
        """Removes the file if this run still holds it."""
        try:
            if json.loads(self._path.read_text()).get("pid_started") == self._record["pid_started"]:
                self._path.unlink()
        except (FileNotFoundError, ValueError):  # taken over meanwhile: leave it to its holder
            pass

    def _data(self) -> bytes:
        return json.dumps(self._record, indent=1).encode()

    def _create(self) -> bool:
        """Creates the file if none exists; whether it did."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.as_uri().startswith("file://"):
            try:
                fd = os.open(os.fspath(self._path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._data())
            return True
        if self._path.exists():
            return False
        files.write_bytes_atomic(self._path, self._data())
        return True

    def _take_over_if_gone(self) -> None:
        try:
            holder = json.loads(self._path.read_text())
            reason = _holder_gone(holder, self._record, time.time())
        except FileNotFoundError:
            reason = "its run has just ended"
        except ValueError:  # cut short (a disk filled up, say): no run can be told from it
            reason = "it cannot be read"
        if reason is None:
            beat = time.time() - holder.get("heartbeat", 0)
            slurm = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
            raise FileExistsError(
                f"{self._path.parent} is in use by another run: host {holder.get('host')}, pid "
                f"{holder.get('pid')}, started {_when(holder.get('started', 0))}{slurm} (alive "
                f"{beat:.0f} s ago). Two runs in one workdir would mix their checkpoints: use "
                f"another --workdir, or stop that run. If it was killed on another host, its "
                f"lock goes stale {STALE_SECONDS} s after that, or delete {self._path}."
            )
        logging.warning("taking over %s from an earlier run: %s", self._path, reason)
        files.write_bytes_atomic(self._path, self._data())

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._record["heartbeat"] = time.time()
            try:
                files.write_bytes_atomic(self._path, self._data())
            except OSError as error:  # a full disk, say: the run goes on, the lock may go stale
                logging.warning("cannot refresh %s: %s", self._path, error)
