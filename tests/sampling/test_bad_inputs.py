"""Bad inputs of the samplers and hard-negative files: a ValueError naming the offending value."""

import numpy as np
import pytest

from finegrain_tf.sampling import QuasiOnlineTripletSampler, load_hard_negatives, sample_triplets
from finegrain_tf.sampling.hard_negatives import parse_synthetic_id, write_hard_negatives

X = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
Y = np.repeat(np.arange(2), 4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(positive_fraction=0.0), "positive_fraction must be in \\(0, 1\\], got 0.0"),
    (dict(positive_fraction=1.5), "positive_fraction must be in \\(0, 1\\], got 1.5"),
    (dict(negatives="hard"), "negatives='hard' is not one of"),
    (dict(triplets_per_anchor=0), "triplets_per_anchor must be >= 1, got 0"),
])
def test_sample_triplets_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_triplets(X, Y, **kwargs)


def test_embeddings_and_labels_disagree():
    with pytest.raises(ValueError, match=r"embeddings \(7, 3\) and labels \(8,\) disagree"):
        sample_triplets(X[:7], Y)


def test_hard_negative_embeddings_and_classes_disagree():
    with pytest.raises(ValueError, match=r"hard_negative_embeddings \(2, 3\) and classes \(3,\)"):
        sample_triplets(X, Y, margin=5.0, hard_negative_embeddings=X[:2],
                        hard_negative_classes=np.array([0, 1, 0]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=0), "batch_size and refresh_every must be >= 1, got 0"),
    (dict(refresh_every=0), "got 50, 0"),
    (dict(negatives="semi_hard"), "negatives='semi_hard'"),
])
def test_sampler_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuasiOnlineTripletSampler(Y, **kwargs)


def test_batches_before_refresh():
    with pytest.raises(ValueError, match="call refresh"):
        QuasiOnlineTripletSampler(Y).next_batch()


def test_no_triplet_possible():
    with pytest.raises(ValueError, match="no triplet can be formed"):
        QuasiOnlineTripletSampler(np.arange(8)).refresh(X)  # every class has one image


@pytest.mark.parametrize("content,suffix,message", [
    ("image,class\nx.jpg,lily\n", ".csv", "row 2: unknown class 'lily'"),
    ("image,class\nx.jpg,7\n", ".csv", "row 2: class 7 out of range"),
    ("file,colour\nx.jpg,red\n", ".csv", "row 2 has none of the columns"),
    ('{"id": "a", "class": 0}\n{broken\n', ".jsonl", "hn.jsonl:2: not valid JSON"),
    ('["a", 0]\n', ".jsonl", "hn.jsonl:1: expected a JSON object"),
])
def test_hard_negative_file_rows(tmp_path, content, suffix, message):
    path = tmp_path / f"hn{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_hard_negatives(str(path), class_names=["rose", "tulip"])


def test_missing_hard_negative_file(tmp_path):
    with pytest.raises(ValueError, match="hard-negative file not found: .*missing.csv"):
        load_hard_negatives(str(tmp_path / "missing.csv"))


def test_write_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 items but 1 classes"):
        write_hard_negatives(str(tmp_path / "hn.csv"), ["a", "b"], ["rose"])


def test_malformed_synthetic_id():
    with pytest.raises(ValueError, match="'synthetic:val' is not of the form"):
        parse_synthetic_id("synthetic:val")


@pytest.mark.parametrize("override,message", [
    ("sampler.positive_fraction=0", r"sampler.positive_fraction must be in \(0, 1\], got 0.0"),
    ("sampler.negatives=semi_hard", r"sampler.negatives must be one of \['violating', 'hardest', 'random'\]"),
    ("sampler.refresh_every=0", "sampler.refresh_every must be > 0, got 0"),
    ("sampler.batchnorm_images=-1", "sampler.batchnorm_images must be >= 0, got -1"),
])
def test_sampler_config_validation(override, message):
    from finegrain_tf.train.config import build_config

    with pytest.raises(ValueError, match=message):
        build_config([], [override])
