"""Running an absl binary as a console script so that `--help` lists its own flags and exits 0.

absl's `--help` prints the key flags of the main module, and under a console-script wrapper
(`finegrain-train` -> `finegrain_tf.train.main:run`) the main module is the wrapper, which defines
none: the help shows no flag and exits 1. `run(main, module)` makes the flags defined in `module`
key flags of the main module, uses `module`'s docstring as the usage text, and exits 0 on a help
request:

    def run():
        cli.run(main, __name__)
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Callable

from absl import app, flags

_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def _asked_for_help(argv) -> bool:
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.lstrip("-").split("=")[0] in _HELP_FLAGS and arg.startswith("-"):
            return True
    return False


def adopt_flags_as_main(module: ModuleType | str) -> None:
    """Lists the flags defined in `module` under the main module's `--help` (and its docstring)."""
    module = sys.modules[module] if isinstance(module, str) else module
    main_module = sys.modules.get("__main__")
    if main_module is module:
        return  # `python -m <module>`: absl already treats it as the main module
    for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    if main_module is not None and not main_module.__doc__:
        main_module.__doc__ = module.__doc__


def run(main: Callable, module: ModuleType | str) -> None:
    """`absl.app.run(main)` for the binary defined in `module`; `--help` lists its flags, exits 0."""
    adopt_flags_as_main(module)
    try:
        app.run(main)
    except SystemExit as e:
        if e.code == 1 and _asked_for_help(sys.argv):
            raise SystemExit(0) from None
        raise
