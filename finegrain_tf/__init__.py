"""finegrain_tf: fine-grained and long-tailed image recognition for TensorFlow 2 / Keras 3.

Subpackages (import what you use):
  layers    KernelPooling, CompactBilinearPooling, BilinearPooling, AnchorSoftVote, L2Normalize
  losses    class-balanced, long-tail, triplet and contrastive losses
  ops       tensor maths shared by the layers (tensor sketch, Taylor kernel)
  metrics   per-class, head/tail and retrieval metrics
  data      embedded synthetic dataset, tfds and image-folder loaders, preprocessing
  sampling  triplet and pair samplers
  models    backbones and classifier / embedding heads
  analysis  EMD domain similarity, dataset granularity, kernel approximation error
  serving   SavedModel export for TF Serving, gRPC client, dev server
  train     config dataclasses, training loop, the finegrain-train binary

`import finegrain_tf` registers every serializable object of the project (layers, initializers,
losses), so `keras.saving.load_model` reads any finegrain_tf `.keras` file after it. Importing
TensorFlow takes seconds, and some tools (the review web app) never need it, so the registration
is deferred: it happens at once if Keras is already imported, otherwise right after Keras is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_SERIALIZABLE = ("finegrain_tf.layers", "finegrain_tf.losses")


def register_serializables() -> None:
    """Imports the modules that register the project's Keras objects (idempotent)."""
    for name in _SERIALIZABLE:
        importlib.import_module(name)


class _LoaderThenRegister(importlib.abc.Loader):
    """Runs Keras' own loader, then `register_serializables`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            register_serializables()
        except Exception as error:  # never break `import keras` for the user
            import warnings
            warnings.warn(f"finegrain_tf could not register its Keras objects: {error!r}")


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Watches for the first `import keras` (one-shot; removes itself)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThenRegister(spec.loader)
        return spec


if "keras" in sys.modules:
    register_serializables()
elif not any(isinstance(finder, _RegisterAfterKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
