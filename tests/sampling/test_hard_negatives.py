"""Hard-negative files: CSV / JSONL reading, writing, synthetic ids, simulated sibling rejections."""

import json

import numpy as np

from finegrain_tf.sampling import load_hard_negatives, write_hard_negatives
from finegrain_tf.sampling.hard_negatives import (parse_synthetic_id, sibling_hard_negatives,
                                                  synthetic_id)


def test_load_hard_negatives_csv_jsonl(tmp_path):
    csv_path = tmp_path / "hn.csv"
    csv_path.write_text("image,proposed_class\nimg/1.jpg,2\nimg/2.jpg,rose\n")
    hn = load_hard_negatives(str(csv_path), class_names=["daisy", "tulip", "rose"])
    assert hn.items == ["img/1.jpg", "img/2.jpg"] and hn.classes.tolist() == [2, 2]
    jl = tmp_path / "hn.jsonl"
    jl.write_text(json.dumps({"id": "a", "class": 1}) + "\n" + json.dumps({"path": "b", "label": 0}) + "\n")
    hn = load_hard_negatives(str(jl))
    assert hn.items == ["a", "b"] and hn.classes.tolist() == [1, 0] and len(hn) == 2


def test_write_then_read_round_trip(tmp_path):
    path = str(tmp_path / "hn.csv")
    write_hard_negatives(path, ["x/1.png", "x/2.png"], ["tulip", "daisy"])
    hn = load_hard_negatives(path, ["daisy", "tulip"])
    assert hn.items == ["x/1.png", "x/2.png"] and hn.classes.tolist() == [1, 0]
    assert not (tmp_path / "hn.csv.tmp").exists()


def test_synthetic_ids():
    assert parse_synthetic_id(synthetic_id("val", 17)) == ("val", 17)
    assert parse_synthetic_id("/data/a.png") is None


def test_sibling_hard_negatives_stay_in_superclass():
    superclass_of = np.array([0, 0, 1, 1, 2])
    labels = np.array([0, 1, 2, 3, 4, 0])
    hn = sibling_hard_negatives(labels, superclass_of, seed=0)
    assert len(hn) == 5  # class 4 has no sibling
    for item, c in zip(hn.items, hn.classes):
        _, i = parse_synthetic_id(item)
        true = labels[i]
        assert c != true and superclass_of[c] == superclass_of[true]
