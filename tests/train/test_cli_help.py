"""Every console script's `--help` lists its own flags with their help text and exits 0.

The scripts are read from setup.cfg and run through a console-script-style wrapper (a `__main__`
without flags of its own that imports the entry point and calls it), which is the case absl gets
wrong without `finegrain_tf.utils.cli`.
"""

import configparser
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _console_scripts():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return [tuple(part.strip() for part in line.split("=", 1)) for line in lines if line.strip()]


SCRIPTS = _console_scripts()
WRAPPER = "import sys; from {module} import {func}; sys.argv[0] = {name!r}; sys.exit({func}())"


LIST_FLAGS = ("import importlib, json; from absl import flags; m = importlib.import_module({module!r}); "
              "print(json.dumps([[f.name, f.help] for f in flags.FLAGS.get_flags_for_module(m)]))")


def _own_flags(module):
    """[name, help] of the flags the binary's module defines itself (absl's registry, in a fresh
    process so binaries defining the same flag names do not clash)."""
    out = subprocess.run([sys.executable, "-c", LIST_FLAGS.format(module=module)], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, entry", SCRIPTS, ids=[name for name, _ in SCRIPTS])
def test_help_lists_the_binary_flags_and_exits_zero(name, entry):
    module, func = entry.split(":")
    out = subprocess.run([sys.executable, "-c", WRAPPER.format(module=module, func=func, name=name),
                          "--help"], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stdout[-1000:], out.stderr[-2000:])
    own = _own_flags(module)
    if not own:  # an argparse-style binary: its usage line is enough
        assert "usage" in (out.stdout + out.stderr).lower()
        return
    for flag, help_text in own:
        assert f"--{flag}" in out.stdout or f"--[no]{flag}" in out.stdout, (flag, out.stdout[:2000])
        assert help_text.split()[0] in out.stdout, (flag, help_text)


def test_train_help_names_config_set_and_model_dir():
    out = subprocess.run([sys.executable, "-c", WRAPPER.format(
        module="finegrain_tf.train.main", func="run", name="finegrain-train"), "--help"],
        env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for flag in ("--config", "--set", "--model_dir"):
        assert flag in out.stdout
    assert "YAML config file(s)" in out.stdout
    assert "finegrain-train" in out.stdout  # the module docstring is the usage text
