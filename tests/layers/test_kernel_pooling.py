"""Tests of kernel pooling (seed 000 ch.3) against naive float64 numpy loops."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from finegrain_tf.layers import (BilinearPooling, CompactBilinearPooling,  # noqa: E402
                                 KernelPooling, estimate_gamma)
from finegrain_tf.ops.taylor_kernel import rbf_coefficients  # noqa: E402
from tests.ops.sketch_reference import ref_ssqrt_l2, ref_tensor_sketch  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Naive float64 references (explicit loops)


def ref_phi(x, layer, alphas):
    """phi(x) = [a0, a1 x, a2 TS_2(x), ..., ap TS_p(x)] (Algorithm 1 / eq 3.7) for one vector."""
    hashes = layer.sketch_hashes()
    parts = [np.array([alphas[0]]), alphas[1] * np.asarray(x, np.float64)]
    for k in range(2, layer.order + 1):
        h, s, d = hashes[k]
        parts.append(alphas[k] * ref_tensor_sketch(x, h, s, d))
    return np.concatenate(parts)


def ref_kernel_pooling(maps, layer, alphas, normalize):
    """Average of phi over all locations of each [H, W, C] map, then optional ssqrt + L2."""
    maps = np.asarray(maps, np.float64)
    out = []
    for m in maps:
        vecs = m.reshape(-1, m.shape[-1])
        out.append(np.mean([ref_phi(v, layer, alphas) for v in vecs], 0))
    out = np.array(out)
    return ref_ssqrt_l2(out) if normalize else out


RNG = np.random.RandomState(1234)
X_MAPS = RNG.uniform(0.1, 1.0, size=(2, 2, 3, 6)).astype(np.float32)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------
# Exactness for known hashes


@pytest.mark.parametrize("dims", [8, [5, 7, 5]])
def test_phi_equals_explicit_circular_convolutions(dims):
    alphas = [0.7, 1.1, -0.6, 0.9]
    layer = KernelPooling(order=3 if isinstance(dims, int) else 4, dims=dims,
                          coefficients=alphas + ([0.4] if not isinstance(dims, int) else []),
                          normalize=False, seed=5)
    x = RNG.randn(3, 6).astype(np.float32)
    y = layer(x).numpy()
    coeffs = layer.coefficient_values()
    expected = np.array([ref_phi(v, layer, coeffs) for v in x])
    assert y.shape == (3, 1 + 6 + (16 if isinstance(dims, int) else 17))
    _close(y, expected)


def test_groups_share_running_product_and_have_independent_hashes():
    layer = KernelPooling(order=4, dims=[5, 7, 5], coefficients="rbf", gamma=1.0, seed=0)
    layer.build((None, 6))
    hashes = layer.sketch_hashes()
    # orders 2 and 4 share dimension 5: TS_4 reuses C_1, C_2 of TS_2 (Algorithm 1's running product)
    np.testing.assert_array_equal(hashes[2][0], hashes[4][0][:2])
    assert hashes[3][2] == 7 and hashes[4][0].shape == (4, 6)
    assert hashes[2][0].min() >= 0 and hashes[2][0].max() < 5 and hashes[3][0].max() < 7
    assert set(np.unique(hashes[4][1])) == {-1.0, 1.0}
    h = hashes[4][0]
    assert not all(np.array_equal(h[0], h[t]) for t in range(1, 4))


def test_location_average_and_normalisation_match_reference():
    layer = KernelPooling(order=3, dims=8, coefficients="learned", gamma=0.8, seed=2)
    y = layer(X_MAPS).numpy()
    coeffs = layer.coefficient_values()
    np.testing.assert_allclose(coeffs, rbf_coefficients(0.8, 3, normalized=True), rtol=1e-6)
    _close(y, ref_kernel_pooling(X_MAPS, layer, coeffs, normalize=True))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, rtol=1e-5)
    raw_layer = KernelPooling(order=3, dims=8, coefficients="learned", gamma=0.8, seed=2,
                              normalize=False)
    raw = raw_layer(X_MAPS).numpy()
    np.testing.assert_allclose(raw_layer.coefficient_values(), rbf_coefficients(0.8, 3), rtol=1e-6)
    _close(raw, ref_kernel_pooling(X_MAPS, layer, raw_layer.coefficient_values(), normalize=False))


def test_inner_product_equals_weighted_sum_of_sketch_inner_products():
    alphas = [0.5, 0.8, 1.3, 0.6, 0.9]
    layer = KernelPooling(order=4, dims=[6, 9, 11], coefficients=alphas, normalize=False, seed=7)
    x, y = RNG.randn(2, 6)
    px, py = layer(np.stack([x, y]).astype(np.float32)).numpy()
    h = layer.sketch_hashes()
    expected = alphas[0] ** 2 + alphas[1] ** 2 * float(x @ y)
    for k in range(2, 5):
        expected += alphas[k] ** 2 * float(ref_tensor_sketch(x, *h[k]) @ ref_tensor_sketch(y, *h[k]))
    assert float(px @ py) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Shapes, validation, coefficients, gamma


def test_output_shapes_and_validation():
    layer = KernelPooling(order=4, dims=[16, 8, 4])
    assert layer.compute_output_shape((None, 7, 7, 32)) == (None, 1 + 32 + 28)
    assert layer(np.ones((2, 3, 3, 32), np.float32)).shape == (2, 61)
    assert KernelPooling(order=1, dims=[])(np.ones((2, 5), np.float32)).shape == (2, 6)
    assert CompactBilinearPooling(dim=12).compute_output_shape((None, 4, 4, 8)) == (None, 12)
    assert BilinearPooling().compute_output_shape((None, 4, 4, 8)) == (None, 64)
    for bad in (dict(order=0), dict(dims=[4, 4]), dict(dims=0), dict(coefficients="poly"),
                dict(coefficients=[1.0, 2.0]), dict(gamma=-1.0), dict(seed=-1), dict(normalize=1)):
        with pytest.raises(ValueError, match="must"):
            KernelPooling(**{"order": 4, **bad})
    with pytest.raises(ValueError, match="dim"):
        CompactBilinearPooling(dim=0)
    with pytest.raises(ValueError, match="channel"):
        KernelPooling(order=2, dims=4).build((None, 3, None))


@pytest.mark.parametrize("coefficients", ["rbf", "learned"])
def test_rbf_scale_is_removed_by_normalisation_and_large_gamma_does_not_underflow(coefficients):
    # gamma = 300: exp(-2 gamma) underflows float32; eq 3.11 in float64 + ssqrt/L2 is the reference.
    maps = (X_MAPS * 1e-2).astype(np.float32)
    layer = KernelPooling(order=3, dims=8, coefficients=coefficients, gamma=300.0, seed=4)
    y = layer(maps).numpy()
    assert np.all(layer.coefficient_values() > 0)
    exact = rbf_coefficients(300.0, 3)
    assert exact[0] < 1e-100
    _close(y, ref_kernel_pooling(maps, layer, exact, normalize=True))
    raw = KernelPooling(order=3, dims=8, coefficients=coefficients, gamma=0.4, seed=4,
                        normalize=False)
    raw.build(maps.shape)
    np.testing.assert_allclose(raw.coefficient_values(), rbf_coefficients(0.4, 3), rtol=1e-6)


def test_estimate_gamma_matches_pair_loop_and_adapt():
    feats = np.abs(RNG.randn(2, 3, 2, 5))
    vecs = feats.reshape(-1, 5)
    pairs = [vecs[i] @ vecs[j] for i in range(len(vecs)) for j in range(len(vecs)) if i != j]
    assert estimate_gamma(feats) == pytest.approx(1.0 / np.mean(pairs), rel=1e-12)
    with pytest.raises(ValueError, match="mean inner product"):
        estimate_gamma(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        estimate_gamma(np.ones((1, 3)))
    for coeffs in ("learned", "rbf"):
        layer = KernelPooling(order=3, dims=8, coefficients=coeffs)
        layer.build((None, 2, 2, 5))
        np.testing.assert_allclose(layer.coefficient_values(),
                                   rbf_coefficients(1.0, 3, normalized=True), rtol=1e-6)
        batches = tf.data.Dataset.from_tensor_slices(feats.astype(np.float32)).batch(1)
        gamma = layer.adapt(batches)
        assert gamma == pytest.approx(1.0 / np.mean(pairs), rel=1e-6)
        assert layer.effective_gamma() == pytest.approx(gamma, rel=1e-6)
        np.testing.assert_allclose(layer.coefficient_values(),
                                   rbf_coefficients(gamma, 3, normalized=True), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Gradients


def test_gradients_match_finite_differences_of_reference():
    layer = KernelPooling(order=3, dims=[5, 7], coefficients="learned", gamma=0.6, seed=9)
    maps = RNG.uniform(0.2, 1.0, size=(1, 2, 1, 4)).astype(np.float32)
    weights = RNG.randn(1, 1 + 4 + 12)
    x = tf.constant(maps)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * weights)
    gx, galpha = tape.gradient(loss, [x, layer.alpha])
    assert np.all(np.isfinite(gx.numpy())) and np.all(np.isfinite(galpha.numpy()))
    alphas = layer.coefficient_values()

    def f(m, a):
        return float(np.sum(ref_kernel_pooling(m, layer, a, normalize=True) * weights))

    eps = 1e-6
    num_x = np.zeros(maps.shape)
    base = maps.astype(np.float64)
    for idx in np.ndindex(maps.shape):
        plus, minus = base.copy(), base.copy()
        plus[idx] += eps
        minus[idx] -= eps
        num_x[idx] = (f(plus, alphas) - f(minus, alphas)) / (2 * eps)
    num_a = np.zeros(len(alphas))
    for i in range(len(alphas)):
        plus, minus = alphas.copy(), alphas.copy()
        plus[i] += eps
        minus[i] -= eps
        num_a[i] = (f(base, plus) - f(base, minus)) / (2 * eps)
    np.testing.assert_allclose(gx.numpy(), num_x, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(galpha.numpy(), num_a, rtol=1e-3, atol=1e-4)


def test_xla_compiles_and_matches():
    layer = KernelPooling(order=3, dims=[8, 6], gamma=0.5, seed=1)
    x = tf.constant(X_MAPS)
    eager = layer(x).numpy()

    @tf.function(jit_compile=True)
    def step(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = layer(v)
            loss = tf.reduce_sum(y[:, 3:] ** 2)
        return y, tape.gradient(loss, [v, layer.alpha])

    y, (gx, ga) = step(x)
    np.testing.assert_allclose(y.numpy(), eager, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(gx.numpy())) and np.all(np.isfinite(ga.numpy()))


# ------------------------------------------------------------------------------------------------
# Serialisation, export, mixed precision


LAYERS = {
    "kernel": lambda: KernelPooling(order=3, dims=[8, 6], coefficients="learned", gamma=0.7, seed=3,
                                    name="kp"),
    "kernel_rbf": lambda: KernelPooling(order=2, dims=8, coefficients="rbf", seed=1, name="kp"),
    "compact": lambda: CompactBilinearPooling(dim=8, seed=2, name="kp"),
    "bilinear": lambda: BilinearPooling(name="kp"),
}


def _model(kind):
    inputs = keras.Input((2, 3, 6))
    return keras.Model(inputs, LAYERS[kind]()(inputs))


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_get_config_round_trip(kind):
    layer = LAYERS[kind]()
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    _close(clone(X_MAPS).numpy(), layer(X_MAPS).numpy().astype(np.float64))


@pytest.mark.parametrize("kind", ["kernel", "kernel_rbf", "compact"])
def test_keras_file_round_trip_keeps_hashes_and_gamma(kind, tmp_path):
    model = _model(kind)
    layer = model.get_layer("kp")
    if kind == "kernel_rbf":
        layer.set_gamma(0.3)  # as after adapt(): stored in the "gamma" weight, not in the config
    if kind == "kernel":
        layer.alpha.assign(layer.alpha.numpy() * np.array([1.0, 2.0, 0.5, 3.0], np.float32))
    # Overwrite the hashes: reload must restore the stored ones, not redraw them from the seed.
    for w in layer.weights:
        if w.name.startswith("hash"):
            w.assign((w.numpy() + 1) % (w.numpy().max() + 1))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(X_MAPS).numpy(), model(X_MAPS).numpy())
    for a, b in zip(model.get_layer("kp").weights, loaded.get_layer("kp").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_saved_model_loads_in_tf1_session_loader(tmp_path):
    inputs = keras.Input((2, 3, 6))
    pooled = keras.layers.Concatenate()([LAYERS["kernel"]()(inputs),
                                         CompactBilinearPooling(dim=8, name="cbp")(inputs),
                                         BilinearPooling(name="bp")(inputs)])
    model = keras.Model(inputs, pooled)
    expected = model(X_MAPS).numpy()
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", model.call,
                         input_signature=[tf.TensorSpec([None, 2, 3, 6], tf.float32)])
    path = str(tmp_path / "sm")
    archive.write_out(path)
    reloaded = tf.saved_model.load(path)
    np.testing.assert_allclose(reloaded.serving_default(tf.constant(X_MAPS)).numpy(), expected,
                               rtol=1e-6, atol=1e-7)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        (inp,) = sig.inputs.values()
        (out,) = sig.outputs.values()
        got = sess.run(out.name, feed_dict={inp.name: X_MAPS})
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    reference = {k: LAYERS[k]()(X_MAPS).numpy() for k in ("kernel", "compact", "bilinear")}
    keras.mixed_precision.set_global_policy(policy)
    try:
        for kind, expected in reference.items():
            layer = LAYERS[kind]()
            x = tf.constant(X_MAPS, dtype=policy.split("_")[1])
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
            assert y.dtype == policy.split("_")[1]
            assert all(w.dtype in ("int32", "float32") for w in layer.weights)
            tol = 1e-2 if policy == "mixed_bfloat16" else 2e-3
            np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), expected, rtol=tol, atol=tol)
            assert np.all(np.isfinite(tf.cast(tape.gradient(loss, x), tf.float32).numpy()))
    finally:
        keras.mixed_precision.set_global_policy("float32")


_MIRRORED_SCRIPT = """
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from finegrain_tf.layers import KernelPooling, CompactBilinearPooling
rng = np.random.RandomState(0)
x = rng.uniform(size=(16, 2, 2, 6)).astype(np.float32)
y = rng.randint(0, 3, size=16)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inp = keras.Input((2, 2, 6))
    pooled = keras.layers.Concatenate()([KernelPooling(order=3, dims=8, name="kp")(inp),
                                         CompactBilinearPooling(dim=8)(inp)])
    model = keras.Model(inp, keras.layers.Dense(3)(pooled))
    model.compile(keras.optimizers.SGD(0.1, clipvalue=1.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
kp = model.get_layer("kp")
kp.adapt(x)
alpha = kp.alpha.numpy().copy()
hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
assert np.all(np.isfinite(hist.history["loss"])), hist.history
assert not np.allclose(kp.alpha.numpy(), alpha)
print("OK", kp.effective_gamma())
"""


def test_fit_under_mirrored_strategy_with_two_replicas():
    import subprocess
    import sys
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gamma = float(proc.stdout.strip().split()[-1])
    assert gamma == pytest.approx(estimate_gamma(np.random.RandomState(0).uniform(size=(16, 2, 2, 6))),
                                  rel=1e-5)


def test_warns_once_when_training_rbf_coefficients_without_estimated_gamma(caplog):
    def fit(layer):
        model = keras.Sequential([keras.Input((2, 3, 6)), layer, keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.01), "mse")
        caplog.clear()
        with caplog.at_level("WARNING"):
            model.fit(X_MAPS, np.zeros((2, 2), np.float32), epochs=2, verbose=0)
        return [r for r in caplog.records if "never estimated" in r.getMessage()]

    warned = fit(KernelPooling(order=2, dims=8, name="kp_no_gamma"))
    assert len(warned) == 1 and "adapt" in warned[0].getMessage()
    assert fit(KernelPooling(order=2, dims=8, gamma=0.5)) == []
    adapted = KernelPooling(order=2, dims=8)
    adapted.adapt(X_MAPS)
    assert fit(adapted) == []
    assert fit(KernelPooling(order=2, dims=8, coefficients=[1.0, 1.0, 1.0])) == []
