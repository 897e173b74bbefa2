"""Entry point: python -m mcm_jax.main --config=configs/<file>.py[:args] --workdir=DIR --mode=train|eval

Thin by design: parses flags, resolves the user's paths (local ones made absolute, gs:// kept),
starts jax.distributed on multi-process launches and hands (config, workdir) to the training loop
or the eval job.

A user's mistake ends in one line, `error: <message>`, without a traceback: exit status 2 for a
command line that cannot be parsed (a bad flag value, an unknown --config.* key, a config file that
does not load), 1 for a run refused or stopped (a bad config value or path, an incompatible run or
checkpoint, a non-finite loss). --verbose, or MCM_JAX_VERBOSE=1, shows the traceback too. Other
errors are bugs and keep their traceback.
"""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

import ml_collections
from absl import app, flags, logging

from mcm_jax import main_flags, paths

VERBOSE_ENV = main_flags.VERBOSE_ENV
FLAGS = flags.FLAGS
main_flags.define_flags(FLAGS)

# What the project raises for a user's mistake or a fault of the run's files.
USER_ERRORS = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
    FloatingPointError,
)
COMMAND_LINE_ERROR, RUN_ERROR = 2, 1


def _verbose(argv: list[str] | None = None) -> bool:
    """Whether tracebacks were asked for: the env var, --verbose, or (flags unparsed) it in argv."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return True
    if FLAGS.is_parsed():
        return FLAGS.verbose
    return any(re.fullmatch(r"--?verbose(=(true|t|1))?", arg.lower()) for arg in argv or ())


def _fail(message: str, status: int) -> NoReturn:
    """Prints `error: message` (with the process when there are several) and exits."""
    prefix = ""
    if "jax" in sys.modules:
        import jax

        if jax.distributed.is_initialized() and jax.process_count() > 1:
            prefix = f"process {jax.process_index()} of {jax.process_count()}: "
    print(f"error: {prefix}{message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every way the command line can be wrong ending in one message
    (`main_flags.parse`); --verbose raises the error it came from instead."""
    try:
        return main_flags.parse(argv, FLAGS, verbose=lambda: _verbose(argv))
    except main_flags.CommandLineError as e:
        _fail(str(e), COMMAND_LINE_ERROR)


def _launched_processes() -> int:
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


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
    """Resolves the paths, starts jax.distributed where launched so, and trains or evaluates."""
    workdir = paths.resolve_workdir(workdir)
    paths.resolve_config_paths(config)
    import jax

    if "JAX_NUM_PROCESSES" in os.environ:  # explicit local or custom launch
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif _launched_processes() > 1:
        jax.distributed.initialize()  # SLURM and Cloud TPU: detected from the environment
    from mcm_jax import multihost

    multihost.name_process_in_logs()
    logging.info("process %d of %d, %d local devices of %d", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    if mode == "train":
        from mcm_jax import train

        train.train(config, workdir)
    else:
        from mcm_jax.eval import evaluate

        evaluate.evaluate(config, workdir)


def main(argv: list[str]) -> None:
    del argv
    try:
        run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
    except USER_ERRORS as e:
        if _verbose():
            raise
        _fail(str(e), RUN_ERROR)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
