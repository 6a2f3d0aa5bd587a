"""Issue 11's battery, analysis area: the library refuses bad values naming them; the CLI answers with a
one-line usage error (no traceback)."""

import numpy as np
import pytest
from absl import app

from finegrain_tf.analysis.dataset_granularity import granularity
from finegrain_tf.analysis.emd_similarity import domain_similarity, emd_distance, select_source_classes
from finegrain_tf.analysis.features import save_class_means, save_features

from .test_analyze_main import _model, run_cli

LIBRARY = [
    ("emd_nan_means", lambda: emd_distance(np.full((2, 3), np.nan), [1, 1], np.eye(3)[:2], [1, 1]),
     r"source_means contain NaN/inf values \(row 0\)"),
    ("emd_negative_count", lambda: emd_distance(np.eye(3), [1, -2, 1], np.eye(3), [1, 1, 1]),
     r"source_counts must be finite and non-negative, got -2"),
    ("emd_dims_differ", lambda: emd_distance(np.eye(3), [1, 1, 1], np.eye(2), [1, 1]),
     r"feature dimensions differ: source D=3, target D=2"),
    ("similarity_gamma", lambda: domain_similarity(np.eye(2), [1, 1], np.eye(2), [1, 1], gamma=0.0),
     r"gamma must be > 0, got 0.0"),
    ("min_count_drops_all", lambda: select_source_classes(np.eye(2), [1, 1], np.eye(2), [1, 1], 1, min_count=5),
     r"min_count=5 drops every source class"),
    ("granularity_single_sample_class", lambda: granularity(np.eye(3), [0, 0, 1]), r"class"),
    ("granularity_measure", lambda: granularity(np.eye(4), [0, 0, 1, 1], measure="magic"), r"measure must be one of"),
    ("features_shape", lambda: save_features("/tmp/x.npz", np.zeros((3, 2)), np.zeros(2)),
     r"features \[N, F\] and labels \[N\] expected"),
]


@pytest.mark.parametrize("case,message", [(c[1], c[2]) for c in LIBRARY], ids=[c[0] for c in LIBRARY])
def test_library_bad_values(case, message):
    with pytest.raises(ValueError, match=message):
        case()


@pytest.mark.parametrize("argv,message", [
    (["features", "--output=x.npz"], r"--model is required"),
    (["features", "--model=/no/such/model.keras", "--output=x.npz"], r"--model='/no/such/model.keras': no such file"),
    (["features", "--model=MODEL", "--output=x.npz"], r"--images is required"),
    (["features", "--model=MODEL", "--images=/no/such/folder", "--output=x.npz"],
     r"image folder '/no/such/folder' does not exist"),
    (["features", "--model=MODEL", "--images=DIR", "--split=test", "--output=x.npz"], r"--split selects manifest rows"),
    (["features", "--model=MODEL", "--images=DIR"], r"--output and/or --means_output"),
    (["similarity", "--source=/no/such.npz", "--target=/no/such.npz"], r"finegrain-analyze similarity: .*no/such.npz"),
    (["select", "--source=SRC", "--targets=SRC", "--k=ten"], r"--k must be integers, got \['ten'\]"),
    (["similarity", "--source=SRC", "--target=SRC", "--gamma=0"], r"--gamma must be > 0, got 0.0"),
    (["granularity", "--features=SRC"], r"finegrain-analyze granularity: .*is not a features file"),
])
def test_cli_bad_inputs_are_one_line_usage_errors(tmp_path, argv, message):
    _model(tmp_path / "model.keras")
    save_class_means(str(tmp_path / "src.npz"), np.eye(3), [2, 2, 2])
    (tmp_path / "dir" / "a").mkdir(parents=True)
    argv = [a.replace("MODEL", str(tmp_path / "model.keras")).replace("SRC", str(tmp_path / "src.npz"))
            .replace("DIR", str(tmp_path / "dir")) for a in argv]
    with pytest.raises(app.UsageError, match=message):
        run_cli(argv)
