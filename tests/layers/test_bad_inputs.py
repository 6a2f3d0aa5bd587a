"""Bad inputs to the layers (issue 11's battery): each case asserts the specific error message."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from finegrain_tf.layers import (AnchorSoftVote, BilinearPooling, CompactBilinearPooling,  # noqa: E402
                                 KernelPooling, PriorBias)

MAPS6 = np.random.RandomState(0).uniform(size=(2, 3, 3, 6)).astype(np.float32)


def _built(layer, x=MAPS6):
    layer(x)
    return layer


CONSTRUCTOR_CASES = [
    (lambda: KernelPooling(gamma=float("nan")), "gamma must be None or a finite number > 0, got nan"),
    (lambda: KernelPooling(gamma=math.inf), "gamma must be None or a finite number > 0, got inf"),
    (lambda: KernelPooling(gamma=-1.0), "got -1.0"),
    (lambda: KernelPooling(gamma=True), "got True"),
    (lambda: KernelPooling(order=0), "order must be an int >= 1, got 0"),
    (lambda: KernelPooling(order=4, dims=[4, 4]), r"order - 1 = 3 ints, got \[4, 4\]"),
    (lambda: KernelPooling(coefficients="poly"), "got 'poly'"),
    (lambda: KernelPooling(order=2, coefficients=[1.0]), r"order \+ 1 = 3 values"),
    (lambda: CompactBilinearPooling(dim=0), "dim must be an int >= 1, got 0"),
    (lambda: BilinearPooling(normalize=1), "normalize must be a bool, got 1"),
    (lambda: AnchorSoftVote(3, gamma=float("nan")), "gamma must be a finite number > 0, got nan"),
    (lambda: AnchorSoftVote(3, gamma=math.inf), "gamma must be a finite number > 0, got inf"),
    (lambda: AnchorSoftVote(3, gamma=0.0), "got 0.0"),
    (lambda: AnchorSoftVote(3, output_mode="votes"), "'votes'"),
    (lambda: PriorBias(num_classes=1), "num_classes must be an int >= 2"),
    (lambda: PriorBias(prior=1.5), r"prior must be in \(0, 1\), got 1.5"),
]


@pytest.mark.parametrize("make, message", CONSTRUCTOR_CASES)
def test_constructor_refuses(make, message):
    with pytest.raises(ValueError, match=message):
        make()


CALL_CASES = [
    # channel count changed after build: Keras' input spec names the expected and received sizes
    (lambda: _built(KernelPooling(order=2, dims=8))(MAPS6[..., :5]),
     "expected axis -1 of input shape to have value 6"),
    (lambda: _built(CompactBilinearPooling(dim=8))(MAPS6[..., :4]),
     "expected axis -1 of input shape to have value 6"),
    (lambda: _built(BilinearPooling())(MAPS6[..., :3]), "expected axis -1 of input shape to have value 6"),
    (lambda: KernelPooling(order=2, dims=8)(np.zeros((1, 2, 2, 2, 6), np.float32)), "expects"),
    (lambda: _built(KernelPooling(order=2, dims=8)).set_gamma(float("nan")),
     "gamma must be a finite number > 0, got nan"),
    (lambda: _built(KernelPooling(order=2, dims=8)).set_gamma(math.inf), "got inf"),
    (lambda: KernelPooling(order=2, dims=8).adapt(np.where(MAPS6 > 0.5, np.nan, MAPS6)), "non-finite"),
    (lambda: KernelPooling(order=2, dims=8).adapt(MAPS6[:1, :1, :1]), "at least 2 feature vectors"),
    (lambda: _built(AnchorSoftVote(3, 2), np.zeros((2, 4), np.float32)).set_anchors(np.zeros((3, 2, 5))),
     r"anchors must have shape \(3, 2, 4\), got \(3, 2, 5\)"),
]


@pytest.mark.parametrize("call, message", CALL_CASES)
def test_call_refuses(call, message):
    with pytest.raises(ValueError, match=message):
        call()
