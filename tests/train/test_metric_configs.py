"""The configs/metric_*.yaml files differ exactly where seed 000's Table 2.1 / 2.3 methods differ."""

import dataclasses
import functools
import os

import pytest

from finegrain_tf.train.config import build_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (reference method, method, the config keys that make the difference) -- §2.4.1 and §2.4.3.
TABLE = [
    ("softmax", "softmax_hns", {"loss.name", "data.hard_negatives"}),  # + hard negatives, one class
    ("softmax_hns", "softmax_hnm", {"loss.name"}),  # one hard-negative class per class
    # a triplet network classifying by anchor soft voting; batches count triplets (16 x 3 = 48 images)
    ("softmax", "triplet_naive", {"task.name", "model.head", "loss.triplet_weight", "data.batch_size",
                                  "sampler.negatives", "sampler.positive_fraction",
                                  "sampler.refresh_every"}),
    ("triplet_naive", "triplet_hn", {"sampler.negatives"}),  # only margin-violating negatives
    ("triplet_hn", "triplet_m", {"sampler.positive_fraction"}),  # local positives
    ("triplet_m", "triplet_a", {"loss.triplet_weight"}),  # anchors learned with eq 2.5
    ("triplet_a", "triplet_a_hn", {"data.hard_negatives"}),  # human hard negatives mixed 1:1
]


@functools.lru_cache(maxsize=None)
def flat(method):
    cfg = build_config([os.path.join(REPO, "configs", f"metric_{method}.yaml")])

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(dataclasses.asdict(cfg), ""))


@pytest.mark.parametrize("reference,method,keys", TABLE, ids=[m for _, m, _ in TABLE])
def test_configs_differ_exactly_where_the_methods_differ(reference, method, keys):
    a, b = flat(reference), flat(method)
    assert {k for k in a if a[k] != b[k]} == keys


def test_every_metric_config_is_in_the_table():
    shipped = {f[len("metric_"):-len(".yaml")] for f in os.listdir(os.path.join(REPO, "configs"))
               if f.startswith("metric_") and f.endswith(".yaml")}
    # metric_pretrain.yaml is the pre-training every method starts from, not a method
    assert shipped == {m for pair in TABLE for m in pair[:2]} | {"pretrain"}


def test_the_differences_mean_what_the_seed_says():
    naive, hn, m, a, a_hn = (flat(x) for x in ("triplet_naive", "triplet_hn", "triplet_m", "triplet_a",
                                                "triplet_a_hn"))
    assert naive["sampler.negatives"] == "random" and naive["sampler.positive_fraction"] == 1.0
    assert hn["sampler.negatives"] == "violating"
    assert m["sampler.positive_fraction"] == 0.6  # 60% nearest neighbours (§2.4.2)
    assert m["loss.triplet_weight"] == 1.0 and a["loss.triplet_weight"] == 0.1  # omega (§2.4.2)
    assert a_hn["data.hard_negatives"] and not a["data.hard_negatives"]
    for cfg in (naive, hn, m, a, a_hn):
        assert cfg["task.name"] == "metric" and cfg["model.head"] == "anchor_vote"
        assert (cfg["model.embedding_dim"], cfg["model.anchors_per_class"], cfg["model.anchor_gamma"],
                cfg["loss.margin"]) == (64, 3, 5.0, 0.2)  # D, K, gamma, m of §2.4.2
        assert 3 * cfg["data.batch_size"] == flat("softmax")["data.batch_size"]
    assert flat("softmax_hns")["loss.name"] == "hns" and flat("softmax_hnm")["loss.name"] == "hnm"
