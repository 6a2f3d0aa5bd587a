"""Imports a script of studies/ as a module for its tests.

The study scripts define their absl command-line flags at import (the usual absl layout). Several
scripts share flag names (--output_dir, --replot, --seeds), and absl refuses a second definition in
one process, so after importing a script its flags are removed from absl's registry: the tests use
the scripts' functions, never their flags.
"""

import importlib.util
import os
import sys

from absl import flags

STUDIES = os.path.join(os.path.dirname(__file__), "..", "..", "studies")


def load_study(filename: str):
    """studies/<filename> as a module registered under its stem (its own flags unregistered)."""
    name = os.path.splitext(filename)[0]
    if name in sys.modules:
        return sys.modules[name]
    before = set(flags.FLAGS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(STUDIES, filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    for flag_name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, flag_name)
    return module
