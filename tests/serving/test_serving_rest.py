"""TF Serving's REST API of the dev server, checked with plain HTTP (requests): row and columnar
:predict with {"b64": ...} images, :classify, version / label paths, status and metadata."""

import base64
import shutil

import numpy as np
import pytest
import requests

from finegrain_tf.serving.model_config import ModelConfig
from serving_utils import CLASS_NAMES, IMAGE_SIZE, MODEL_NAME, RESIZE_SIZE, TOP_K, random_images


@pytest.fixture(scope="module")
def rest(exported, tmp_path_factory):
    """Base URL of /v1/models/<name> on a dev server with versions 1 and 2 (labels stable -> 1, canary -> 2)."""
    from finegrain_tf.serving.server import DevModelServer

    export_dir, _, _ = exported
    base = tmp_path_factory.mktemp("rest") / MODEL_NAME
    for version in (1, 2):
        shutil.copytree(export_dir, base / str(version))
    config = ModelConfig(MODEL_NAME, str(base), policy="all", labels={"stable": 1, "canary": 2})
    srv = DevModelServer(config, port=0, rest_api_port=0, enable_warmup=False, poll_wait_seconds=30).start()
    yield f"http://127.0.0.1:{srv.rest_api_port}/v1/models/{MODEL_NAME}"
    srv.stop(grace=1)


def _b64(data):
    return {"b64": base64.b64encode(data).decode()}


def _reference(exported, images):
    from finegrain_tf.serving import verify
    from finegrain_tf.serving.export_module import ImagePreprocessing

    _, _, model = exported
    return verify.reference_outputs(model, "classify", images, ImagePreprocessing(IMAGE_SIZE, RESIZE_SIZE), TOP_K,
                                    CLASS_NAMES)


def test_row_predict_with_b64_images(exported, rest):
    images = random_images(3, seed=41, fmt="mixed")
    response = requests.post(f"{rest}:predict", json={"signature_name": "classify",
                                                      "instances": [_b64(b) for b in images]}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    want = _reference(exported, images)
    assert len(predictions) == 3
    for i, row in enumerate(predictions):
        assert set(row) == {"classes", "class_names", "scores"}
        assert row["classes"] == want["classes"][i].tolist()
        assert row["class_names"] == [n.decode() for n in want["class_names"][i]]
        np.testing.assert_allclose(row["scores"], want["scores"][i], atol=1e-5)


def test_row_predict_with_named_inputs_and_columnar_predict_agree(rest):
    images = random_images(2, seed=42)
    row = requests.post(f"{rest}:predict", json={"signature_name": "embed",
                                                 "instances": [{"images": _b64(b)} for b in images]}, timeout=60)
    col = requests.post(f"{rest}:predict", json={"signature_name": "embed",
                                                 "inputs": {"images": [_b64(b) for b in images]}}, timeout=60)
    assert row.status_code == 200 and col.status_code == 200, (row.text, col.text)
    emb_row, emb_col = np.array(row.json()["predictions"]), np.array(col.json()["outputs"])
    assert emb_row.shape == (2, 8)
    np.testing.assert_allclose(emb_row, emb_col, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb_row, axis=1), 1.0, atol=1e-5)


def test_columnar_lookup_with_and_without_nprobe(rest):
    images = [_b64(b) for b in random_images(2, seed=43)]
    default = requests.post(f"{rest}:predict", json={"signature_name": "lookup", "inputs": {"images": images}},
                            timeout=60).json()["outputs"]
    explicit = requests.post(f"{rest}:predict", json={"signature_name": "lookup",
                                                      "inputs": {"images": images, "nprobe": 1}},
                             timeout=60).json()["outputs"]
    assert default == explicit and np.array(default["ids"]).shape == (2, TOP_K)
    assert np.all(np.diff(np.array(default["distances"]), axis=1) >= 0)


def test_classify_endpoint(exported, rest):
    images = random_images(2, seed=44)
    body = {"signature_name": "classify_examples", "examples": [{"image/encoded": _b64(b)} for b in images]}
    response = requests.post(f"{rest}:classify", json=body, timeout=60)
    assert response.status_code == 200, response.text
    want = _reference(exported, images)
    results = response.json()["results"]
    for i, row in enumerate(results):
        assert [label for label, _ in row] == [n.decode() for n in want["class_names"][i]]
        np.testing.assert_allclose([score for _, score in row], want["scores"][i], atol=1e-5)


@pytest.mark.parametrize("path,version", [("", 2), ("/versions/1", 1), ("/labels/stable", 1), ("/labels/canary", 2)])
def test_versions_and_labels_in_the_path(rest, path, version):
    images = [_b64(b) for b in random_images(1, seed=45)]
    response = requests.post(f"{rest}{path}:predict", json={"signature_name": "classify", "instances": images},
                             timeout=60)
    assert response.status_code == 200, response.text
    status = requests.get(f"{rest}{path}", timeout=60).json()["model_version_status"]
    if path:
        assert status == [{"version": str(version), "state": "AVAILABLE",
                           "status": {"error_code": "OK", "error_message": ""}}]
    else:
        assert [s["version"] for s in status] == ["1", "2"]


def test_metadata(rest):
    response = requests.get(f"{rest}/metadata", timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"] == {"name": MODEL_NAME, "signature_name": "", "version": "2"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert sigs["classify_examples"]["method_name"] == "tensorflow/serving/classify"
    assert sigs["classify"]["inputs"]["images"]["dtype"] == "DT_STRING"


def test_rest_client_and_stdlib_urllib_agree(rest):
    """The project's RestClient against a plain urllib request."""
    import json
    import urllib.request

    from finegrain_tf.serving.client import RestClient

    images = random_images(2, seed=46)
    url = rest.rsplit("/v1/", 1)[0]
    with RestClient(url, MODEL_NAME, label="stable") as client:
        ours = client.classify(images)
    body = json.dumps({"signature_name": "classify", "inputs": {"images": [_b64(b) for b in images]}}).encode()
    request = urllib.request.Request(f"{rest}/labels/stable:predict", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        plain = json.loads(response.read())["outputs"]
    assert ours["class_names"].tolist() == plain["class_names"]
    np.testing.assert_allclose(ours["scores"].astype(float), plain["scores"])
