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
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags

VERBOSE_ENV = "MCM_JAX_VERBOSE"
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
FLAGS = flags.FLAGS


def verbose(argv: Sequence[str] | None = None) -> bool:
    """Whether tracebacks were asked for: the env var, --verbose, or (flags unparsed) it in argv."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return True
    if FLAGS.is_parsed() and "verbose" in FLAGS:
        return FLAGS.verbose
    return any(re.fullmatch(r"--?verbose(=(true|t|1))?", arg.lower()) for arg in argv or ())


def fail(message: str, status: int) -> NoReturn:
    """Prints `error: message` (with the process when there are several) and exits."""
    prefix = ""
    if "jax" in sys.modules:
        import jax

        if jax.distributed.is_initialized() and jax.process_count() > 1:
            prefix = f"process {jax.process_index()} of {jax.process_count()}: "
    print(f"error: {prefix}{message}", file=sys.stderr, flush=True)
    sys.exit(status)


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception `error` was raised from (chains cut with `from None` end there)."""
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            return error
        error = inner


def _override_error(argv: list[str]) -> str | None:
    """The message for the first --config.* override in argv that names no config field."""
    from mcm_jax import config_lib

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


def _check_config_flag() -> None:
    """A --config file that cannot be loaded, or an override of config.model.name, as a message."""
    import ml_collections
    from ml_collections import config_flags

    if not isinstance(FLAGS.config, ml_collections.ConfigDict):
        try:  # config_flags defers a config file that cannot be loaded to its first use
            FLAGS.config.lock()
        except OSError as e:
            if verbose():
                raise
            fail(f"--config={config_flags.get_config_filename(FLAGS['config'])}: {e}",
                 COMMAND_LINE_ERROR)
    if "model.name" in config_flags.get_override_values(FLAGS["config"]):
        fail(MODEL_NAME_OVERRIDE, COMMAND_LINE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every way the command line can be wrong ending in one message."""
    has_config = "config" in FLAGS
    try:
        remaining = FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        head, sep, _ = message.partition(": Error whilst parsing config file")
        if sep:  # config_flags embeds the config file's traceback: keep only its error
            message = f"{head}: {root_cause(e)}"
        if verbose(argv):
            raise
        fail(f"{message} (see --helpshort)", COMMAND_LINE_ERROR)
    except (KeyError, AttributeError, IndexError):  # config_flags on an override of no field
        message = _override_error(argv) if has_config else None
        if message is None or verbose(argv):
            raise
        fail(message, COMMAND_LINE_ERROR)
    if has_config and FLAGS.config is not None:
        _check_config_flag()
    return remaining


def run(main: Callable[[Sequence[str]], None], own_flags: flags.FlagValues | None = None) -> None:
    """`app.run(main)` with the flags parsed by `parse_flags` and a user's mistake in `main`
    ended by `fail`; `own_flags` join the global flags, so --help lists them."""
    if "verbose" not in FLAGS:
        flags.DEFINE_bool("verbose", False, "Show the traceback of a user error, not only its "
                          f"message ({VERBOSE_ENV}=1 too).")
    if own_flags is not None:
        FLAGS.append_flag_values(own_flags)
    for name in ["verbose", *(own_flags or ())]:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])

    def handled(argv: Sequence[str]) -> None:
        try:
            main(argv)
        except (app.UsageError, flags.Error) as e:
            if verbose():
                raise
            fail(str(e), COMMAND_LINE_ERROR)
        except USER_ERRORS as e:
            if verbose():
                raise
            fail(str(e), RUN_ERROR)

    app.run(handled, flags_parser=parse_flags)
