"""Bad requests to the review app (issue 11's battery): each gets its specific status and message,
never a 500 or FastAPI's 422, and changes nothing in the store. Plain HTTP: `requests`, and
`http.client` where a request must reach the server unnormalised."""

import http.client

import pytest
import requests

GOOD = {"item_id": "item-0", "verdict": "yes", "request_id": "r-1"}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# (method, path, headers: "alice" | "none" | dict, body kwargs, status, message fragment)
CASES = [
    ("no token", "POST", "/api/verdicts", "none", {"json": GOOD}, 401, "missing token"),
    ("bad token", "POST", "/api/verdicts", bearer("not-a-token"), {"json": GOOD}, 401,
     "unknown token"),
    ("basic auth scheme", "POST", "/api/verdicts", {"Authorization": "Basic YWxpY2U6eA=="},
     {"json": GOOD}, 401, "Bearer <token>"),
    ("empty bearer", "GET", "/api/queue", {"Authorization": "Bearer "}, {}, 401, "Bearer <token>"),
    ("no token on stats", "GET", "/api/stats", "none", {}, 401, "missing token"),
    ("no token on images", "GET", "/api/items/item-0/image", "none", {}, 401, "missing token"),
    ("unknown item", "POST", "/api/verdicts", "alice", {"json": dict(GOOD, item_id="ghost")}, 404,
     "unknown item 'ghost'"),
    ("malformed JSON", "POST", "/api/verdicts", "alice",
     {"data": b'{"item_id": "item-0", ', "headers": {"Content-Type": "application/json"}}, 400,
     "malformed JSON"),
    ("JSON array", "POST", "/api/verdicts", "alice", {"json": [GOOD]}, 400,
     "must be a JSON object, got list"),
    ("form instead of JSON", "POST", "/api/verdicts", "alice", {"data": GOOD}, 400,
     "Content-Type: application/json"),
    ("bad verdict", "POST", "/api/verdicts", "alice", {"json": dict(GOOD, verdict="maybe")}, 400,
     "verdict must be one of yes, no, skip, got 'maybe'"),
    ("missing request_id", "POST", "/api/verdicts", "alice",
     {"json": {"item_id": "item-0", "verdict": "yes"}}, 400, "request_id must be a non-empty string"),
    ("numeric item_id", "POST", "/api/verdicts", "alice", {"json": dict(GOOD, item_id=7)}, 400,
     "item_id must be a non-empty string, got 7"),
    ("unknown field", "POST", "/api/verdicts", "alice", {"json": dict(GOOD, label="rose")}, 400,
     "unknown field(s) ['label']"),
    ("over-long request_id", "POST", "/api/verdicts", "alice",
     {"json": dict(GOOD, request_id="x" * 300)}, 400, "at most 200 characters"),
    ("oversized body", "POST", "/api/verdicts", "alice",
     {"json": dict(GOOD, request_id="x" * 20000)}, 413, "over 16384 bytes"),
    ("oversized chunked body", "POST", "/api/verdicts", "alice",
     {"data": (b'{"item_id": "' + b"x" * 4096 for _ in range(8)),
      "headers": {"Content-Type": "application/json"}}, 413, "over 16384 bytes"),
    ("queue limit 0", "GET", "/api/queue?limit=0", "alice", {}, 400,
     "limit must be an integer in [1, 100], got '0'"),
    ("queue limit text", "GET", "/api/queue?limit=ten", "alice", {}, 400, "got 'ten'"),
    ("queue limit too big", "GET", "/api/queue?limit=5000", "alice", {}, 400, "got '5000'"),
    ("undo with nothing to undo", "POST", "/api/undo", "alice", {"json": {}}, 404,
     "no verdict to undo"),
    ("undo unknown item", "POST", "/api/undo", "alice", {"json": {"item_id": "ghost"}}, 404,
     "unknown item 'ghost'"),
    ("traversal in item id", "GET", "/api/items/..%2F..%2F..%2Fetc%2Fpasswd/image", "alice", {}, 404,
     "unknown item '../../../etc/passwd'"),
    ("absolute path as item id", "GET", "/api/items/%2Fetc%2Fpasswd/image", "alice", {}, 404,
     "unknown item '/etc/passwd'"),
    ("exemplar index out of range", "GET", "/api/items/item-0/exemplars/3", "alice", {}, 404,
     "has 3 exemplar(s), no '3'"),
    ("exemplar index traversal", "GET", "/api/items/item-0/exemplars/..%2F..%2Fstore.py", "alice",
     {}, 404, "Not Found"),  # an index never holds a "/": no route matches
    ("negative exemplar index", "GET", "/api/items/item-0/exemplars/-1", "alice", {}, 404,
     "no '-1'"),
    ("NUL in item_id", "POST", "/api/verdicts", "alice", {"json": dict(GOOD, item_id="a\x00b")},
     400, "must not contain NUL"),
    ("lone surrogate in request_id", "POST", "/api/verdicts", "alice",
     {"json": dict(GOOD, request_id="\ud800")}, 400, "not valid Unicode"),
    ("NUL in undo item_id", "POST", "/api/undo", "alice", {"json": {"item_id": "\x00"}}, 400,
     "must not contain NUL"),
    ("invalid UTF-8 body", "POST", "/api/verdicts", "alice",
     {"data": b'{"item_id": "\xff"}', "headers": {"Content-Type": "application/json"}}, 400,
     "malformed JSON"),
    ("superscript digit limit", "GET", "/api/queue?limit=%C2%B2", "alice", {}, 400, "got '\u00b2'"),
    ("NUL in image item id", "GET", "/api/items/a%00b/image", "alice", {}, 404, "unknown item"),
    ("superscript exemplar index", "GET", "/api/items/item-0/exemplars/%C2%B2", "alice", {}, 404,
     "no '\u00b2'"),
    ("page form without csrf", "POST", "/review/verdict", "alice",
     {"data": {"item_id": "item-0", "verdict": "yes", "request_id": "f1"}}, 400,
     "stale or forged form"),
]


@pytest.mark.parametrize("method, path, headers, kwargs, status, message",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_request(served_module, method, path, headers, kwargs, status, message):
    served = served_module
    kwargs = dict(kwargs)
    sent_headers = dict(kwargs.pop("headers", {}))
    if headers == "alice":
        sent_headers.update(served.headers())
    elif headers != "none":
        sent_headers.update(headers)
    reply = requests.request(method, served.url + path, headers=sent_headers, timeout=30, **kwargs)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["detail"]
    if status == 401:
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert served.store.judgements(include_undone=True) == [] and served.store.audit() == []


@pytest.mark.parametrize("raw_path", [
    "/api/items/../../../../etc/passwd/image",
    "/api/items/item-0/../../../etc/passwd",
    "/static/../store.py",
    "/static/..%2Fstore.py",
    "/static/%2e%2e/app.py",
])
def test_unnormalised_traversal_paths(served_module, raw_path):
    """http.client sends the path as written (requests and browsers would collapse the dots)."""
    served = served_module
    connection = http.client.HTTPConnection("127.0.0.1", int(served.url.rsplit(":", 1)[1]), timeout=30)
    connection.request("GET", raw_path, headers=served.headers())
    reply = connection.getresponse()
    body = reply.read()
    connection.close()
    assert reply.status == 404, body
    assert b"import" not in body and b"root:" not in body


def test_valid_token_of_one_labeler_cannot_undo_another(served):
    assert requests.post(f"{served.url}/api/verdicts", json=GOOD, headers=served.headers(),
                         timeout=30).status_code == 200
    reply = requests.post(f"{served.url}/api/undo", json={"item_id": "item-0"},
                          headers=served.headers(served.bob), timeout=30)
    assert reply.status_code == 404 and "no verdict on item 'item-0'" in reply.json()["detail"]
    assert [j["verdict"] for j in served.store.judgements()] == ["yes"]
