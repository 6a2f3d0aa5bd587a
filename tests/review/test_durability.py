"""Durability and concurrency of the review server, over plain HTTP (`requests`), with the server a
real subprocess (`python -m finegrain_tf.review.main serve`), on SQLite and on PostgreSQL.

- 500 verdicts from 4 client threads; the server is killed with SIGKILL twice mid-stream and
  restarted; clients retry unanswered requests with the same request_id. Every verdict answered 200
  must be in the store, and each exactly once.
- 8 labelers lease and judge at once: no verdict lost or duplicated, no item leased to more labelers
  than the judgements it asks for.
"""

import collections
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from finegrain_tf.review.store import LabelStore

from .conftest import free_port, run_threads

pytestmark = pytest.mark.slow


class ServerProcess:
    """`finegrain-review serve` in a subprocess; `kill()` sends SIGKILL, `start()` (re)starts it on
    the same port."""

    def __init__(self, url, log_path):
        self.db, self.port, self.log_path = url, free_port(), log_path
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, token):
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "finegrain_tf.review.main", "serve", "--db", self.db,
             "--host", "127.0.0.1", "--port", str(self.port), "--log_level", "warning"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"review server exited: {open(self.log_path).read()}")
            try:
                if requests.get(f"{self.base}/api/stats", timeout=5,
                                headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError(f"review server did not answer: {open(self.log_path).read()}")

    def kill(self):
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("postgres").create_database()


def post_until_answered(session, base, token, body, deadline):
    """POST until a 200 comes back (the server may be dead or restarting). Returns (reply JSON,
    attempts cut off mid-request by a kill, attempts refused while the server was down)."""
    cut, refused = 0, 0
    while time.monotonic() < deadline:
        try:
            reply = session.post(f"{base}/api/verdicts", json=body, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"})
        except requests.RequestException as e:
            if "refused" in str(e):
                refused += 1
            else:  # sent, then the connection died: maybe committed, maybe not
                cut += 1
            time.sleep(0.05)
            continue
        assert reply.status_code == 200, (reply.status_code, reply.text)
        return reply.json(), cut, refused
    raise AssertionError(f"no answer for {body} before the deadline")


def test_sigkill_mid_stream_loses_and_duplicates_nothing(backend_url, tmp_path):
    store = LabelStore(backend_url)
    store.create_schema()
    token = store.add_labeler("alice")
    n = 500
    store.enqueue([{"item_id": f"it-{i:03d}", "image_path": f"/pool/{i}.jpg",
                    "proposed_class": f"c{i % 5}", "round": 1, "score": 0.5} for i in range(n)])
    server = ServerProcess(backend_url, tmp_path / "server.log")
    server.start(token)
    bodies = [{"item_id": f"it-{i:03d}", "verdict": ("yes", "no", "skip")[i % 3],
               "request_id": f"req-{i:03d}"} for i in range(n)]
    work = iter(bodies)
    work_lock, acked_lock = threading.Lock(), threading.Lock()
    acked, replayed, cut, refused = [], [], [0], [0]
    kill_points = [150, 350]
    rng = random.Random(0)
    deadline = time.monotonic() + 120

    def client():
        session = requests.Session()
        while True:
            with work_lock:
                body = next(work, None)
            if body is None:
                return
            answer, cut_off, down = post_until_answered(session, server.base, token, body, deadline)
            with acked_lock:
                acked.append(body["request_id"])
                cut[0] += cut_off
                refused[0] += down
                if answer["replayed"]:
                    replayed.append(body["request_id"])

    def killer():
        for point in kill_points:
            while len(acked) < point:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.02))  # anywhere in the life of the requests in flight
            server.kill()  # requests in flight now get no answer; their clients retry
            time.sleep(0.2)
            server.start(token)

    threads = [threading.Thread(target=client) for _ in range(4)] + [threading.Thread(target=killer)]
    with server:  # stopped whatever happens
        run_threads(threads)
    judged = store.judgements(include_undone=True)
    stored = collections.Counter(j["request_id"] for j in judged)
    lost = [r for r in acked if r not in stored]
    duplicated = [r for r, c in stored.items() if c > 1]
    per_item = collections.Counter(j["item_id"] for j in judged)
    audit = [a for a in store.audit() if a["action"] == "verdict"]
    print(f"\n[{store.dialect}] acknowledged {len(acked)} of {n}, stored {len(judged)}, lost "
          f"{len(lost)}, duplicated {len(duplicated)}; kills {len(kill_points)}: requests cut off "
          f"mid-flight {cut[0]}, refused while down {refused[0]}, retries answered as replays of "
          f"a verdict committed before the kill {len(replayed)}")
    assert len(acked) == n and len(set(acked)) == n
    assert lost == [] and duplicated == []
    assert len(judged) == n and max(per_item.values()) == 1 and len(audit) == n
    assert {(j["item_id"], j["verdict"]) for j in judged} == {(b["item_id"], b["verdict"])
                                                              for b in bodies}
    assert cut[0] >= 1  # the kills landed while requests were in flight
    store.close()


def test_eight_concurrent_labelers(backend_url, tmp_path):
    store = LabelStore(backend_url)
    store.create_schema()
    tokens = [store.add_labeler(f"labeler-{i}") for i in range(8)]
    single, triple = 160, 20
    store.enqueue([{"item_id": f"s{i:03d}", "image_path": "/p.jpg", "proposed_class": "a",
                    "round": 1, "score": 0.5} for i in range(single)] +
                  [{"item_id": f"t{i:03d}", "image_path": "/p.jpg", "proposed_class": "b",
                    "round": 1, "score": 0.9, "judgements": 3} for i in range(triple)])
    server = ServerProcess(backend_url, tmp_path / "server.log")
    server.start(tokens[0])
    leased_to = collections.defaultdict(set)  # item -> labelers it was ever leased to
    posted = collections.Counter()
    errors, lock = [], threading.Lock()
    start = threading.Barrier(8)

    def labeler(index, token):
        session = requests.Session()
        headers = {"Authorization": f"Bearer {token}"}
        start.wait()
        try:
            for batch in itertools.count():
                queue = session.get(f"{server.base}/api/queue?limit=4", headers=headers, timeout=30)
                assert queue.status_code == 200, queue.text
                items = queue.json()["items"]
                if not items:
                    return
                with lock:
                    for item in items:
                        leased_to[item["item_id"]].add(index)
                for item in items:
                    body = {"item_id": item["item_id"], "verdict": "yes" if index % 3 else "no",
                            "request_id": f"{index}:{item['item_id']}"}
                    reply = session.post(f"{server.base}/api/verdicts", json=body, headers=headers,
                                         timeout=30)
                    assert reply.status_code == 200, reply.text
                    with lock:
                        posted[item["item_id"]] += 1
        except Exception as e:  # reported by the main thread
            errors.append(repr(e))

    threads = [threading.Thread(target=labeler, args=(i, t)) for i, t in enumerate(tokens)]
    with server:  # stopped whatever happens
        run_threads(threads)
    judged = store.judgements(include_undone=True)
    per_item = collections.Counter(j["item_id"] for j in judged)
    pairs = collections.Counter((j["item_id"], j["labeler"]) for j in judged)
    double_leased = [i for i, who in leased_to.items() if len(who) > (3 if i[0] == "t" else 1)]
    print(f"\n[{store.dialect}] 8 labelers: items {single + triple}, verdicts posted "
          f"{sum(posted.values())}, stored {len(judged)}, double-leased {len(double_leased)}, "
          f"labelers active {len({w for who in leased_to.values() for w in who})}")
    assert errors == []
    assert double_leased == []
    assert max(pairs.values()) == 1  # no labeler judged an item twice
    assert all(per_item[f"s{i:03d}"] == 1 for i in range(single))
    assert all(per_item[f"t{i:03d}"] == 3 for i in range(triple))
    assert dict(per_item) == dict(posted)  # every 200 is stored, nothing else is
    assert store.pending() == 0 and len(store.decisions()) == single + triple
    store.close()
