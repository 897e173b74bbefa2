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
from ml_collections import config_flags

from mcm_jax import config_lib, paths

VERBOSE_ENV = "MCM_JAX_VERBOSE"
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples (local or gs://).")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train, or run the eval job.")
flags.DEFINE_bool(
    "verbose", False, f"Show the traceback of a user error, not only its message ({VERBOSE_ENV}=1 too)."
)
flags.mark_flags_as_required(["config", "workdir"])

# What the project raises for a user's mistake or a fault of the run's files.
USER_ERRORS = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
    FloatingPointError,
)
COMMAND_LINE_ERROR, RUN_ERROR = 2, 1
# config.model.name says which named network the config file filled config.model from; setting it
# alone would change no layer, so the command line may not.
MODEL_NAME_OVERRIDE = (
    "--config.model.name: the network is chosen by the config file's argument (e.g. "
    "--config=configs/digits_diffusion.py:model=tiny, configs/imagenet64_diffusion.py:size=large); "
    "--config.model.<field>=... overrides single fields of it"
)


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


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception `error` was raised from (chains cut with `from None` end there)."""
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            return error
        error = inner


def _override_error(argv: list[str]) -> str | None:
    """The message for the first --config.* override in argv that names no config field."""
    argv = FLAGS.read_flags_from_files(argv, force_gnu=False)
    config_arg = None
    for i, arg in enumerate(argv):
        if re.match(r"^--?config=", arg):
            config_arg = arg.split("=", 1)[1]
        elif re.match(r"^--?config$", arg) and i + 1 < len(argv):
            config_arg = argv[i + 1]
    if config_arg is None:
        return None
    config = FLAGS["config"].parser.parse(config_arg)
    for arg in argv:
        override = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
        if override:
            reason = config_lib.override_error(config, override.group(1))
            if reason:
                return f"--config.{override.group(1)}: {reason}"
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every way the command line can be wrong ending in one message."""
    try:
        remaining = FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        head, sep, _ = message.partition(": Error whilst parsing config file")
        if sep:  # config_flags embeds the config file's traceback: keep only its error
            message = f"{head}: {_root_cause(e)}"
        if _verbose(argv):
            raise
        _fail(f"{message} (see --helpshort)", COMMAND_LINE_ERROR)
    except (KeyError, AttributeError, IndexError):  # config_flags on an override of no field
        message = _override_error(argv)
        if message is None or _verbose(argv):
            raise
        _fail(message, COMMAND_LINE_ERROR)
    if not isinstance(FLAGS.config, ml_collections.ConfigDict):
        try:  # config_flags defers a config file that cannot be loaded to its first use
            FLAGS.config.lock()
        except OSError as e:
            if _verbose():
                raise
            _fail(f"--config={config_flags.get_config_filename(FLAGS['config'])}: {e}",
                  COMMAND_LINE_ERROR)
    if "model.name" in config_flags.get_override_values(FLAGS["config"]):
        _fail(MODEL_NAME_OVERRIDE, COMMAND_LINE_ERROR)
    return remaining


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
