"""TripletLoss (in-batch mining and sampled triplets) against naive float64 triple loops following eq 2.1 and tfa's rules."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import keras
import tensorflow as tf

from finegrain_tf.losses.metric import TripletLoss, pairwise_distances, triplet_loss, triplet_margin_loss

MININGS = ("violating", "all", "semi_hard", "hard")
DISTANCES = ("squared_l2", "l2", "cosine")


# ---------------------------------------------------------------------------------------------------
# Naive float64 references (explicit loops)


def ref_dist(x, distance):
    x = np.asarray(x, np.float64)
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if distance == "cosine":
                d[i, j] = 1.0 - x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
            else:
                sq = float(np.sum((x[i] - x[j]) ** 2))
                d[i, j] = sq if distance == "squared_l2" else np.sqrt(sq)
    return d


def ref_triplet(labels, x, margin, mining, distance):
    labels = np.asarray(labels)
    d = ref_dist(x, distance)
    n = len(labels)
    pos = [[p for p in range(n) if p != a and labels[p] == labels[a]] for a in range(n)]
    neg = [[q for q in range(n) if labels[q] != labels[a]] for a in range(n)]
    if not any(pos[a] for a in range(n)) or not any(neg[a] for a in range(n)):
        return 0.0
    if mining in ("all", "violating"):
        total, count = 0.0, 0
        for a in range(n):
            for p in pos[a]:
                for q in neg[a]:
                    l = max(d[a, p] - d[a, q] + margin, 0.0)
                    if mining == "all" or l > 0:
                        total += l
                        count += 1
        return total / count if count else 0.0
    if mining == "semi_hard":  # tfa TripletSemiHardLoss
        total, count = 0.0, 0
        for a in range(n):
            for p in pos[a]:
                negs = [d[a, q] for q in neg[a]]
                outside = [v for v in negs if v > d[a, p]]
                chosen = min(outside) if outside else max(negs)
                total += max(margin + d[a, p] - chosen, 0.0)
                count += 1
        return total / count
    # hard: tfa TripletHardLoss, soft=False, mean over all anchors
    total = 0.0
    for a in range(n):
        hp = max(d[a, p] for p in pos[a]) if pos[a] else min(d[a])
        hn = min(d[a, q] for q in neg[a]) if neg[a] else max(d[a])
        total += max(hp - hn + margin, 0.0)
    return total / n


def batch(seed, n=12, dim=8, classes=3, normalize=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return labels, x


def loss_value(labels, x, margin, mining, distance):
    return float(TripletLoss(margin, mining, distance)(labels, x))


# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining", MININGS)
def test_against_naive_loops(mining, distance):
    for seed, margin in ((0, 0.2), (1, 0.5), (2, 1.0)):
        labels, x = batch(seed)
        got = loss_value(labels, x, margin, mining, distance)
        want = ref_triplet(labels, x, margin, mining, distance)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Unnormalised embeddings, more classes, float labels as Keras passes them.
    labels, x = batch(7, n=16, dim=5, classes=5, normalize=False)
    got = float(TripletLoss(0.3, mining, distance)(labels.astype(np.float32), x))
    np.testing.assert_allclose(got, ref_triplet(labels, x, 0.3, mining, distance), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mining", MININGS)
def test_many_tied_distances(mining):
    """Binary embeddings: many equal distances exercise the strict/non-strict comparisons of eq 2.1
    (violation iff D_an < D_ap + m) and of tfa's semi-hard rule (D_an > D_ap)."""
    rng = np.random.default_rng(11)
    for trial in range(3):
        x = rng.integers(0, 2, size=(14, 3)).astype(np.float32)
        labels = rng.integers(0, 3, size=14)
        for margin in (0.0, 1.0, 0.5):
            got = loss_value(labels, x, margin, mining, "squared_l2")
            want = ref_triplet(labels, x, margin, mining, "squared_l2")
            assert got == pytest.approx(want, abs=1e-5), (trial, margin)


def test_distance_matrix_matches_reference():
    _, x = batch(3, normalize=False)
    for distance in DISTANCES:
        np.testing.assert_allclose(pairwise_distances(x, distance).numpy(), ref_dist(x, distance),
                                   rtol=1e-5, atol=1e-5)


def test_semi_hard_hand_built():
    # 1-D points: a0=0, p1=1 (class 0); n2=1.5, n3=3 (class 1); squared distances.
    x = np.array([[0.0], [1.0], [1.5], [3.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    m = 1.0
    # pairs: (0,1): D_ap=1, negs {2.25, 9} -> outside min 2.25 -> 1+1-2.25 < 0 -> 0
    #        (1,0): D_ap=1, negs {0.25, 4} -> 4 -> 1+1-4 -> 0
    #        (2,3): D_ap=2.25, negs {2.25, 0.25} -> none > 2.25 -> max 2.25 -> 1+2.25-2.25 = 1
    #        (3,2): D_ap=2.25, negs {9, 4} -> 4 -> 1+2.25-4 -> 0
    assert loss_value(labels, x, m, "semi_hard", "squared_l2") == pytest.approx(0.25, abs=1e-6)
    # hard: anchor 0: hp=1, hn=2.25 -> 0; anchor 1: hp=1, hn=0.25 -> 1.75;
    #       anchor 2: hp=2.25, hn=0.25 -> 3; anchor 3: hp=2.25, hn=4 -> 0  => mean 1.1875
    assert loss_value(labels, x, m, "hard", "squared_l2") == pytest.approx(1.1875, abs=1e-6)
    # violating: the 8 triplets have losses 0,0 | 1.75,0 | 3,1 | 0,0 -> mean over 3 violators
    assert loss_value(labels, x, m, "violating", "squared_l2") == pytest.approx(5.75 / 3, abs=1e-6)
    assert loss_value(labels, x, m, "all", "squared_l2") == pytest.approx(5.75 / 8, abs=1e-6)


def test_well_separated_batch_is_zero_and_all_wrong_is_positive():
    labels = np.array([0, 0, 1, 1, 2, 2])
    centers = np.eye(3, 4, dtype=np.float32)
    x = centers[labels]  # identical within class, far between classes
    for mining in MININGS:
        assert loss_value(labels, x, 0.2, mining, "squared_l2") == pytest.approx(0.0, abs=1e-6)
    # Labels shuffled against geometry: every positive at distance 2, negatives at 0 -> 2 + m.
    wrong = np.array([0, 1, 0, 1, 2, 3])
    for mining in ("all", "violating", "semi_hard"):
        want = ref_triplet(wrong, x, 0.2, mining, "squared_l2")
        assert want > 0
        assert loss_value(wrong, x, 0.2, mining, "squared_l2") == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]])
@pytest.mark.parametrize("distance", DISTANCES)
def test_no_valid_triplet_gives_zero_and_finite_gradients(labels, distance):
    labels = np.array(labels)
    x = tf.Variable(np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32))  # duplicate rows
    for mining in MININGS:
        with tf.GradientTape() as tape:
            loss = TripletLoss(0.2, mining, distance)(labels, x)
        grad = tape.gradient(loss, x)
        assert float(loss) == 0.0
        assert grad is None or np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradients_finite_and_match_finite_differences(distance):
    labels, x0 = batch(4, n=8, dim=4)
    x0[1] = x0[0]  # coincident embeddings: sqrt at 0 for "l2"
    for mining in MININGS:
        x = tf.Variable(x0.astype(np.float64).astype(np.float32))
        with tf.GradientTape() as tape:
            loss = TripletLoss(0.5, mining, distance)(labels, x)
        grad = tape.gradient(loss, x).numpy()
        assert np.all(np.isfinite(grad)), (mining, distance)
    # Finite differences on a generic point (no ties, no coincident rows).
    labels, x0 = batch(5, n=8, dim=4)
    for mining in MININGS:
        x = tf.Variable(x0)
        with tf.GradientTape() as tape:
            loss = TripletLoss(0.5, mining, distance)(labels, x)
        grad = tape.gradient(loss, x).numpy()
        eps = 1e-3
        for (i, j) in ((0, 0), (3, 2), (7, 1)):
            xp, xm = x0.copy().astype(np.float64), x0.copy().astype(np.float64)
            xp[i, j] += eps
            xm[i, j] -= eps
            fd = (ref_triplet(labels, xp, 0.5, mining, distance)
                  - ref_triplet(labels, xm, 0.5, mining, distance)) / (2 * eps)
            assert grad[i, j] == pytest.approx(fd, abs=2e-3), (mining, distance, i, j)


def test_per_anchor_values_average_to_loss_and_keras_reduction():
    labels, x = batch(8)
    for mining in MININGS:
        values = triplet_loss(labels, x, 0.2, mining, "squared_l2").numpy()
        assert values.shape == (12,)
        np.testing.assert_allclose(values.mean(), ref_triplet(labels, x, 0.2, mining, "squared_l2"),
                                   rtol=1e-5, atol=1e-6)


def test_mixed_precision_inputs_float16():
    labels, x = batch(9)
    for mining in MININGS:
        loss = TripletLoss(0.2, mining)(labels, x.astype(np.float16))
        assert loss.dtype == tf.float32
        np.testing.assert_allclose(float(loss), ref_triplet(labels, x.astype(np.float16), 0.2, mining,
                                                             "squared_l2"), rtol=1e-3, atol=1e-3)


def test_validation_errors():
    with pytest.raises(ValueError, match="'nearest'"):
        TripletLoss(mining="nearest")
    with pytest.raises(ValueError, match="'L_2'"):
        TripletLoss(distance="L_2")
    with pytest.raises(ValueError, match="-1"):
        TripletLoss(margin=-1.0)
    with pytest.raises(ValueError, match="'manhattan'"):
        TripletLoss(mining="sampled", distance="manhattan")
    with pytest.raises(ValueError, match="nothing to gather"):
        TripletLoss(mining="sampled", gather_across_replicas=True)


def test_get_config_round_trip():
    loss = TripletLoss(0.3, "semi_hard", "cosine", gather_across_replicas=True)
    again = TripletLoss.from_config(loss.get_config())
    assert again.get_config() == loss.get_config()
    ser = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(ser, TripletLoss) and ser.mining == "semi_hard" and ser.margin == 0.3
    m = TripletLoss(0.4, "sampled", "l2")
    assert TripletLoss.from_config(m.get_config()).get_config() == m.get_config()


def test_triplet_margin_loss_matches_eq_2_1():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(6, 3, 5)).astype(np.float32)
    for distance in DISTANCES:
        got = triplet_margin_loss(t, 0.2, distance).numpy()
        for i in range(6):
            d = ref_dist(t[i], distance)
            assert got[i] == pytest.approx(max(d[0, 1] - d[0, 2] + 0.2, 0.0), abs=1e-5)
    for distance in DISTANCES:  # the loss object's sampled form: mean of eq 2.1 over the triplets
        want = np.mean([max(ref_dist(t[i], distance)[0, 1] - ref_dist(t[i], distance)[0, 2] + 0.2, 0.0)
                        for i in range(6)])
        got = float(TripletLoss(0.2, "sampled", distance)(np.zeros(6), t))
        assert got == pytest.approx(want, abs=1e-5)


def test_fit_embedding_model_save_load(tmp_path):
    """model.fit with TripletLoss, `.keras` reload with the loss in compile config."""
    from finegrain_tf.layers.normalization import L2Normalize

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 8)
    x = (rng.normal(size=(32, 6)) + labels[:, None]).astype(np.float32)
    inp = keras.Input((6,))
    out = L2Normalize(name="embedding")(keras.layers.Dense(4)(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(0.1), loss=TripletLoss(0.2, "semi_hard"))
    hist = model.fit(x, labels, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(hist.history["loss"]))
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert isinstance(again.loss, TripletLoss) and again.loss.mining == "semi_hard"


_MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from finegrain_tf.losses.metric import TripletLoss, triplet_loss
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 0, 1, 2, 3, 3])   # replica 0: 0,1,2,0 ; replica 1: 1,2,3,3
    x = rng.normal(size=(8, 4)).astype(np.float32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ds = tf.data.Dataset.from_tensor_slices((labels, x)).batch(8)
    dist = strategy.experimental_distribute_dataset(ds)
    v = tf.Variable(1.0)
    out = {}
    for gather, mining in ((True, "semi_hard"), (True, "violating"), (False, "hard")):
        if True:
            loss_obj = TripletLoss(0.2, mining, gather_across_replicas=gather,
                                   reduction="sum_over_batch_size")
            @tf.function
            def step(batch):
                def fn(lab, emb):
                    with tf.GradientTape() as tape:
                        # Keras 3 losses already divide by num_replicas in a replica context.
                        l = loss_obj(lab, emb * v)
                    return l, tape.gradient(l, v)
                l, g = strategy.run(fn, args=batch)
                return (strategy.reduce("SUM", l, axis=None), strategy.reduce("SUM", g, axis=None))
            for batch in dist:
                l, g = step(batch)
            full = triplet_loss(labels, x, 0.2, mining).numpy().mean()
            halves = np.mean([triplet_loss(labels[:4], x[:4], 0.2, mining).numpy().mean(),
                              triplet_loss(labels[4:], x[4:], 0.2, mining).numpy().mean()])
            vv = tf.Variable(1.0)
            with tf.GradientTape() as tape:
                ref = tf.reduce_mean(triplet_loss(labels, x * vv, 0.2, mining))
            gref = tape.gradient(ref, vv)
            out[(gather, mining)] = (float(l), float(g), float(full), float(halves), float(gref))
    for key, (l, g, full, halves, gref) in out.items():
        gather = key[0]
        want = full if gather else halves
        assert abs(l - want) < 1e-5, (key, l, want)
        if gather:
            assert abs(g - gref) < 1e-4, (key, g, gref)
        print(key, l, full, halves)
    assert any(abs(v[2] - v[3]) > 1e-3 for v in out.values())  # gathering changes the loss
    print("OK")
""")


def test_gather_across_replicas_mirrored_two_cpus():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_xla_compiles_and_matches():
    """Keras may jit-compile train steps on GPU: the sort/scatter mining must lower to XLA."""
    labels, x = batch(12, n=16, classes=4)
    for mining in ("violating", "semi_hard"):
        fn = tf.function(lambda y, e, m=mining: tf.reduce_mean(triplet_loss(y, e, 0.2, m)), jit_compile=True)
        assert float(fn(labels, x)) == pytest.approx(ref_triplet(labels, x, 0.2, mining, "squared_l2"),
                                                      abs=1e-5)
