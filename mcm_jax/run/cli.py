"""How the `python -m` commands run: their own flags, and a user's mistake as one message.

A command module defines its flags in a module-level `flags.FlagValues()`, not the global
`flags.FLAGS`, so modules that import one another (or a test session importing them all) never
define a flag name twice; `main(argv)` parses them from its command line, so tests can call it.
Commands that define global flags only under `if __name__ == "__main__"` need no FlagValues.

`run` ends a user's mistake in one line, `error: <message>`, without a traceback: exit status 2
for a command line that cannot be parsed or is refused (a bad flag value, an unknown --config.*
key, a config file that does not load, `app.UsageError`), 1 for a run refused or stopped
(`USER_ERRORS`: a bad config value or path, a missing file, a non-finite loss). --verbose, or
MCM_JAX_VERBOSE=1, shows the traceback too. Other errors are bugs and keep their traceback.

`define_main_flags` and `parse_main_flags` are mcm_jax.main's flags and their parsing, for any
FlagValues: main parses its command line with them into absl's global flags, and launch/sweep.py
each command it prints into fresh ones, so a mistake in a sweep's overrides fails there with the
message main would give. `parse_main_flags` turns every way such a command line can be wrong (a
bad flag value, an unknown --config.* key, a config file that does not load, --config.model.name)
into a `CommandLineError` whose message is the one line to show (or, when asked for tracebacks,
re-raises the error as it came); `run` uses it for every command with a --config flag.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import app, flags
from ml_collections import config_flags

VERBOSE_ENV = "MCM_JAX_VERBOSE"
# What the project raises for a user's mistake or a fault of the run's files or disks (OSError:
# a missing file, no permission, a read-only file system, a full disk, ...).
USER_ERRORS = (ValueError, OSError, FloatingPointError)
COMMAND_LINE_ERROR, RUN_ERROR = 2, 1
FLAGS = flags.FLAGS


def verbose(argv: Sequence[str] | None = None) -> bool:
    """Whether tracebacks were asked for: the env var, --verbose, or (flags unparsed) it in argv."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return True
    if FLAGS.is_parsed() and "verbose" in FLAGS:
        return FLAGS.verbose
    return any(re.fullmatch(r"--?verbose(=(true|t|1))?", arg.lower()) for arg in argv or ())


def fail(message: str, status: int) -> NoReturn:
    """Prints `error: message` and exits; with several processes it ends every process of the
    job, each naming this one and its error (mcm_jax.run.distributed.fail_job)."""
    if "jax" in sys.modules:
        from mcm_jax.run import distributed

        distributed.fail_job(message, status)  # returns only with a single process
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _end(
    error: BaseException, status: int, *, traceback_too: bool, message: str | None = None
) -> NoReturn:
    """Ends the command on `error` (inside its `except`): with several processes, every process
    of the job (after this one's traceback, if `traceback_too`); else one `fail` line, or
    Python's own traceback if `traceback_too`."""
    if "jax" in sys.modules:
        from mcm_jax.run import distributed

        if distributed.several_processes():
            details = traceback.format_exc() if traceback_too else ""
            distributed.fail_job(message or str(error), status, details=details)
    if traceback_too:
        raise error
    fail(str(error), status)


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception `error` was raised from (chains cut with `from None` end there)."""
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            return error
        error = inner


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every way the command line can be wrong ending in one message
    (for commands with a --config flag, `parse_main_flags`'s)."""
    if "config" in FLAGS:
        try:
            return parse_main_flags(argv, FLAGS, verbose=lambda: verbose(argv))
        except CommandLineError as e:
            fail(str(e), COMMAND_LINE_ERROR)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        if verbose(argv):
            raise
        fail(f"{e} (see --helpshort)", COMMAND_LINE_ERROR)


def define_verbose(flag_values: flags.FlagValues) -> None:
    """--verbose: show a user error's traceback too."""
    flags.DEFINE_bool("verbose", False, "Show the traceback of a user error, not only its "
                      "message, and (mcm_jax.main) the libraries' INFO log lines "
                      f"({VERBOSE_ENV}=1 too).", flag_values=flag_values)


def run(main: Callable[[Sequence[str]], None], own_flags: flags.FlagValues | None = None) -> None:
    """`app.run(main)` with the flags parsed by `parse_flags` and a user's mistake in `main`
    ended by `fail`; `own_flags` join the global flags, so --help lists them."""
    if "verbose" not in FLAGS:
        define_verbose(FLAGS)
    if own_flags is not None:
        FLAGS.append_flag_values(own_flags)
    for name in ["verbose", *(own_flags or ())]:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])

    def handled(argv: Sequence[str]) -> None:
        try:
            main(argv)
        except (app.UsageError, flags.Error) as e:
            _end(e, COMMAND_LINE_ERROR, traceback_too=verbose())
        except USER_ERRORS as e:
            _end(e, RUN_ERROR, traceback_too=verbose())
        except (Exception, KeyboardInterrupt) as e:  # a bug, or Ctrl-C: its traceback stays
            _end(e, RUN_ERROR, traceback_too=True, message=f"{type(e).__name__}: {e}")

    app.run(handled, flags_parser=parse_flags)


# config.model.name says which named network the config file filled config.model from; setting it
# alone would change no layer, so the command line may not.
MODEL_NAME_OVERRIDE = (
    "--config.model.name: the network is chosen by the config file's argument (e.g. "
    "--config=configs/digits_diffusion.py:model=tiny, configs/imagenet64_diffusion.py:size=large); "
    "--config.model.<field>=... overrides single fields of it"
)


class CommandLineError(ValueError):
    """A command line mcm_jax.main cannot run; the message names the flag."""


def define_main_flags(flag_values: flags.FlagValues, sys_argv: list[str] | None = None) -> None:
    """Defines main's flags (--config and its --config.* overrides, --workdir, --mode, --verbose)
    in `flag_values`; config_flags finds the overrides in `sys_argv`, the command line that will
    be parsed (default: sys.argv)."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (path[:arg]).", flag_values=flag_values,
        sys_argv=sys_argv,
    )
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples (local or gs://).",
                        flag_values=flag_values)
    flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train, or run the eval job.",
                      flag_values=flag_values)
    define_verbose(flag_values)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def _config_arg(argv: list[str], flag_values: flags.FlagValues) -> str | None:
    """The value of --config in argv ("path[:arg]"), None if it has none."""
    argv = flag_values.read_flags_from_files(argv, force_gnu=False)
    config_arg = None
    for i, arg in enumerate(argv):
        if re.match(r"^--?config=", arg):
            config_arg = arg.split("=", 1)[1]
        elif re.match(r"^--?config$", arg) and i + 1 < len(argv):
            config_arg = argv[i + 1]
    return config_arg


def _config_file_error(error: Exception, config_arg: str | None) -> str | None:
    """The message for `error` if the config file raised it as it was loaded (a syntax error, no
    get_config, an error in its code), else None. config_flags lets these through as they are,
    except ValueError and TypeError, which absl turns into a flags.Error."""
    path = (config_arg or "").split(":", 1)[0]
    if not path:
        return None
    is_config_file = lambda filename: os.path.abspath(filename) == os.path.abspath(path)
    if isinstance(error, SyntaxError) and is_config_file(error.filename or ""):
        return f"--config={path}: line {error.lineno}: {error.msg}"
    if (isinstance(error, AttributeError) and error.name == "get_config"
            and is_config_file(getattr(error.obj, "__file__", "") or "")):
        return (f"--config={path}: the file defines no get_config; a config file defines "
                "get_config(arg) that returns the config (see configs/)")
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if is_config_file(frame.filename)]
    if not lines:
        return None
    return f"--config={path}: line {lines[-1]}: {type(error).__name__}: {error}"


def _override_error(argv: list[str], flag_values: flags.FlagValues) -> str | None:
    """The message for the first --config.* override in argv that names no config field."""
    # Here, not at the top: commands without a --config flag (data preparation) then never import
    # jax and flax for it.
    from mcm_jax.config import config_lib

    argv = flag_values.read_flags_from_files(argv, force_gnu=False)
    config_arg = _config_arg(argv, flag_values)
    if config_arg is None:
        return None
    config = flag_values["config"].parser.parse(config_arg)
    for arg in argv:
        override = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
        if override:
            reason = config_lib.override_error(config, override.group(1))
            if reason:
                return f"--config.{override.group(1)}: {reason}"
    return None


def parse_main_flags(
    argv: list[str], flag_values: flags.FlagValues, verbose: Callable[[], bool] = lambda: False
) -> list[str]:
    """Parses `argv` (program name first) into `flag_values` (as `define_main_flags` made them) and
    returns the arguments left; a user's mistake raises CommandLineError with its message, or,
    where `verbose()`, the error it came from as it was raised."""
    try:
        remaining = flag_values(argv)
    except flags.Error as e:
        message = str(e)
        head, sep, _ = message.partition(": Error whilst parsing config file")
        if sep:  # config_flags embeds the config file's traceback: keep only its error
            message = f"{head}: {root_cause(e)}"
        if verbose():
            raise
        raise CommandLineError(f"{message} (see --helpshort)") from e
    except Exception as e:  # noqa: BLE001  (a config file may raise anything as it loads)
        message = _config_file_error(e, _config_arg(argv, flag_values))
        if message is None and isinstance(e, (KeyError, AttributeError, IndexError)):
            message = _override_error(argv, flag_values)  # config_flags on an override of no field
        if message is None or verbose():
            raise
        raise CommandLineError(message) from e
    if flag_values.config is not None and not isinstance(flag_values.config,
                                                          ml_collections.ConfigDict):
        try:  # config_flags defers a config file that cannot be loaded to its first use
            flag_values.config.lock()
        except OSError as e:
            if verbose():
                raise
            filename = config_flags.get_config_filename(flag_values["config"])
            raise CommandLineError(f"--config={filename}: {e}") from e
    if "model.name" in config_flags.get_override_values(flag_values["config"]):
        raise CommandLineError(MODEL_NAME_OVERRIDE)
    return remaining
