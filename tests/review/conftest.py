"""Fixtures of the review tests: a throw-away PostgreSQL 15 server and one fresh database per test.

The server is Debian's (`initdb`, `pg_ctl` under /usr/lib/postgresql/<version>/bin), started in a
temp dir on a free loopback port and stopped after the session. initdb refuses to run as root, so as
root (CI) the server runs as the system user `finegrain-pg`, created with `useradd --system` when
missing. A server that cannot start fails the tests that need it: they never skip.
"""

from __future__ import annotations

import fcntl
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

PG_USER = "finegrain-pg"
PG_VERSION_PREFERENCE = ("15",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> str:
    """The newest installed PostgreSQL server bin folder (15 preferred)."""
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                     key=lambda p: (os.path.basename(os.path.dirname(p)) not in PG_VERSION_PREFERENCE,
                                    p))
    folders = [f for f in folders if os.path.exists(os.path.join(f, "initdb"))]
    if not folders:
        raise RuntimeError("PostgreSQL server programs not found under /usr/lib/postgresql/*/bin: "
                           "run `make system-deps` (apt-get install postgresql)")
    return folders[0]


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    # pytest-xdist workers start at once: one of them creates the user, under a file lock.
    with open(f"/tmp/{PG_USER}-useradd.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entry = pwd.getpwnam(PG_USER)
        except KeyError:
            result = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                                     "/usr/sbin/nologin", PG_USER], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"cannot create the system user {PG_USER!r} for PostgreSQL: "
                                   f"{result.stderr.strip()}")
            entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """initdb + pg_ctl start in a temp dir; `url(dbname)` for SQLAlchemy; `create_database()`."""

    def __init__(self):
        self.bin = postgres_bin()
        self.user = _server_user()
        # As root, /tmp: the server's user must be able to reach its folder ($TMPDIR may not).
        self.root = tempfile.mkdtemp(prefix="finegrain-pg-", dir="/tmp" if self.user else None)
        if self.user is not None:
            os.chown(self.root, *self.user)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = None

    def _run(self, *args):
        kwargs = {"user": self.user[0], "group": self.user[1], "extra_groups": []} if self.user else {}
        result = subprocess.run([os.path.join(self.bin, args[0]), *args[1:]], cwd=self.root,
                                capture_output=True, text=True, timeout=120, **kwargs)
        if result.returncode != 0:
            log = open(self.log).read() if os.path.exists(self.log) else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n"
                               f"{result.stdout.strip()}\n{log}")
        return result

    def start(self) -> "PostgresServer":
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")
        for attempt in range(3):  # the free port can be taken between probing and binding
            self.port = free_port()
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                       f"-c fsync=off -c max_connections=60")
            try:
                self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60",
                          "start")
                return self
            except RuntimeError:
                if attempt == 2:
                    raise

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def store(store_url):
    from finegrain_tf.review.store import LabelStore

    label_store = LabelStore(store_url)
    label_store.create_schema()
    yield label_store
    label_store.close()


def run_threads(threads) -> None:
    """Start all, then wait for all (so they really run at once)."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class ThreadedServer:
    """The review app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"review app did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def write_png(path, value: int, size: int = 32) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.full((size, size, 3), value % 256, np.uint8)
    pixels[:, : size // 2, 0] = (value * 37) % 256
    Image.fromarray(pixels).save(path)
    return str(path)


class ReviewSetup:
    """A store holding two labelers, classes with exemplars and `n_items` queued PNG candidates,
    served over HTTP. `alice`, `bob`: tokens; `url`: the app; `images`: item_id -> file."""

    def __init__(self, store, folder, n_items=6, classes=("rose", "tulip"), judgements=1):
        self.store = store
        self.alice, self.bob = store.add_labeler("alice"), store.add_labeler("bob")
        for c, name in enumerate(classes):
            exemplars = [write_png(folder / f"ex-{c}-{j}.png", 200 + 10 * c + j) for j in range(3)]
            store.set_class(name, f"Definition of {name}.", exemplars)
        self.images = {}
        queued = []
        for i in range(n_items):
            item_id = f"item-{i}"
            self.images[item_id] = write_png(folder / f"cand-{i}.png", i)
            queued.append({"item_id": item_id, "image_path": self.images[item_id],
                           "proposed_class": classes[i % len(classes)], "round": 1,
                           "score": 1.0 - i / 100, "judgements": judgements})
        store.enqueue(queued)

    def headers(self, token=None):
        return {"Authorization": f"Bearer {token or self.alice}"}


@pytest.fixture
def sqlite_store(tmp_path):
    from finegrain_tf.review.store import LabelStore

    label_store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    label_store.create_schema()
    yield label_store
    label_store.close()


def _serve(folder):
    """Yields a ReviewSetup on a fresh SQLite store in `folder`, served by the app (base URL
    `.url`). The HTTP layer is the same on both backends; the store's suite covers PostgreSQL."""
    from finegrain_tf.review.app import create_app
    from finegrain_tf.review.store import LabelStore

    label_store = LabelStore(f"sqlite:///{folder / 'labels.db'}")
    label_store.create_schema()
    setup = ReviewSetup(label_store, folder)
    with ThreadedServer(create_app(label_store)) as server:
        setup.url = server.url
        yield setup
    label_store.close()


@pytest.fixture
def served(tmp_path):
    yield from _serve(tmp_path)


@pytest.fixture(scope="module")
def served_module(tmp_path_factory):
    """One server for a module whose tests must leave the store unchanged."""
    yield from _serve(tmp_path_factory.mktemp("served"))
