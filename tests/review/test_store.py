"""The label store's suite, run against SQLite and a real PostgreSQL server (conftest.py)."""

import collections
import itertools
import os
import random
import threading
import time

import pytest
import sqlalchemy as sa

from finegrain_tf.review import store as store_module
from finegrain_tf.review.store import AuthError, Conflict, LabelStore, NothingToUndo, UnknownItem

from .conftest import run_threads


def make_items(n, k=1, round=1, classes=("rose", "tulip"), start=0):
    return [{"item_id": f"r{round}-{i}", "image_path": f"/pool/{i}.jpg",
             "proposed_class": classes[i % len(classes)], "round": round, "score": 1.0 - i / 1000,
             "judgements": k} for i in range(start, start + n)]


def assert_vote_counters_match(store):
    """The items' yes/no counters equal the standing verdicts counted one by one."""
    counted = collections.Counter((j["item_id"], j["verdict"]) for j in store.judgements())
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(store_module.items.c.item_id, store_module.items.c.yes_votes,
                                      store_module.items.c.no_votes)).all()
    assert rows
    for item_id, yes, no in rows:
        assert (yes, no) == (counted[(item_id, "yes")], counted[(item_id, "no")]), item_id


def test_sqlite_connections_use_wal_and_full_sync(tmp_path):
    label_store = LabelStore(f"sqlite:///{tmp_path / 'a.db'}")
    label_store.create_schema()
    # Two DB-API connections checked out at once are two distinct connections: both configured.
    first, second = label_store.engine.raw_connection(), label_store.engine.raw_connection()
    for conn in (first, second):
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        conn.close()


def test_postgresql_url_uses_psycopg3(postgres):
    url = postgres.create_database()
    assert url.startswith("postgresql://")
    label_store = LabelStore(url)
    assert label_store.engine.dialect.driver == "psycopg"
    label_store.create_schema()
    with label_store.engine.connect() as conn:  # the server of the bin folder the fixture found
        version = conn.exec_driver_sql("SHOW server_version").scalar()
    assert version.split(".")[0] == os.path.basename(os.path.dirname(postgres.bin))
    label_store.close()


@pytest.mark.parametrize("url, message", [
    ("sqlite://", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
    ("mysql://x@localhost/db", "sqlite:///FILE or postgresql"),
    ("", "non-empty"),
])
def test_bad_urls(url, message):
    with pytest.raises(ValueError, match=message):
        LabelStore(url)


def test_tokens_are_stored_hashed(store):
    token = store.add_labeler("alice")
    assert store.labeler_name(token) == "alice"
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(store_module.labelers.c.token_hash)).scalar_one()
    assert token not in stored and stored == store_module.hash_token(token)
    with pytest.raises(ValueError, match="'alice' already exists"):
        store.add_labeler("alice")
    for bad in (None, "", "not-a-token"):
        with pytest.raises(AuthError):
            store.labeler_name(bad)


def test_enqueue_is_idempotent_on_item_id(store):
    assert store.enqueue(make_items(5)) == 5
    changed = make_items(7)
    changed[0]["proposed_class"] = "lily"
    assert store.enqueue(changed) == 2
    assert store.item("r1-0")["proposed_class"] == "rose"  # the first queueing stands
    assert store.pending() == 7
    with pytest.raises(UnknownItem, match="'nope'"):
        store.item("nope")


def test_numpy_numbers_are_accepted(store):
    import numpy as np

    item = dict(make_items(1)[0], round=np.int64(2), score=np.float32(0.75), judgements=np.int32(2))
    assert store.enqueue([item]) == 1
    assert store.item("r1-0")["round"] == 2 and store.item("r1-0")["judgements"] == 2
    assert store.lease(store.add_labeler("alice"), np.int64(1))[0]["score"] == 0.75


@pytest.mark.parametrize("bad, message", [("a\x00b", "NUL"), ("\ud800", "valid Unicode")])
def test_text_no_database_can_hold_is_refused(store, bad, message):
    """PostgreSQL rejects NUL in text and both drivers fail on lone surrogates: the store says so
    with a ValueError (HTTP 400) instead of a database error (HTTP 500)."""
    token = store.add_labeler("alice")
    store.enqueue(make_items(1))
    with pytest.raises(ValueError, match=message):
        store.enqueue([dict(make_items(1)[0], item_id=bad)])
    with pytest.raises(ValueError, match=message):
        store.enqueue([dict(make_items(1)[0], item_id="x", proposed_class=bad)])
    with pytest.raises(ValueError, match=message):
        store.record_verdict(token, bad, "yes", "q1")
    with pytest.raises(ValueError, match=message):
        store.record_verdict(token, "r1-0", "yes", bad)
    with pytest.raises(ValueError, match=message):
        store.undo(token, bad)
    with pytest.raises(ValueError, match=message):
        store.add_labeler(bad)
    with pytest.raises(ValueError, match=message):
        store.set_class("rose", "", [bad])
    with pytest.raises(UnknownItem):
        store.item(bad)
    with pytest.raises(AuthError):
        store.labeler_name(bad)
    assert store.judgements(include_undone=True) == [] and store.pending() == 1


def test_class_info(store):
    assert store.class_info("rose") == {"name": "rose", "definition": "", "exemplars": []}
    store.set_class("rose", "Five petals, thorny stem.", ["/ex/a.jpg", "/ex/b.jpg"])
    store.set_class("rose", "Thorny.", ["/ex/c.jpg"])
    assert store.class_info("rose") == {"name": "rose", "definition": "Thorny.",
                                        "exemplars": ["/ex/c.jpg"]}


def test_single_judgement_items_are_leased_to_one_labeler(store):
    alice, bob = store.add_labeler("alice"), store.add_labeler("bob")
    store.enqueue(make_items(6))
    first = [i["item_id"] for i in store.lease(alice, 4)]
    second = [i["item_id"] for i in store.lease(bob, 4)]
    assert len(first) == 4 and len(second) == 2 and not set(first) & set(second)
    # Leasing again returns (and renews) what the labeler holds; nothing new is free.
    assert [i["item_id"] for i in store.lease(alice, 10)] == first
    assert [i["item_id"] for i in store.lease(alice, 2)] == first[:2]
    # Bob may not judge Alice's item while her lease runs.
    with pytest.raises(Conflict, match=first[0]):
        store.record_verdict(bob, first[0], "yes", "b-1")


def test_expired_leases_go_back_to_the_queue(store):
    alice, bob = store.add_labeler("alice"), store.add_labeler("bob")
    store.enqueue(make_items(2))
    assert len(store.lease(alice, 2, lease_seconds=1.0)) == 2
    assert store.lease(bob, 2) == []
    time.sleep(1.5)
    assert sorted(i["item_id"] for i in store.lease(bob, 2)) == ["r1-0", "r1-1"]
    assert store.lease(alice, 2) == []  # her lapsed leases are not revived
    # Alice's late verdict conflicts: Bob holds the item now.
    with pytest.raises(Conflict):
        store.record_verdict(alice, "r1-0", "no", "a-late")


def test_lease_order_and_fields(store):
    alice = store.add_labeler("alice")
    store.enqueue(make_items(3, round=2) + make_items(3, round=1))
    leased = store.lease(alice, 10)
    assert [(i["round"], i["proposed_class"]) for i in leased] == [
        (1, "rose"), (1, "rose"), (1, "tulip"), (2, "rose"), (2, "rose"), (2, "tulip")]
    assert set(leased[0]) == {"item_id", "image_path", "proposed_class", "round", "score",
                              "judgements", "lease_expires"}


def test_record_verdict_is_idempotent_on_request_id(store):
    alice = store.add_labeler("alice")
    store.enqueue(make_items(2))
    first = store.record_verdict(alice, "r1-0", "yes", "req-1")
    again = store.record_verdict(alice, "r1-0", "yes", "req-1")
    assert first == dict(again, replayed=False) and again["replayed"]
    assert first["decision"] == "yes"
    assert len(store.judgements(include_undone=True)) == 1
    assert [a["action"] for a in store.audit()] == ["verdict"]
    with pytest.raises(Conflict, match="req-1"):
        store.record_verdict(alice, "r1-1", "yes", "req-1")
    with pytest.raises(Conflict, match="req-1"):
        store.record_verdict(alice, "r1-0", "no", "req-1")


@pytest.mark.parametrize("args, error, message", [
    (("r1-0", "maybe", "q"), ValueError, "yes, no, skip, got 'maybe'"),
    (("r1-0", "yes", ""), ValueError, "request_id"),
    (("r1-0", "yes", "x" * 201), ValueError, "request_id"),
    (("r1-0", "yes", 7), ValueError, "request_id"),
    (("", "yes", "q"), ValueError, "item_id"),
    (("ghost", "yes", "q"), UnknownItem, "'ghost'"),
])
def test_record_verdict_bad_arguments_change_nothing(store, args, error, message):
    alice = store.add_labeler("alice")
    store.enqueue(make_items(1))
    with pytest.raises(error, match=message):
        store.record_verdict(alice, *args)
    with pytest.raises(AuthError):
        store.record_verdict("wrong", "r1-0", "yes", "q2")
    assert store.judgements(include_undone=True) == [] and store.audit() == []


def test_undo_withdraws_and_releases_back(store):
    alice, bob = store.add_labeler("alice"), store.add_labeler("bob")
    store.enqueue(make_items(3))
    store.lease(alice, 3)
    store.record_verdict(alice, "r1-0", "yes", "a1")
    store.record_verdict(alice, "r1-1", "no", "a2")
    undone = store.undo(alice)  # the latest: r1-1
    assert undone == {"item_id": "r1-1", "verdict": "no", "request_id": "a2", "leased": True}
    assert "r1-1" in [i["item_id"] for i in store.lease(alice, 3)]
    assert store.lease(bob, 3) == []  # back with Alice, not free for Bob
    store.undo(alice, "r1-0")
    with pytest.raises(NothingToUndo):
        store.undo(alice, "r1-0")
    with pytest.raises(NothingToUndo):
        store.undo(bob)
    with pytest.raises(UnknownItem):
        store.undo(alice, "ghost")
    store.record_verdict(alice, "r1-0", "no", "a3")
    assert store.decisions() == {"r1-0": "no"}
    assert [(a["action"], a["item_id"], a["verdict"], a["labeler"]) for a in store.audit()] == [
        ("verdict", "r1-0", "yes", "alice"), ("verdict", "r1-1", "no", "alice"),
        ("undo", "r1-1", "no", "alice"), ("undo", "r1-0", "yes", "alice"),
        ("verdict", "r1-0", "no", "alice")]
    assert all(a["at"] > 0 for a in store.audit())
    assert_vote_counters_match(store)


def test_a_new_verdict_replaces_the_labelers_previous_one(store):
    alice = store.add_labeler("alice")
    store.enqueue(make_items(1))
    store.record_verdict(alice, "r1-0", "yes", "a1")
    store.record_verdict(alice, "r1-0", "no", "a2")
    assert [j["verdict"] for j in store.judgements()] == ["no"]
    assert store.decisions() == {"r1-0": "no"}
    assert [a["action"] for a in store.audit()] == ["verdict", "undo", "verdict"]
    assert_vote_counters_match(store)


def test_skip_is_not_a_judgement(store):
    alice, bob = store.add_labeler("alice"), store.add_labeler("bob")
    store.enqueue(make_items(1))
    store.lease(alice, 1)
    store.record_verdict(alice, "r1-0", "skip", "a1")
    assert store.pending() == 1 and store.decisions() == {}
    assert store.lease(alice, 1) == []  # not shown again to who skipped it
    assert [i["item_id"] for i in store.lease(bob, 1)] == ["r1-0"]
    store.record_verdict(bob, "r1-0", "yes", "b1")
    assert store.decisions() == {"r1-0": "yes"}


def test_k_judgements_majority_and_ties(store):
    a, b, c, d = (store.add_labeler(name) for name in "abcd")
    store.enqueue(make_items(1, k=3) + make_items(1, k=2, start=1))  # r1-0: k=3, r1-1: k=2
    ids = lambda leased: [i["item_id"] for i in leased]
    assert ids(store.lease(a, 5)) == ["r1-0", "r1-1"]
    assert ids(store.lease(b, 5)) == ["r1-0", "r1-1"]
    assert ids(store.lease(c, 5)) == ["r1-0"]  # r1-1 has both its judges
    assert store.lease(d, 5) == []
    store.record_verdict(a, "r1-0", "yes", "a0")
    assert store.record_verdict(b, "r1-0", "yes", "b0")["decision"] is None  # 2 of 3
    assert store.record_verdict(c, "r1-0", "no", "c0")["decision"] == "yes"
    store.record_verdict(a, "r1-1", "yes", "a1")
    assert store.record_verdict(b, "r1-1", "no", "b1")["decision"] is None  # a tie asks for one more
    assert store.decisions() == {"r1-0": "yes"} and store.pending() == 1
    assert ids(store.lease(c, 5)) == ["r1-1"]
    assert store.lease(d, 5) == []
    assert store.record_verdict(c, "r1-1", "no", "c1")["decision"] == "no"
    with pytest.raises(Conflict):
        store.record_verdict(d, "r1-1", "yes", "d1")
    assert store.decisions() == {"r1-0": "yes", "r1-1": "no"} and store.pending() == 0
    stats = store.stats(a)
    assert stats["agreement"] == pytest.approx(2 / 6)  # each item: 1 agreeing pair of 3
    assert {name: s["agreement"] for name, s in stats["per_labeler"].items()} == {
        "a": 0.5, "b": 1.0, "c": 0.5, "d": None}  # d judged nothing, still listed
    assert stats["me"] == {"labeler": "a", "done": 2, "leased": 0, "remaining": 0}


def test_decisions_and_pending_by_round(store):
    alice = store.add_labeler("alice")
    store.enqueue(make_items(2, round=1) + make_items(3, round=2))
    store.record_verdict(alice, "r1-0", "yes", "1")
    store.record_verdict(alice, "r2-0", "no", "2")
    store.record_verdict(alice, "r2-1", "skip", "3")
    assert store.decisions(round=1) == {"r1-0": "yes"}
    assert store.decisions(round=2) == {"r2-0": "no"}
    assert (store.pending(round=1), store.pending(round=2), store.pending()) == (1, 2, 3)


def test_progress_counts_in_the_database(store):
    a, b = store.add_labeler("a"), store.add_labeler("b")
    store.enqueue(make_items(5) + make_items(2, k=2, start=5))  # rose: 0, 2, 4, 6; tulip: 1, 3, 5
    store.lease(a, 2)
    store.record_verdict(a, "r1-0", "yes", "1")
    store.record_verdict(a, "r1-1", "skip", "2")
    store.record_verdict(a, "r1-6", "yes", "3")
    store.record_verdict(b, "r1-6", "no", "4")  # a tie: not decided
    progress = store.progress(a, "rose")
    stats = store.stats(a)
    assert progress == {"me": stats["me"], "all": {"items": 7, "decided": 1},
                        "class": {"items": 4, "decided": 1}}
    assert progress["me"] == {"labeler": "a", "done": 3, "leased": 1, "remaining": 4}  # 2, 3, 4, 5
    assert store.progress(b)["class"] is None


def naive_stats(judgements, k_of, class_of):
    """Reference: agreement by explicit loops over judgement pairs; decisions by counting."""
    by_item = collections.defaultdict(list)
    for item_id, labeler, verdict in judgements:
        if verdict != "skip":
            by_item[item_id].append((labeler, verdict))
    decision = {}
    for item_id, votes in by_item.items():
        yes = sum(v == "yes" for _, v in votes)
        no = len(votes) - yes
        if len(votes) >= k_of[item_id] and yes != no:
            decision[item_id] = "yes" if yes > no else "no"
    agree_pairs = collections.Counter()
    all_pairs = collections.Counter()
    for item_id, votes in by_item.items():
        for (_, v1), (_, v2) in itertools.combinations(votes, 2):
            all_pairs[class_of[item_id]] += 1
            agree_pairs[class_of[item_id]] += v1 == v2
    per_labeler = {}
    for item_id, votes in by_item.items():
        if len(votes) < 2 or item_id not in decision:
            continue
        for labeler, verdict in votes:
            agreed, compared = per_labeler.get(labeler, (0, 0))
            per_labeler[labeler] = (agreed + (verdict == decision[item_id]), compared + 1)
    return decision, agree_pairs, all_pairs, per_labeler


def test_stats_match_a_naive_reference(store):
    rng = random.Random(3)
    names = ["l0", "l1", "l2", "l3", "l4"]
    tokens = {name: store.add_labeler(name) for name in names}
    queued = []
    for i in range(30):
        queued.append({"item_id": f"x{i}", "image_path": "/p.jpg", "proposed_class": f"c{i % 3}",
                       "round": 1, "score": 0.5, "judgements": rng.choice([1, 2, 3])})
    store.enqueue(queued)
    judged = []
    for item in queued:
        judges = rng.sample(names, item["judgements"] + rng.choice([0, 0, 1]))
        for name in judges:
            verdict = rng.choice(["yes", "yes", "no", "skip"])
            try:
                store.record_verdict(tokens[name], item["item_id"], verdict, f"{item['item_id']}-{name}")
            except Conflict:
                continue
            judged.append((item["item_id"], name, verdict))
    k_of = {it["item_id"]: it["judgements"] for it in queued}
    class_of = {it["item_id"]: it["proposed_class"] for it in queued}
    decision, agree_pairs, all_pairs, per_labeler = naive_stats(judged, k_of, class_of)
    assert store.decisions() == decision
    stats = store.stats()
    assert stats["decided"] == len(decision) and stats["pending"] == 30 - len(decision)
    assert stats["verdicts"] == dict(collections.Counter(v for *_, v in judged))
    assert sum(all_pairs.values()) > 10  # the check below compares something
    assert stats["agreement"] == pytest.approx(sum(agree_pairs.values()) / sum(all_pairs.values()))
    for cls, bucket in stats["per_class"].items():
        expected = agree_pairs[cls] / all_pairs[cls] if all_pairs[cls] else None
        assert bucket["agreement"] == pytest.approx(expected)
        assert bucket["items"] == sum(c == cls for c in class_of.values())
    for name, (agreed, compared) in per_labeler.items():
        assert stats["per_labeler"][name]["agreement"] == pytest.approx(agreed / compared)
        assert stats["per_labeler"][name]["compared"] == compared
    assert_vote_counters_match(store)


def test_verdicts_survive_reopening(store_url):
    first = LabelStore(store_url)
    first.create_schema()
    token = first.add_labeler("alice")
    first.enqueue(make_items(2))
    first.record_verdict(token, "r1-0", "yes", "q")
    first.close()
    second = LabelStore(store_url)
    second.create_schema()  # idempotent on an existing schema
    assert second.decisions() == {"r1-0": "yes"} and second.labeler_name(token) == "alice"
    second.close()


def test_concurrent_labelers_never_share_an_item(store):
    """8 threads lease and judge at once: every item gets exactly its k judges, never more, and a
    k=1 item is leased to one labeler only."""
    tokens = [store.add_labeler(f"l{i}") for i in range(8)]
    store.enqueue(make_items(60, k=1) + make_items(10, k=3, start=60))
    leased_to = collections.defaultdict(set)
    errors = []
    lock = threading.Lock()

    def labeler(index, token):
        try:
            while True:
                batch = store.lease(token, 3)
                if not batch:
                    return
                with lock:
                    for item in batch:
                        leased_to[item["item_id"]].add(index)
                for item in batch:
                    store.record_verdict(token, item["item_id"], "yes" if index % 2 else "no",
                                         f"{index}-{item['item_id']}")
        except Exception as e:  # surfaced below
            errors.append(repr(e))

    run_threads([threading.Thread(target=labeler, args=(i, t)) for i, t in enumerate(tokens)])
    assert errors == []
    judged = collections.Counter(j["item_id"] for j in store.judgements(include_undone=True))
    for item_id in (f"r1-{i}" for i in range(60)):
        assert judged[item_id] == 1 and len(leased_to[item_id]) == 1, item_id
    for item_id in (f"r1-{i}" for i in range(60, 70)):
        assert judged[item_id] == 3 and len(leased_to[item_id]) == 3, item_id
    assert store.pending() == 0 and len(store.decisions()) == 70
    assert len(store.audit()) == 90
    assert_vote_counters_match(store)
