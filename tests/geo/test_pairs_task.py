"""The pairs task end to end: training steps of every mode through the generic loop, reports, export."""

import json
import os

import keras
import numpy as np
import pytest

from finegrain_tf.train import config, loop
from finegrain_tf.train.run_dir import RunDir
from finegrain_tf.train.tasks import pairs as pairs_task

TOY = ["task.name=pairs", "data.image_size=32", "data.resize_size=32", "data.batch_size=8",
       "model.backbone=small_cnn", "pairs.num_places=24", "pairs.photos_per_place=4",
       "pairs.embedding_dim=8", "pairs.variant_dim=16", "pairs.invariant_backbone=small_cnn",
       "pairs.blend_units=8", "optimizer.name=nadam", "optimizer.learning_rate=0.002",
       "train.steps=2", "train.checkpoint_every=2", "train.log_every=1", "train.plots=false"]


def _train(tmp_path, name, *extra):
    cfg = config.build_config([], TOY + [f"train.model_dir={tmp_path / name}", *extra])
    keras.backend.clear_session()
    return loop.train(cfg)


def test_pair_sets_follow_the_config_and_split_by_map_cells():
    cfg = config.build_config([], TOY + ["pairs.negative_min_m=1000"])
    task = pairs_task.PairsTask(cfg)
    train, held = task.split("train"), task.split("eval")
    photos = task.photos
    held_out = pairs_task.eval_mask(photos, cfg.pairs.eval_share, cfg.data.seed)
    assert not held_out[train.left].any() and not held_out[train.right].any()
    assert held_out[held.left].all() and held_out[held.right].all()
    from finegrain_tf.sampling.geo import haversine_m
    for split in (train, held):
        d = haversine_m(photos.latitudes[split.left], photos.longitudes[split.left],
                        photos.latitudes[split.right], photos.longitudes[split.right])
        assert d[split.labels == 1].max() <= 10 and d[split.labels == 0].min() > 1020
        assert (split.labels == 1).sum() == (split.labels == 0).sum()
    counts = task.data_info.counts
    assert counts["train"]["positives"] == (train.labels == 1).sum()
    assert "duplicates_dropped" in counts["train"]


@pytest.mark.slow
@pytest.mark.parametrize("architecture,mode", [("siamese", "variant"), ("double", "variant"),
                                               ("double", "concat"), ("double", "joint")])
def test_training_steps_of_each_mode(tmp_path, architecture, mode):
    result = _train(tmp_path, mode, f"pairs.architecture={architecture}", f"pairs.mode={mode}")
    assert result.step == 2
    report = result.report
    assert np.isfinite(report["loss"]) and 0 <= report["pair_accuracy"] <= 1
    assert 0 <= report["ranking_violations_percent"] <= 100
    tower = RunDir(result.model_dir).load_model()
    assert tower.layers[-1].name == "embedding"
    assert len(tower.inputs) == 1  # the single tower, not the pair model


@pytest.mark.slow
def test_blend_mode_from_a_variant_run_with_kfold(tmp_path):
    variant = _train(tmp_path, "variant", "pairs.architecture=double", "pairs.mode=variant")
    blend = _train(tmp_path, "blend", "pairs.architecture=double", "pairs.mode=blend",
                   f"pairs.init_from={variant.model_dir}", "pairs.labeled_triplets=60", "pairs.kfold=2",
                   "pairs.kfold_epochs=1", "pairs.residual=both")
    kfold = blend.report["kfold"]
    assert kfold["folds"] == 2 and np.isfinite(kfold["val_loss_mean"])
    assert 0 <= kfold["val_pair_accuracy_mean"] <= 1
    # V was carried over from the variant run and stayed frozen while B trained.
    v_run = RunDir(variant.model_dir).load_model().get_layer("variant").get_weights()
    b_run = RunDir(blend.model_dir).load_model().get_layer("variant").get_weights()
    for a, b in zip(v_run, b_run):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_export_serves_embed_and_lookup(tmp_path):
    import tensorflow as tf

    from finegrain_tf.data.synthetic_geo import generate_geo
    from finegrain_tf.serving.export import export_from_model_dir

    result = _train(tmp_path, "siamese")
    gallery = tmp_path / "gallery"
    data = generate_geo(num_places=3, photos_per_place=2, image_size=32, seed=9, timelapse_users=0,
                        duplicate_share=0.0)
    encoded = []
    for i, image in enumerate(data.photos.images):
        folder = gallery / f"place{data.place[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        png = tf.io.encode_png(image).numpy()
        (folder / f"{i}.png").write_bytes(png)
        encoded.append(png)
    export_dir = export_from_model_dir(result.model_dir, str(tmp_path / "exports"), gallery=str(gallery))
    # The TF1 session loader: the path TF Serving's C++ server uses.
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
        signatures = meta.signature_def
        assert {"embed", "lookup"} <= set(signatures)
        embed = signatures["embed"]
        out = sess.run(embed.outputs["embeddings"].name,
                       {embed.inputs["images"].name: np.asarray(encoded[:2], dtype=object)})
        lookup = signatures["lookup"]
        feed = {lookup.inputs["images"].name: np.asarray(encoded[:1], dtype=object)}
        if "nprobe" in lookup.inputs:
            feed[lookup.inputs["nprobe"].name] = np.int32(1)
        ids = sess.run(lookup.outputs["ids"].name, feed)
    tower = RunDir(result.model_dir).load_model()
    want = tower(tf.image.resize(tf.cast(data.photos.images[:2], tf.float32), (32, 32), antialias=True),
                 training=False).numpy()
    np.testing.assert_allclose(out, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-4)
    assert ids[0][0].decode().endswith("0.png")  # a gallery image is its own nearest neighbour


def test_fuzziness_of_a_photo_pair_set(tmp_path):
    from finegrain_tf.analysis.fuzziness import photo_pair_fuzziness
    from finegrain_tf.data.synthetic_geo import generate_geo
    from finegrain_tf.models.siamese import pooled_backbone

    photos = generate_geo(num_places=16, photos_per_place=4, image_size=32, seed=2).photos
    embedder = pooled_backbone("small_cnn", 32, None, "pooled")
    report = photo_pair_fuzziness(photos, embedder, 32, str(tmp_path / "h.png"), negative_min_m=1000.0)
    assert report["positives"] == report["negatives"] == report["pair_counts"]["positives"] > 0
    assert 0 <= report["ranking_violations_percent"] <= 100
    assert os.path.exists(tmp_path / "h.png")
    json.dumps(report)
