"""Test/demo harness: run the `finegrain-serve` dev server (itself a test harness speaking TF Serving's
protocol, not a production server) in a subprocess and wait until its models are AVAILABLE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc
from absl import logging


class ServerProcess:
    """A `finegrain-serve` subprocess; `.target` is its gRPC "host:port", `.rest_url` its REST base URL
    ("http://host:port", or None without --rest_api_port)."""

    def __init__(self, process: subprocess.Popen, host: str, ports: dict, log_path: str):
        self.process = process
        self.target = f"{host}:{ports['grpc']}"
        self.rest_url = f"http://{host}:{ports['rest']}" if ports.get("rest") else None
        self.log_path = log_path

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _read_ports(port_file: str) -> dict | None:
    if not os.path.exists(port_file):
        return None
    with open(port_file) as f:
        text = f.read().strip()
    return json.loads(text) if text else None


def start_server_process(model_base_path: str | None = None, model_name: str | None = None, port: int = 0,
                         host: str = "127.0.0.1", extra_flags=(), timeout: float = 180.0, env=None,
                         rest_api_port: int | None = None, model_config_file: str | None = None,
                         wait_for: list[str] | None = None) -> ServerProcess:
    """Starts `python -m finegrain_tf.serving.server_main` and waits until the models in `wait_for`
    (default: `model_name`) are AVAILABLE. `model_base_path` is `<base>/<model_name>` (as for
    tensorflow_model_server); or give `model_config_file` (then `wait_for` names the models)."""
    from finegrain_tf.serving.client import Client

    workdir = tempfile.mkdtemp(prefix="finegrain-serve-")
    port_file = os.path.join(workdir, "ports.json")
    log_path = os.path.join(workdir, "server.log")
    cmd = [sys.executable, "-m", "finegrain_tf.serving.server_main", f"--port={port}", f"--host={host}",
           f"--port_file={port_file}"]
    if model_config_file:
        cmd.append(f"--model_config_file={model_config_file}")
    else:
        cmd += [f"--model_name={model_name}", f"--model_base_path={model_base_path}"]
    if rest_api_port is not None:
        cmd.append(f"--rest_api_port={rest_api_port}")
    cmd += list(extra_flags)
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    server = None
    while time.monotonic() < deadline and process.poll() is None:
        ports = _read_ports(port_file)
        if ports:
            server = ServerProcess(process, host, ports, log_path)
            break
        time.sleep(0.1)
    if server is not None:
        try:
            for name in wait_for or [model_name]:
                with Client(server.target, name, timeout=5.0, max_retries=0) as client:
                    client.wait_until_available(timeout=max(1.0, deadline - time.monotonic()))
            return server
        except (TimeoutError, RuntimeError, grpc.RpcError) as e:
            logging.error("finegrain-serve not ready: %s", e)
    if process.poll() is None:
        process.kill()
        process.wait()
    with open(log_path, errors="replace") as f:
        tail = f.read()[-3000:]
    raise RuntimeError(f"finegrain-serve did not become ready (exit code {process.returncode}); log:\n{tail}")
