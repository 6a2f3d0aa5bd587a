"""The Python retrieval API (Retriever) and the Keras callback."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf import metrics, retrieval
from retrieval_reference import brute_force_knn, clustered


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _tiny_embedder(dim=6, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(dim, name="embedding")(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def test_lookup_embeddings_matches_brute_force_on_unit_vectors():
    x, labels = clustered(200, 8, 4, 0.6, seed=0)
    ids = [f"img{i}.jpg" for i in range(200)]
    r = retrieval.Retriever.from_embeddings(x, ids, labels=labels, kind="exact")
    q = clustered(6, 8, 4, 0.6, seed=1)[0]
    result = r.lookup(q, k=4)
    want_d, want_pos = brute_force_knn(_unit(q), _unit(x), 4)
    np.testing.assert_array_equal(result.positions, want_pos)
    assert result.ids.tolist() == np.array(ids)[want_pos].tolist()
    np.testing.assert_allclose(result.distances, want_d, atol=1e-5)
    np.testing.assert_array_equal(result.labels, labels[want_pos])
    # queries in several search batches give the same answer
    r.batch_size = 4
    np.testing.assert_array_equal(r.lookup(q, k=4).positions, want_pos)


def test_lookup_images_equals_lookup_of_their_embeddings():
    model = _tiny_embedder()
    embedder = keras.Model(model.inputs, model.get_layer("embedding").output)
    images = np.random.default_rng(2).uniform(0, 255, (30, 4, 4, 3)).astype(np.float32)
    r = retrieval.Retriever.from_images(embedder, images, labels=np.arange(30) % 3, kind="exact")
    by_image = r.lookup(images[:5], k=3)
    by_embedding = r.lookup(embedder.predict(images[:5], verbose=0), k=3)
    np.testing.assert_array_equal(by_image.positions, by_embedding.positions)
    np.testing.assert_array_equal(by_image.positions[:, 0], np.arange(5))  # each image finds itself first
    assert by_image.ids[:, 0].tolist() == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match="needs an embedding_model"):
        retrieval.Retriever(r.index).lookup(images[:2], k=1)


def test_evaluate_equals_metrics_on_the_same_gallery():
    gallery, g_labels = clustered(300, 8, 5, 0.8, seed=3)
    queries, q_labels = clustered(40, 8, 5, 0.8, seed=4)
    r = retrieval.Retriever.from_embeddings(gallery, labels=g_labels, kind="exact")
    got = r.evaluate(queries, q_labels, ks=(1, 5))
    want = metrics.recall_at_k(queries, q_labels, gallery, g_labels, ks=(1, 5), distance="cosine")
    assert got["recall@1"] == pytest.approx(want[1]) and got["recall@5"] == pytest.approx(want[5])
    # R-precision of queries against the gallery by a naive loop over unit vectors
    _, order = brute_force_knn(_unit(queries), _unit(gallery), 300)
    rps = []
    for row, label in zip(order, q_labels):
        big_r = int(np.sum(g_labels == label))
        rps.append(np.sum(g_labels[row[:big_r]] == label) / big_r)
    assert got["r_precision"] == pytest.approx(np.mean(rps))
    per_class = r.evaluate(queries, q_labels, ks=(1,), average="class")
    assert 0.0 <= per_class["map_at_r"] <= 1.0


def test_ivf_retriever_agrees_with_its_export(tmp_path):
    gallery = clustered(600, 8, 6, 0.5, seed=5)[0]
    r = retrieval.Retriever.from_embeddings(gallery, kind="ivf", nlist=12, nprobe=3)
    q = _unit(clustered(5, 8, 6, 0.5, seed=6)[0])
    retrieval.save_index(r.index, str(tmp_path), k=5)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(tmp_path))
        sig = meta.signature_def["lookup"]
        served = sess.run({k: v.name for k, v in sig.outputs.items()},
                          {sig.inputs["queries"].name: q, sig.inputs["nprobe"].name: 3})
    assert served["ids"].astype(str).tolist() == r.lookup(q, k=5).ids.tolist()


def test_callback_logs_retrieval_metrics_each_epoch_and_every_n_steps():
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(3), 8)
    images = (rng.uniform(0, 1, (24, 4, 4, 3)) + y[:, None, None, None]).astype(np.float32)
    model = _tiny_embedder()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = retrieval.RetrievalEvaluation((images, y), every_n_epochs=1, every_n_steps=2, ks=(1, 2))
    history = model.fit(images, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    for name in ("val_recall@1", "val_precision@2", "val_r_precision", "val_map_at_r", "val_nmi", "val_ami"):
        assert len(history.history[name]) == 2
    epoch_reports = [rep for epoch, _, rep in callback.history if epoch is not None]
    step_reports = [step for epoch, step, _ in callback.history if epoch is None]
    assert step_reports == [2, 4, 6]  # 3 steps per epoch, every 2 steps
    embedder = keras.Model(model.inputs, model.get_layer("embedding").output)
    want = metrics.retrieval_report(embedder.predict(images, verbose=0), y, ks=(1, 2))
    assert epoch_reports[-1] == pytest.approx(want)
    assert history.history["val_map_at_r"][-1] == pytest.approx(want["map_at_r"])
