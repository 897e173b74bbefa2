"""absl.app for the `python -m` commands whose flags live in their own FlagValues.

A command module defines its flags in a module-level `flags.FlagValues()`, not the global
`flags.FLAGS`, so modules that import one another (or a test session importing them all) never
define a flag name twice; `main(argv)` parses them from its command line, so tests can call it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags


def run(main: Callable[[Sequence[str]], None], own_flags: flags.FlagValues) -> None:
    """`app.run(main)` with `own_flags` added to the global flags, so --help lists them."""
    flags.FLAGS.append_flag_values(own_flags)
    for name in own_flags:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], own_flags[name])
    app.run(main)
