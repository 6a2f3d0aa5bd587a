"""The review app over real HTTP (uvicorn on a loopback port, plain `requests`), and its CLI."""

import json
import logging
import re
import shutil
import subprocess
import sys

import pytest
import requests

from finegrain_tf.review.store import LabelStore


def post_verdict(setup, item_id, verdict, request_id, token=None):
    return requests.post(f"{setup.url}/api/verdicts", headers=setup.headers(token), timeout=30,
                         json={"item_id": item_id, "verdict": verdict, "request_id": request_id})


def test_queue_leases_items_with_their_images(served):
    reply = requests.get(f"{served.url}/api/queue?limit=4", headers=served.headers(), timeout=30)
    assert reply.status_code == 200
    items = reply.json()["items"]
    assert [i["item_id"] for i in items] == ["item-0", "item-2", "item-4", "item-1"]
    first = items[0]
    assert first["definition"] == "Definition of rose." and first["file_name"] == "cand-0.png"
    assert "image_path" not in first  # the server's file layout stays private
    image = requests.get(served.url + first["image_url"], headers=served.headers(), timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == open(served.images["item-0"], "rb").read()
    assert len(first["exemplar_urls"]) == 3
    exemplar = requests.get(served.url + first["exemplar_urls"][2], headers=served.headers(), timeout=30)
    assert exemplar.content == open(served.store.class_info("rose")["exemplars"][2], "rb").read()
    # Bob gets the two items Alice does not hold.
    bob = requests.get(f"{served.url}/api/queue", headers=served.headers(served.bob), timeout=30)
    assert [i["item_id"] for i in bob.json()["items"]] == ["item-3", "item-5"]


def test_verdicts_are_committed_and_replayed(served):
    reply = post_verdict(served, "item-0", "yes", "req-1")
    assert reply.status_code == 200
    assert reply.json() == {"item_id": "item-0", "verdict": "yes", "request_id": "req-1",
                            "replayed": False, "decision": "yes"}
    # A second store object (another connection) sees it: the answer came after the commit.
    other = LabelStore(served.store.url)
    assert other.decisions() == {"item-0": "yes"}
    again = post_verdict(served, "item-0", "yes", "req-1")
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert len(other.judgements(include_undone=True)) == 1
    reused = post_verdict(served, "item-1", "no", "req-1")
    assert reused.status_code == 409 and "req-1" in reused.json()["detail"]
    other.close()


def test_conflict_when_another_labeler_holds_the_item(served):
    requests.get(f"{served.url}/api/queue?limit=1", headers=served.headers(served.bob), timeout=30)
    reply = post_verdict(served, "item-0", "yes", "a-1")
    assert reply.status_code == 409 and "item-0" in reply.json()["detail"]
    assert served.store.judgements() == []


def test_undo_and_stats(served):
    post_verdict(served, "item-0", "yes", "a-1")
    post_verdict(served, "item-1", "no", "a-2")
    undo = requests.post(f"{served.url}/api/undo", json={}, headers=served.headers(), timeout=30)
    assert undo.status_code == 200 and undo.json()["item_id"] == "item-1"
    undo = requests.post(f"{served.url}/api/undo", json={"item_id": "item-0"},
                         headers=served.headers(), timeout=30)
    assert undo.status_code == 200 and undo.json()["verdict"] == "yes"
    post_verdict(served, "item-0", "no", "a-3")
    stats = requests.get(f"{served.url}/api/stats", headers=served.headers(), timeout=30).json()
    assert (stats["items"], stats["decided"], stats["no"]) == (6, 1, 1)
    assert stats["me"]["labeler"] == "alice" and stats["me"]["done"] == 1
    assert stats["per_class"]["rose"]["decided"] == 1
    assert [a["action"] for a in served.store.audit()] == ["verdict", "verdict", "undo", "undo",
                                                           "verdict"]


def login(setup, token=None):
    session = requests.Session()
    reply = session.get(f"{setup.url}/login", params={"token": token or setup.alice}, timeout=30)
    assert reply.status_code == 200 and reply.url == f"{setup.url}/review"
    cookie = next(c for c in session.cookies if c.name == "finegrain_review_token")
    assert cookie.has_nonstandard_attr("HttpOnly")
    return session, reply.text


def form_values(html):
    return dict(re.findall(r'name="(\w+)" value="([^"]*)"', html))


def test_review_page_flow(served):
    session, html = login(served)
    assert 'data-item-id="item-0"' in html and "Definition of rose." in html
    assert html.count("/api/items/item-0/exemplars/") == 3
    assert "done 0 · remaining 6" in html
    values = form_values(html)
    reply = session.post(f"{served.url}/review/verdict", timeout=30, data={
        "item_id": "item-0", "request_id": values["request_id"], "csrf": values["csrf"],
        "verdict": "no"})
    assert reply.status_code == 200 and 'data-item-id="item-2"' in reply.text
    assert "done 1 · remaining 5" in reply.text
    assert served.store.decisions() == {"item-0": "no"}
    # A resubmitted form (same request_id) is a replay, not a second verdict.
    session.post(f"{served.url}/review/verdict", timeout=30, data={
        "item_id": "item-0", "request_id": values["request_id"], "csrf": values["csrf"],
        "verdict": "no"})
    assert len(served.store.judgements(include_undone=True)) == 1
    undone = session.post(f"{served.url}/review/undo", data={"csrf": values["csrf"]}, timeout=30)
    assert 'data-item-id="item-0"' in undone.text and "Verdict withdrawn" in undone.text
    assert served.store.decisions() == {}
    page = session.get(f"{served.url}/stats", timeout=30)
    assert page.status_code == 200 and "Per labeler" in page.text and "<td>alice</td>" in page.text


def test_class_names_and_file_names_are_escaped(served, tmp_path):
    evil = "<script>alert('x')</script>"
    served.store.set_class(evil, "<img src=x onerror=alert(1)>", [])
    file_name = tmp_path / "<b>x&y.png"
    shutil.copy(served.images["item-0"], file_name)
    served.store.enqueue([{"item_id": "<i>evil</i>", "image_path": str(file_name),
                           "proposed_class": evil, "round": 0, "score": 1.0}])
    session, html = login(served)
    assert 'data-item-id="&lt;i&gt;evil&lt;/i&gt;"' in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;b&gt;x&amp;y.png" in html
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>x" not in html
    assert "script-src 'self'" in session.get(f"{served.url}/review", timeout=30).headers[
        "content-security-policy"]
    image = session.get(f"{served.url}/api/items/%3Ci%3Eevil%3C%2Fi%3E/image", timeout=30)
    assert image.status_code == 200 and image.content == open(file_name, "rb").read()


def test_page_without_login_shows_the_sign_in_form(served):
    reply = requests.get(f"{served.url}/review", timeout=30)
    assert reply.status_code == 401 and 'action="/login"' in reply.text
    wrong = requests.get(f"{served.url}/login", params={"token": "nope"}, timeout=30)
    assert wrong.status_code == 401 and "unknown token" in wrong.text
    session = requests.Session()
    ok = session.post(f"{served.url}/login", data={"token": served.bob}, timeout=30)
    assert ok.status_code == 200 and '<span class="who">bob</span>' in ok.text


def test_access_log_never_shows_tokens():
    from finegrain_tf.review.main import RedactTokens

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "GET",
                                                           "/login?token=s3cr3t&x=1", "1.1", 303), None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /login?token=<redacted>&x=1 HTTP/1.1" 303'


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "finegrain_tf.review.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli(tmp_path):
    listing = run_cli("--help")
    assert listing.returncode == 0
    for command in ("add-labeler", "serve", "import-classes", "stats"):
        assert command in listing.stdout
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    added = run_cli("add-labeler", "carol", "--db", url)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert LabelStore(url).labeler_name(token) == "carol"
    classes = tmp_path / "classes.yaml"
    classes.write_text("rose:\n  definition: Thorny.\n  exemplars: [ex/a.png]\ntulip: Cup-shaped.\n")
    imported = run_cli("import-classes", str(classes), "--db", url)
    assert imported.returncode == 0 and "imported 2 classes" in imported.stdout
    assert LabelStore(url).class_info("rose") == {
        "name": "rose", "definition": "Thorny.", "exemplars": [str(tmp_path / "ex" / "a.png")]}
    rows = tmp_path / "classes.csv"  # finegrain-bootstrap's --class_definitions format
    rows.write_text("class,definition,exemplars\nlily,Six tepals.,/ex/l1.png;/ex/l2.png\n")
    assert run_cli("import-classes", str(rows), "--db", url).returncode == 0
    assert LabelStore(url).class_info("lily")["exemplars"] == ["/ex/l1.png", "/ex/l2.png"]
    lines = tmp_path / "classes.jsonl"
    lines.write_text('{"class": "iris", "definition": "Three falls."}\n')
    assert run_cli("import-classes", str(lines), "--db", url).returncode == 0
    assert LabelStore(url).class_info("iris")["definition"] == "Three falls."
    stats = run_cli("stats", "--db", url)
    assert json.loads(stats.stdout)["items"] == 0


@pytest.mark.parametrize("args, message", [
    (("add-labeler", "x", "--db", "mysql://h/db"), "sqlite:///FILE or postgresql"),
    (("add-labeler", "x", "--db", "sqlite://"), "in-memory"),
    (("serve", "--db", "sqlite:///{tmp}/a.db", "--port", "0"), "--port must be in 1..65535, got 0"),
    (("serve", "--max_body_bytes", "10"), "--max_body_bytes must be at least 1024, got 10"),
    (("serve", "--db", "sqlite:///{tmp}/a.db", "--image_root", "/no/such/dir"), "is not a folder"),
    (("import-classes", "/no/such.yaml", "--db", "sqlite:///{tmp}/a.db"), "No such file"),
    (("import-classes", "{tmp}/list.yaml", "--db", "sqlite:///{tmp}/a.db"),
     "expected a mapping of class name"),
    (("import-classes", "{tmp}/extra.csv", "--db", "sqlite:///{tmp}/a.db"),
     "entry 1 needs a class and only definition / exemplars"),
    (("stats", "--db", "postgresql://nobody@127.0.0.1:1/none"), "error:"),
    (("frobnicate",), "invalid choice: 'frobnicate'"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "list.yaml").write_text("- rose\n- tulip\n")
    (tmp_path / "extra.csv").write_text("class,definition,colour\nrose,Thorny.,red\n")
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
