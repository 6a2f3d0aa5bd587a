"""The finegrain-analyze binary: subcommands called in-process through absl flag parsing."""

import json

import numpy as np
import pytest
from absl import app, flags

from finegrain_tf.analysis import main as amain
from finegrain_tf.analysis.dataset_granularity import granularity
from finegrain_tf.analysis.emd_similarity import (
    domain_similarity, read_class_list, select_source_classes, union_source_classes)
from finegrain_tf.analysis.features import load_class_means, load_features, save_class_means, save_features


def run_cli(argv):
    flags.FLAGS.unparse_flags()
    rest = flags.FLAGS(["finegrain-analyze"] + list(argv))
    try:
        return amain.main(rest)
    finally:
        flags.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    d = tmp_path_factory.mktemp("domains")
    rng = np.random.default_rng(0)
    src = rng.normal(size=(12, 5))
    src_c = rng.integers(1, 30, 12)
    tgts = {}
    for name, shift in (("birds", 0.3), ("cars", -0.5)):
        tm, tc = rng.normal(size=(4, 5)) + shift, rng.integers(5, 20, 4)
        tgts[name] = (tm, tc)
        save_class_means(str(d / f"{name}.npz"), tm, tc)
    save_class_means(str(d / "src.npz"), src, src_c, class_names=[f"s{i}" for i in range(12)])
    return d, src, src_c, tgts


def test_similarity(domains, capsys):
    d, src, src_c, tgts = domains
    out = d / "sim.json"
    assert run_cli(["similarity", f"--source={d / 'src.npz'}", f"--target={d / 'birds.npz'}",
                    f"--json={out}"]) == 0
    res = json.loads(out.read_text())
    assert res["similarity"] == pytest.approx(domain_similarity(src, src_c, *tgts["birds"]), rel=1e-12)
    assert '"similarity"' in capsys.readouterr().out


def test_select_writes_class_list_plot_and_json(domains):
    d, src, src_c, tgts = domains
    out = d / "classes.txt"
    run_cli(["select", f"--source={d / 'src.npz'}", f"--targets={d / 'birds.npz'},{d / 'cars.npz'}",
             "--k=3,2", f"--output={out}", f"--plot={d / 'top.png'}", f"--json={d / 'sel.json'}"])
    want = union_source_classes([select_source_classes(src, src_c, *tgts["birds"], 3),
                                 select_source_classes(src, src_c, *tgts["cars"], 2)])
    assert read_class_list(str(out)) == want
    res = json.loads((d / "sel.json").read_text())
    assert res["targets"]["birds"]["names"] == [f"s{i}" for i in res["targets"]["birds"]["indices"]]
    assert (d / "top.png").read_bytes()[:4] == b"\x89PNG"


def test_granularity(tmp_path):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 6)
    x = rng.normal(size=(18, 4)) + 2 * rng.normal(size=(3, 4))[y]
    save_features(str(tmp_path / "f.npz"), x, y)
    run_cli(["granularity", f"--features={tmp_path / 'f.npz'}", "--measures=rankm,rs",
             f"--json={tmp_path / 'g.json'}"])
    res = json.loads((tmp_path / "g.json").read_text())["granularity"]
    assert res["rankm"] == pytest.approx(granularity(x, y, "rankm"), rel=1e-12)
    assert res["rs"] == pytest.approx(granularity(x, y, "rs"), rel=1e-12)


def test_usage_errors(tmp_path):
    with pytest.raises(app.UsageError, match="usage"):
        run_cli(["nonsense"])
    with pytest.raises(app.UsageError, match="--source"):
        run_cli(["similarity"])
    with pytest.raises(app.UsageError, match="--k has 2 values for 1 targets"):
        save_class_means(str(tmp_path / "a.npz"), np.eye(2), [1, 1])
        run_cli(["select", f"--source={tmp_path / 'a.npz'}", f"--targets={tmp_path / 'a.npz'}", "--k=1,2"])


def test_features_from_model_dir(tmp_path):
    keras = pytest.importorskip("keras")
    from finegrain_tf.train.config import ExperimentConfig, apply_override, save_params

    cfg = ExperimentConfig()
    for o in ("data.synthetic.num_classes=4", "data.synthetic.num_superclasses=2",
              "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
              "data.synthetic.test_per_class=3", "data.synthetic.image_size=16", "data.image_size=16",
              "data.batch_size=4"):
        cfg = apply_override(cfg, o)
    model_dir = tmp_path / "run"
    save_params(cfg, str(model_dir))
    inp = keras.Input((16, 16, 3))
    h = keras.layers.GlobalAveragePooling2D()(inp)
    emb = keras.layers.Dense(5, name="embedding")(h)
    keras.Model(inp, keras.layers.Dense(4)(emb)).save(str(model_dir / "model.keras"))
    run_cli(["features", f"--model_dir={model_dir}", f"--output={tmp_path / 'f.npz'}",
             f"--means_output={tmp_path / 'm.npz'}", "--noprogress"])
    z = load_features(str(tmp_path / "f.npz"))
    assert z["features"].shape == (12, 5)
    assert sorted(z["labels"].tolist()) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert len(z["class_names"]) == 4
    means, counts, names = load_class_means(str(tmp_path / "m.npz"))
    assert counts.tolist() == [3, 3, 3, 3] and means.shape == (4, 5)
    np.testing.assert_allclose(means[1], z["features"][z["labels"] == 1].mean(axis=0), rtol=1e-5, atol=1e-6)
