"""The processes of one job: started together by `jax.distributed`, and ended together.

When one process of a multi-process job fails, the others are usually waiting for it in a
collective (a train step, a checkpoint barrier), and would wait until the coordination service
gives up minutes later and aborts them with a C++ trace. Instead, the failing process posts its
error in the coordination service's key-value store and wakes a watcher thread in every process
(each waits on a key of its own), so each process prints one line naming the failing process and
its error, and exits with status 1 at once, whatever its main thread is doing.

Process 0 hosts the coordination service, so it exits last: a process whose service vanishes
aborts. Each process marks that it is stopping just before it exits, and process 0 waits for
those marks (at most STOP_WAIT_SECONDS) before it exits too.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable

import jax
from absl import logging
from jax._src import distributed as jax_distributed

FAILED_KEY = "mcm_jax/failed"
WAKE_DIR = "mcm_jax/wake/"  # a key per process, set to wake its watcher
STOPPING_DIR = "mcm_jax/stopping/"  # a key per process, set just before it exits on a failure
STOP_WAIT_SECONDS = 30
_WATCH_TIMEOUT_MS = 600_000

_stop_lock = threading.Lock()
_shutting_down = threading.Event()
_at_failure: list[Callable[[], None]] = []


def launched_processes() -> int:
    """How many processes SLURM or a Cloud TPU slice started (1 for a plain launch).

    SLURM counts only inside an srun step (SLURM_STEP_ID): a salloc or batch shell also has
    SLURM_NTASKS, and a process started there alone would wait forever for its peers.
    """
    env = os.environ
    if "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        return int(env["SLURM_NTASKS"])
    if env.get("TPU_WORKER_HOSTNAMES"):
        return len(env["TPU_WORKER_HOSTNAMES"].split(","))
    return 1


def start() -> None:
    """Starts jax.distributed where the launch asks for several processes (JAX_NUM_PROCESSES for
    a local or custom launch; SLURM and Cloud TPU from their environment), and the watcher that
    ends this process when another one fails."""
    env = os.environ
    if "JAX_NUM_PROCESSES" in env:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    elif launched_processes() > 1:
        jax.distributed.initialize()
    if _client() is None:
        return
    watcher = threading.Thread(target=_watch, name="mcm_jax-peer-failure-watcher", daemon=True)
    watcher.start()
    # atexit runs last-registered first: this ends the watcher before jax.distributed shuts its
    # client down (a daemon thread still inside the client when Python exits aborts it).
    atexit.register(_end_watch, watcher)


def at_failure(callback: Callable[[], None], *, cancel: bool = False) -> None:
    """Calls `callback` if a failure ends this process (Python's exit handlers do not run then);
    `cancel=True` takes it back."""
    if cancel:
        _at_failure.remove(callback)
    else:
        _at_failure.append(callback)


def several_processes() -> bool:
    """Whether this process is one of several started by jax.distributed."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def _client():
    """The coordination service's client when several processes run, else None."""
    return jax_distributed.global_state.client if several_processes() else None


def _describe(process: int, message: str) -> str:
    return f"process {process} of {jax.process_count()}: {message}"


def _wake(process: int) -> None:
    try:
        _client().key_value_set(f"{WAKE_DIR}{process}", "wake")
    except Exception:  # already woken
        pass


def _watch() -> None:
    """Waits until this process is woken: by another process's failure, then it ends this one;
    or by the end of the job."""
    client = _client()
    me = jax.process_index()
    while True:
        try:
            client.blocking_key_value_get(f"{WAKE_DIR}{me}", _WATCH_TIMEOUT_MS)
            break
        except Exception:  # the wait timed out
            if _shutting_down.is_set():
                return
    if _shutting_down.is_set():
        return
    failure = client.key_value_try_get(FAILED_KEY)
    if not failure.startswith(_describe(me, "")):  # else its main thread is ending it
        _stop(f"error: {_describe(me, 'stopped because ' + failure)}")


def _end_watch(watcher: threading.Thread) -> None:
    """Wakes this process's watcher at the end of the job and waits for it to return."""
    _shutting_down.set()
    _wake(jax.process_index())
    watcher.join(timeout=10)


def fail_job(message: str, status: int, *, details: str = "") -> None:
    """Ends every process of the job when several run: posts `message` as this process's error,
    prints `details` (a traceback, say) and it, and exits with `status`. Returns (doing nothing)
    with a single process.

    If another process failed first, this one reports that failure instead, without its own
    details: its own error is most likely a consequence (a collective whose peer left).
    """
    client = _client()
    if client is None:
        return
    if _stop_lock.locked():  # the watcher is already ending this process
        _wait_for_exit()
    own = _describe(jax.process_index(), message)
    try:
        client.key_value_set(FAILED_KEY, own)
    except Exception:  # another process posted its failure first
        first = client.key_value_try_get(FAILED_KEY)
        own, details = _describe(jax.process_index(), "stopped because " + first), ""
    else:
        for process in range(jax.process_count()):
            _wake(process)
    _stop(f"{details}error: {own}", status)


def _wait_for_exit() -> None:
    """Blocks this thread while another one ends the process."""
    while True:
        time.sleep(3600)


def _stop(line: str, status: int = 1) -> None:
    """Prints `line`, marks this process as stopping and exits; process 0, which hosts the
    coordination service, first waits for the others' marks. Exits without Python's shutdown:
    jax.distributed's shutdown barrier would wait for the processes that are gone."""
    if not _stop_lock.acquire(blocking=False):  # the other thread is already stopping
        _wait_for_exit()
    print(line, file=sys.stderr, flush=True)
    logging.flush()
    for callback in _at_failure:
        try:
            callback()
        except Exception as error:  # the job is ending anyway: say so, and end it
            logging.warning("while stopping: %s", error)
    client = _client()
    me, count = jax.process_index(), jax.process_count()
    try:
        client.key_value_set(f"{STOPPING_DIR}{me}", "1")
        if me == 0:
            deadline = time.monotonic() + STOP_WAIT_SECONDS
            while time.monotonic() < deadline:
                if len(client.key_value_dir_get(STOPPING_DIR)) >= count:
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # the others exit right after their mark
    except Exception:  # the service is gone: nothing left to wait for
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
