"""README's "Using the pieces" snippet runs as written (at toy size), and `import finegrain_tf` alone
registers every layer / loss a saved model refers to, without importing TensorFlow by itself."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _snippet() -> str:
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Using the pieces"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    # toy size: 32 px images, 32-dimensional sketches (the code is otherwise unchanged)
    return code.replace("448", "32").replace("dims=4096", "dims=32")


def _run(script: str, tmp_path) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_readme_snippet_runs_trains_and_reloads_with_one_import(tmp_path):
    path = str(tmp_path / "model.keras")
    script = _snippet() + f"""
assert pooling.has_gamma and pooling.effective_gamma() > 0
history = model.fit(sample_images, train_labels[:8], batch_size=4, epochs=1, verbose=0)
assert np.isfinite(history.history["loss"][0]), history.history
model.save({path!r})
expected = model.predict(sample_images[:2], verbose=0)
np.save({str(tmp_path / "expected.npy")!r}, expected)
"""
    _run(script, tmp_path)
    reload = f"""
import sys
import finegrain_tf
assert "tensorflow" not in sys.modules, "import finegrain_tf must not import TensorFlow by itself"
import keras, numpy as np
model = keras.saving.load_model({path!r})
images = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
np.testing.assert_allclose(model.predict(images[:2], verbose=0), np.load({str(tmp_path / "expected.npy")!r}),
                           rtol=1e-4, atol=1e-5)
print(type(model.loss).__name__)
"""
    assert _run(reload, tmp_path).strip().endswith("ClassBalancedLoss")
