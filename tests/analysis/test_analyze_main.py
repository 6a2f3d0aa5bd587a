"""The finegrain-analyze binary: subcommands called in-process through absl flag parsing."""

import json
import os

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
    assert res["plot"] == str(d / "sim.png")  # the PNG lies beside the JSON
    assert (d / "sim.png").read_bytes()[:4] == b"\x89PNG"


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
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_select_plot_axis_starts_at_zero(domains, monkeypatch):
    import matplotlib.figure

    d, *_ = domains
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: saved.append(fig))
    run_cli(["select", f"--source={d / 'src.npz'}", f"--targets={d / 'birds.npz'}", "--k=3",
             f"--plot={d / 'top0.png'}"])
    (ax,) = [a for a in saved[0].axes]
    assert ax.get_xlim()[0] == 0.0
    assert len(ax.texts) == 3  # the values are printed on the bars


def test_help_names_the_subcommands_and_exits_0():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from finegrain_tf.analysis.main import run; run()", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("features", "similarity", "select", "granularity", "--images", "--model"):
        assert name in out.stdout


def test_usage_errors(tmp_path):
    with pytest.raises(app.UsageError, match="usage"):
        run_cli(["nonsense"])
    with pytest.raises(app.UsageError, match="--source"):
        run_cli(["similarity"])
    with pytest.raises(app.UsageError, match="--k has 2 values for 1 targets"):
        save_class_means(str(tmp_path / "a.npz"), np.eye(2), [1, 1])
        run_cli(["select", f"--source={tmp_path / 'a.npz'}", f"--targets={tmp_path / 'a.npz'}", "--k=1,2"])


def _model(path, size=16):
    keras = pytest.importorskip("keras")
    inp = keras.Input((size, size, 3))
    h = keras.layers.GlobalAveragePooling2D()(inp)
    emb = keras.layers.Dense(5, name="embedding")(h)
    keras.Model(inp, keras.layers.Dense(4)(emb)).save(str(path))
    return keras.models.load_model(str(path))


def test_features_of_a_folder_match_the_model(tmp_path, caplog):
    import logging

    import tensorflow as tf

    from finegrain_tf.data import preprocessing, synthetic

    data = synthetic.generate(num_classes=4, num_superclasses=2, train_per_class=2, val_per_class=1,
                              test_per_class=3, image_size=16, seed=0)
    root = synthetic.write_image_folder(data, str(tmp_path / "imgs"), splits=("test",))
    (tmp_path / "imgs" / "test" / data.class_names[0] / "broken.png").write_bytes(b"not an image")
    model = _model(tmp_path / "model.keras")
    with caplog.at_level(logging.INFO, logger="absl"):
        run_cli(["features", f"--model={tmp_path / 'model.keras'}", f"--images={root}/test",
                 f"--output={tmp_path / 'f.npz'}", f"--means_output={tmp_path / 'm.npz'}", "--batch_size=5",
                 "--verbosity=0"])  # INFO, as under app.run
    z = load_features(str(tmp_path / "f.npz"))
    assert z["features"].shape == (12, 5)
    assert sorted(z["labels"].tolist()) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert list(z["class_names"]) == sorted(data.class_names)
    # the features are the embedding layer's output on the centre crops, in sorted file order
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(f"{root}/test") for f in fs
                   if not f.startswith("broken"))
    crops = np.stack([preprocessing.preprocess_eval(preprocessing.decode_image(tf.io.read_file(p)), 16).numpy()
                      for p in files])
    embed = model.get_layer("embedding")
    want = embed(model.layers[1](crops)).numpy()
    np.testing.assert_allclose(z["features"], want, rtol=1e-5, atol=1e-5)
    means, counts, names = load_class_means(str(tmp_path / "m.npz"))
    assert counts.tolist() == [3, 3, 3, 3] and means.shape == (4, 5)
    np.testing.assert_allclose(means[1], z["features"][z["labels"] == 1].mean(axis=0), rtol=1e-5, atol=1e-6)
    # the progress bar knows its total (3 batches of 5 for 12 images) and writes log lines off a terminal
    assert "features: 100% 3/3" in caplog.text


def test_features_of_a_manifest_split(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    rows = ["path,label,split"]
    for i in range(10):
        name = f"img{i}.png"
        (tmp_path / name).write_bytes(tf.io.encode_png(rng.integers(0, 255, (20, 18, 3), dtype=np.uint8)).numpy())
        rows.append(f"{name},{['heron', 'egret'][i % 2]},{'test' if i >= 6 else 'train'}")
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    _model(tmp_path / "model.keras")
    run_cli(["features", f"--model={tmp_path / 'model.keras'}", f"--images={tmp_path / 'set.csv'}",
             "--split=test", f"--output={tmp_path / 'f.npz'}", "--noprogress"])
    z = load_features(str(tmp_path / "f.npz"))
    assert z["features"].shape == (4, 5)
    assert list(z["class_names"]) == ["egret", "heron"]
    assert z["labels"].tolist() == [1, 0, 1, 0]  # rows 6..9: heron, egret, heron, egret
