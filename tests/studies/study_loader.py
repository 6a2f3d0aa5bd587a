"""Imports a script of studies/ as a module for its tests.

The study scripts define their absl command-line flags at import (the usual absl layout), with names
that the library's binaries and the other scripts also use (--output_dir, --batch_size, --seeds); absl
refuses a second definition in one process. While a script is imported here, its `flags.DEFINE_*`
calls (and its flag validators) go to a private `FlagValues`, so nothing reaches absl's global registry: the tests use the
scripts' functions, never their command lines.
"""

import functools
import importlib.util
import os
import sys
from unittest import mock

from absl import flags

STUDIES = os.path.join(os.path.dirname(__file__), "..", "..", "studies")


def load_study(filename: str):
    """studies/<filename> as a module registered under its stem."""
    name = os.path.splitext(filename)[0]
    if name in sys.modules:
        return sys.modules[name]
    private = flags.FlagValues()
    definers = [d for d in dir(flags) if d.startswith("DEFINE")] + [
        "register_validator", "register_multi_flags_validator"]
    with mock.patch.multiple(flags, **{d: functools.partial(getattr(flags, d), flag_values=private)
                                       for d in definers}):
        spec = importlib.util.spec_from_file_location(name, os.path.join(STUDIES, filename))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module
