"""AnchorSoftVote against numpy eq 2.3, gamma -> inf, kmeans_anchors, AnchorVoteLoss, eq 2.5 with fit."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote, kmeans_anchors
from finegrain_tf.losses.anchor_vote import (AnchorVoteLoss, anchor_vote_loss, build_anchor_vote_model,
                                             combined_objective)


def ref_eq_2_3(x, anchors, gamma):
    x = np.asarray(x, np.float64)
    u = np.asarray(anchors, np.float64)
    n, k, _ = u.shape
    out = np.zeros((len(x), n))
    for b in range(len(x)):
        votes = np.array([sum(np.exp(-gamma * np.sum((x[b] - u[i, j]) ** 2)) for j in range(k))
                          for i in range(n)])
        out[b] = votes / votes.sum()
    return out


def make(n=4, k=3, d=5, gamma=5.0, output_mode="probabilities", seed=0):
    rng = np.random.default_rng(seed)
    layer = AnchorSoftVote(n, k, gamma, output_mode=output_mode)
    layer.build((None, d))
    anchors = (rng.normal(size=(n, k, d)) * 0.5).astype(np.float32)
    layer.set_anchors(anchors)
    x = (rng.normal(size=(7, d)) * 0.5).astype(np.float32)
    return layer, anchors, x


@pytest.mark.parametrize("gamma", [0.1, 1.0, 5.0])
def test_matches_eq_2_3(gamma):
    layer, anchors, x = make(gamma=gamma)
    want = ref_eq_2_3(x, anchors, gamma)
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-5, atol=1e-6)
    logp = AnchorSoftVote(4, 3, gamma, output_mode="log_probabilities")
    logp.build((None, 5))
    logp.set_anchors(anchors)
    np.testing.assert_allclose(logp(x).numpy(), np.log(want), rtol=1e-5, atol=1e-5)
    logits = AnchorSoftVote(4, 3, gamma, output_mode="logits")
    logits.build((None, 5))
    logits.set_anchors(anchors)
    np.testing.assert_allclose(tf.nn.softmax(logits(x)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_large_gamma_finite_and_nearest_anchor():
    layer, anchors, x = make(gamma=1e3)
    x = x * 4  # far from every anchor: exp(-gamma d) underflows without log-space evaluation
    p = layer(x).numpy()
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    d = ((x[:, None, None, :] - anchors[None]) ** 2).sum(-1)  # [B, N, K]
    nearest_class = d.min(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(p.argmax(axis=1), nearest_class)
    huge, _, _ = make(gamma=1e7, output_mode="log_probabilities")
    lp = huge(x).numpy()
    assert np.all(np.isfinite(lp))
    np.testing.assert_array_equal(lp.argmax(axis=1), nearest_class)
    np.testing.assert_allclose(np.exp(lp), np.eye(4)[nearest_class], atol=1e-6)  # hard assignment
    # gamma -> 0: all anchors vote equally
    tiny, _, _ = make(gamma=1e-8)
    np.testing.assert_allclose(tiny(x).numpy(), 0.25, atol=1e-5)


def test_loss_finite_at_large_gamma_and_gradients():
    layer, anchors, x = make(gamma=1e3, output_mode="log_probabilities")
    y = np.array([0, 1, 2, 3, 0, 1, 2])
    xv = tf.Variable(x * 4)
    with tf.GradientTape() as tape:
        loss = AnchorVoteLoss()(y, layer(xv))
    grads = tape.gradient(loss, [xv, layer.anchors])
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    # eq 2.4 against numpy at a moderate gamma
    layer, anchors, x = make(gamma=2.0, output_mode="log_probabilities")
    p = ref_eq_2_3(x, anchors, 2.0)
    np.testing.assert_allclose(anchor_vote_loss(y, layer(x)).numpy(), -np.log(p[np.arange(7), y]),
                               rtol=1e-5)
    probs_layer, _, _ = make(gamma=2.0)
    np.testing.assert_allclose(AnchorVoteLoss(from_logits=False)(y, probs_layer(x)).numpy(),
                               np.mean(-np.log(p[np.arange(7), y])), rtol=1e-5)


def test_validation_and_set_anchors_shape():
    for kwargs, bad in (({"num_classes": 0}, "0"), ({"num_classes": 3, "anchors_per_class": 0}, "0"),
                        ({"num_classes": 3, "gamma": -1.0}, "-1.0"),
                        ({"num_classes": 3, "output_mode": "votes"}, "'votes'")):
        with pytest.raises(ValueError, match=bad):
            AnchorSoftVote(**kwargs)
    layer, _, _ = make()
    with pytest.raises(ValueError, match=r"\(4, 3, 5\)"):
        layer.set_anchors(np.zeros((4, 2, 5)))


def test_kmeans_anchors():
    rng = np.random.default_rng(0)
    # class 0: three tight clusters; class 1: one point (fewer than K).
    centers = np.array([[0, 0], [5, 0], [0, 5]], np.float64)
    pts = np.concatenate([c + 0.01 * rng.normal(size=(10, 2)) for c in centers])
    emb = np.concatenate([pts, [[9.0, 9.0]]])
    labels = np.array([0] * 30 + [1])
    anchors = kmeans_anchors(emb, labels, K=3)
    assert anchors.shape == (2, 3, 2) and anchors.dtype == np.float32
    found = anchors[0][np.lexsort(anchors[0].T[::-1])]
    np.testing.assert_allclose(found, centers[np.lexsort(centers.T[::-1])], atol=0.02)
    np.testing.assert_allclose(anchors[1], [[9.0, 9.0]] * 3)
    with pytest.raises(ValueError, match="class 2"):
        kmeans_anchors(emb, labels, K=3, num_classes=3)


def test_config_keras_savedmodel_mixed_precision(tmp_path):
    layer = AnchorSoftVote(4, 2, 3.0, output_mode="log_probabilities", name="vote")
    again = AnchorSoftVote.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    inp = keras.Input((5,))
    model = keras.Model(inp, layer(keras.layers.Dense(5)(inp)))
    x = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)
    want = model.predict(x, verbose=0)
    path = str(tmp_path / "v.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), want, atol=1e-5)
    model.export(str(tmp_path / "sm"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), want, atol=1e-5)
    mp = AnchorSoftVote(4, 2, 1e3, dtype="mixed_float16")
    out = mp(x.astype(np.float16))
    assert out.dtype == tf.float16 and mp.anchors.dtype == "float32"
    assert np.all(np.isfinite(out.numpy()))


def test_combined_objective_trains_with_fit():
    """Eq 2.5 through plain model.fit: anchors and network weights both move, loss = w*trip + (1-w)*cls."""
    from finegrain_tf.layers.normalization import L2Normalize

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 8)
    x = (rng.normal(size=(24, 6)) + 2 * labels[:, None]).astype(np.float32)
    inp = keras.Input((6,))
    emb_model = keras.Model(inp, L2Normalize()(keras.layers.Dense(4)(inp)))
    model = build_anchor_vote_model(emb_model, num_classes=3, anchors_per_class=2, gamma=5.0)
    losses, weights = combined_objective(omega=0.1, mining="all")
    assert weights == {"embedding": 0.1, "vote": 0.9}
    model.compile(keras.optimizers.SGD(0.1), loss=losses, loss_weights=weights)
    vote = model.get_layer("vote")
    anchors0 = vote.anchors.numpy().copy()
    kernel0 = emb_model.layers[1].kernel.numpy().copy()
    out = model.predict(x, verbose=0)
    want = (0.1 * float(losses["embedding"](labels, out["embedding"]))
            + 0.9 * float(losses["vote"](labels, out["vote"])))
    got = model.evaluate(x, {"embedding": labels, "vote": labels}, batch_size=24, verbose=0,
                         return_dict=True)["loss"]
    assert got == pytest.approx(want, rel=1e-4)
    hist = model.fit(x, {"embedding": labels, "vote": labels}, batch_size=24, epochs=5, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert not np.allclose(vote.anchors.numpy(), anchors0)
    assert not np.allclose(emb_model.layers[1].kernel.numpy(), kernel0)
    with pytest.raises(ValueError, match="1.5"):
        combined_objective(omega=1.5)


@pytest.mark.parametrize("omega", [0.1, 1.0])
def test_combined_objective_on_sampled_triplets_matches_eq_2_5(omega):
    """The metric task's form of eq 2.5: triplets [B, 3, D] from a sampler and the anchors' scores
    [B, N], per triplet omega * eq 2.1 + (1 - omega) * eq 2.4, against float64 loops; round trip."""
    from finegrain_tf.losses.anchor_vote import CombinedObjective

    rng = np.random.default_rng(3)
    triplets = rng.normal(size=(5, 3, 4)).astype(np.float32)
    scores = rng.normal(size=(5, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0])
    objective = CombinedObjective(omega, margin=0.3, mining="sampled", reduction=None)
    got = objective(labels, {"embedding": triplets, "vote": scores}).numpy()
    for i in range(5):
        a, p, n = triplets[i].astype(np.float64)
        triplet = max(np.sum((a - p) ** 2) - np.sum((a - n) ** 2) + 0.3, 0.0)
        z = scores[i].astype(np.float64)
        vote = np.log(np.sum(np.exp(z))) - z[labels[i]]
        assert got[i] == pytest.approx(omega * triplet + (1 - omega) * vote, abs=1e-5)
    again = CombinedObjective.from_config(objective.get_config())
    assert again.triplet.mining == "sampled" and again.get_config() == objective.get_config()
