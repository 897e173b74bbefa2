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
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags

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
    job, each naming this one and its error (mcm_jax.distributed.fail_job)."""
    if "jax" in sys.modules:
        from mcm_jax import distributed

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
        from mcm_jax import distributed

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
    (for commands with a --config flag, `main_flags.parse`'s)."""
    if "config" in FLAGS:
        from mcm_jax import main_flags

        try:
            return main_flags.parse(argv, FLAGS, verbose=lambda: verbose(argv))
        except main_flags.CommandLineError as e:
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
