"""The three binaries end to end in subprocesses: finegrain-export -> finegrain-serve (gRPC + REST) ->
finegrain-predict over gRPC and REST (a bad file reported by name, the others answered), then SIGTERM
for a graceful shutdown."""

import os
import subprocess
import sys

import pytest

from serving_utils import MODEL_NAME, random_images

pytestmark = pytest.mark.slow


def _run(args, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300, **kw)


def test_export_serve_predict_sigterm(model_dir, gallery_folder, tmp_path):
    from finegrain_tf.serving import Client, start_server_process

    base = str(tmp_path / "exports")
    os.makedirs(os.path.join(base, MODEL_NAME))
    images = []
    for i, data in enumerate(random_images(2, seed=9)):
        path = tmp_path / f"q{i}.png"
        path.write_bytes(data)
        images.append(str(path))
    # The server starts on an empty model dir and picks up the version the exporter renames into place.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    exporter = subprocess.Popen([sys.executable, "-m", "finegrain_tf.serving.export_main", f"--model_dir={model_dir}",
                                 f"--export_base={base}", f"--gallery={gallery_folder}", "--version=3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        server = start_server_process(os.path.join(base, MODEL_NAME), MODEL_NAME, timeout=300, rest_api_port=0)
    finally:
        stdout, stderr = exporter.communicate(timeout=300)
    try:
        assert exporter.returncode == 0, stderr[-2000:]
        export_dir = os.path.join(base, MODEL_NAME, "3")
        assert stdout.strip().splitlines()[-1] == export_dir
        assert "verified" in stderr
        with Client(server.target, MODEL_NAME) as client:
            assert client.model_status()[0] == {"version": 3, "state": "AVAILABLE", "error": ""}
            expected = client.classify([open(p, "rb").read() for p in images])
        out = _run(["finegrain_tf.serving.predict_main", f"--server={server.target}", f"--model={MODEL_NAME}",
                    "--signature=classify", *images])
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [line.split() for line in out.stdout.splitlines()[2:]]
        assert rows[0][:3] == [images[0], "1", expected["class_names"][0, 0]]
        assert len(rows) == 2 * expected["classes"].shape[1]
        assert "Traceback" not in out.stderr and "deprecated" not in stderr
        # REST, with an undecodable file in the middle: reported by name, the others still answered
        bad = tmp_path / "not_an_image.jpg"
        bad.write_bytes(b"plain text, not a JPEG")
        rest_port = server.rest_url.rsplit(":", 1)[1]
        out = _run(["finegrain_tf.serving.predict_main", "--rest", f"--server=127.0.0.1:{rest_port}",
                    f"--model={MODEL_NAME}", "--signature=classify", "--k=1", images[0], str(bad), images[1]])
        assert out.returncode == 1, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        assert f"{bad}: " in out.stderr and "image" in out.stderr.split(str(bad))[1]
        rows = [line.split() for line in out.stdout.splitlines()[2:]]
        assert [r[:3] for r in rows] == [[images[0], "1", expected["class_names"][0, 0]],
                                         [images[1], "1", expected["class_names"][1, 0]]]
    finally:
        code = server.stop(timeout=60)
    assert code == 0, server.log()[-2000:]
    assert "shutting down gracefully" in server.log()
