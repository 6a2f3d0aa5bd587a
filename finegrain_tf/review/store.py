"""The label store: review items, leases, human verdicts and their audit log (seed 000 §2.2.2).

The bootstrapping rounds queue each candidate image with the class the model proposes; human labelers
answer yes / no (or skip) after comparing it with exemplar images; the rounds read the decided items
back (`decisions`) to grow the dataset (yes) and the hard negatives (no).

One `LabelStore(url)` speaks to SQLite (default; WAL journal and `synchronous=FULL` on every
connection, every transaction `BEGIN IMMEDIATE`, so writers queue instead of failing) or PostgreSQL
(`postgresql://...` runs on psycopg 3; item rows are locked `FOR UPDATE`, leasing skips rows other
labelers are leasing). Guarantees the review app and its tests rely on:

- a verdict is committed when `record_verdict` returns; a retry with the same `request_id` returns the
  first answer and changes nothing (a unique constraint backs this);
- an item asking for k judgements is never leased to or judged by more than k labelers at once
  (k = 1: one labeler at a time); leases time out, so a labeler who walks away releases the items;
- with k > 1 the decision is the majority; an even k that ties asks for one more judgement;
- skip is not a judgement: the item goes back to the queue for others;
- every verdict and undo is in the audit log (who, when, what); tokens are stored as SHA-256 hashes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import numbers
import secrets
import time
from typing import Any, Iterable, Optional

import sqlalchemy as sa
from sqlalchemy.engine import make_url

VERDICTS = ("yes", "no", "skip")
JUDGEMENTS = ("yes", "no")  # verdicts that count towards an item's k; skip does not
MAX_ID_LENGTH = 512
MAX_REQUEST_ID_LENGTH = 200
DEFAULT_LEASE_SECONDS = 600
_READ_ONLY = "finegrain_read_only"  # execution option of connections that only read

_metadata = sa.MetaData()

labelers = sa.Table(
    "labelers", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

classes = sa.Table(
    "classes", _metadata,
    sa.Column("name", sa.String(MAX_ID_LENGTH), primary_key=True),
    sa.Column("definition", sa.Text, nullable=False, default=""),
    sa.Column("exemplars", sa.Text, nullable=False, default="[]"),  # JSON list of image paths
)

items = sa.Table(
    "items", _metadata,
    sa.Column("item_id", sa.String(MAX_ID_LENGTH), primary_key=True),
    sa.Column("image_path", sa.Text, nullable=False),
    sa.Column("proposed_class", sa.String(MAX_ID_LENGTH), nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("judgements", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # Standing yes / no verdicts, kept by the writers of `verdicts` under the item's row lock, so
    # that leasing and progress need not count the verdicts table item by item.
    sa.Column("yes_votes", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("no_votes", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.CheckConstraint("judgements >= 1", name="ck_items_judgements"),
    sa.Index("ix_items_queue_order", "round", "proposed_class", "score", "item_id"),
)

leases = sa.Table(
    "leases", _metadata,
    sa.Column("item_id", sa.String(MAX_ID_LENGTH), sa.ForeignKey("items.item_id"), primary_key=True),
    sa.Column("labeler_id", sa.Integer, sa.ForeignKey("labelers.id"), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

verdicts = sa.Table(
    "verdicts", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String(MAX_ID_LENGTH), sa.ForeignKey("items.item_id"), nullable=False),
    sa.Column("labeler_id", sa.Integer, sa.ForeignKey("labelers.id"), nullable=False),
    sa.Column("verdict", sa.String(4), nullable=False),
    sa.Column("request_id", sa.String(MAX_REQUEST_ID_LENGTH), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("undone_at", sa.Float, nullable=True),  # NULL while the verdict stands
    sa.CheckConstraint("verdict IN ('yes', 'no', 'skip')", name="ck_verdicts_verdict"),
    sa.Index("ix_verdicts_item", "item_id"),
    # At most one standing verdict per labeler and item, whatever the clients send.
    sa.Index("uq_verdicts_standing", "item_id", "labeler_id", unique=True,
             sqlite_where=sa.text("undone_at IS NULL"), postgresql_where=sa.text("undone_at IS NULL")),
)

audit_log = sa.Table(
    "audit_log", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("labeler", sa.String(200), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # "verdict" | "undo"
    sa.Column("item_id", sa.String(MAX_ID_LENGTH), nullable=False),
    sa.Column("verdict", sa.String(4), nullable=False),
    sa.Column("request_id", sa.String(MAX_REQUEST_ID_LENGTH), nullable=False),
)


class AuthError(PermissionError):
    """No labeler has this token (HTTP 401)."""


class UnknownItem(LookupError):
    """No item with this id (HTTP 404)."""


class NothingToUndo(LookupError):
    """The labeler has no standing verdict to undo (HTTP 404)."""


class Conflict(Exception):
    """The request contradicts the store's state: the item has all its judges, or a request_id was
    reused for another verdict (HTTP 409)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_text(value: Any, name: str, max_length: Optional[int] = None) -> str:
    """`value` if it is a non-empty string both databases can store (no NUL, valid Unicode)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text, got {value!r}") from None
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def normalize_url(url: str) -> str:
    """SQLAlchemy URL with psycopg 3 as PostgreSQL's driver; in-memory SQLite is refused (not durable,
    and every pooled connection would see its own empty database)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"database url must be a non-empty string, got {url!r}")
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as e:
        raise ValueError(f"cannot parse database url {url!r}: {e}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(f"the label store needs a SQLite file, got in-memory url {url!r}")
    else:
        raise ValueError(f"database url must be sqlite:///FILE or postgresql://..., got {url!r}")
    return parsed.render_as_string(hide_password=False)


def _sqlite_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # pysqlite must not BEGIN on its own; see _begin
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):
        # Writers take the write lock up front, so two read-then-write transactions cannot
        # interleave; readers (LabelStore._reading) read a WAL snapshot without blocking anyone.
        if connection.get_execution_options().get(_READ_ONLY):
            connection.exec_driver_sql("BEGIN DEFERRED")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _item_dict(row) -> dict:
    return {"item_id": row.item_id, "image_path": row.image_path, "proposed_class": row.proposed_class,
            "round": row.round, "score": row.score, "judgements": row.judgements}


def _still_needed(yes: int, no: int, k: int) -> int:
    """Judgements an item still needs: up to k, then one more while an even k ties."""
    done = yes + no
    if done < k:
        return k - done
    return 1 if yes == no else 0


def _still_needed_sql(yes, no, k):
    """`_still_needed` as a SQL expression of columns or scalar subqueries."""
    return sa.case((yes + no < k, k - yes - no), (yes == no, 1), else_=0)


def _majority(yes: int, no: int) -> str:
    return "yes" if yes > no else "no"


class LabelStore:
    """Durable store of review items and verdicts. Thread-safe; share one per process."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        if make_url(self.url).get_backend_name() == "sqlite":
            self.engine = _sqlite_engine(self.url)
        else:
            self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        self.dialect = self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _reading(self):
        """A connection for read-only work (on SQLite it does not take the write lock)."""
        return self.engine.connect().execution_options(**{_READ_ONLY: True})

    def create_schema(self) -> None:
        """Create missing tables (idempotent)."""
        _metadata.create_all(self.engine)

    # ---- labelers and classes -------------------------------------------------------------------

    def add_labeler(self, name: str) -> str:
        """Register a labeler; returns the bearer token (shown once: only its hash is stored)."""
        check_text(name, "labeler name", 200)
        if not name.strip():
            raise ValueError(f"labeler name must not be blank, got {name!r}")
        token = secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(labelers.c.id).where(labelers.c.name == name)).first():
                raise ValueError(f"labeler {name!r} already exists")
            conn.execute(labelers.insert().values(name=name, token_hash=hash_token(token),
                                                  created_at=time.time()))
        return token

    def labeler_name(self, token: Optional[str]) -> str:
        """The labeler owning `token`; AuthError if none."""
        with self._reading() as conn:
            return self._labeler(conn, token)[1]

    def set_class(self, name: str, definition: str = "", exemplars: Iterable[str] = ()) -> None:
        """What the review card shows for class `name`: its definition text and exemplar images."""
        check_text(name, "class name", MAX_ID_LENGTH)
        if definition != "":
            check_text(definition, f"definition of class {name!r}")
        if isinstance(exemplars, str):
            raise ValueError(f"exemplars of class {name!r} must be a list of image paths, "
                             f"got the string {exemplars!r}")
        paths = [check_text(str(p), f"exemplar of class {name!r}") for p in exemplars]
        row = {"definition": definition, "exemplars": json.dumps(paths)}
        with self.engine.begin() as conn:
            if conn.execute(sa.select(classes.c.name).where(classes.c.name == name)).first():
                conn.execute(classes.update().where(classes.c.name == name).values(**row))
            else:
                conn.execute(classes.insert().values(name=name, **row))

    def class_info(self, name: str) -> dict:
        """{"name", "definition", "exemplars"}; empty text and list for a class never set."""
        with self._reading() as conn:
            row = conn.execute(sa.select(classes).where(classes.c.name == name)).first()
        if row is None:
            return {"name": name, "definition": "", "exemplars": []}
        return {"name": name, "definition": row.definition, "exemplars": json.loads(row.exemplars)}

    # ---- items ------------------------------------------------------------------------------------

    def enqueue(self, new_items: Iterable[dict]) -> int:
        """Queue items for review; an item_id already queued is left as it is. Returns how many
        were added."""
        rows = [self._validate_item(item) for item in new_items]
        ids = [row["item_id"] for row in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in collections.Counter(ids).items() if c > 1)
            raise ValueError(f"item_id {dup!r} appears more than once in one enqueue call")
        added = 0
        now = time.time()
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 500):
                chunk = rows[start:start + 500]
                known = set(conn.execute(sa.select(items.c.item_id).where(
                    items.c.item_id.in_([r["item_id"] for r in chunk]))).scalars())
                fresh = [dict(r, created_at=now) for r in chunk if r["item_id"] not in known]
                if fresh:
                    conn.execute(items.insert(), fresh)
                    added += len(fresh)
        return added

    @staticmethod
    def _validate_item(item: Any) -> dict:
        if not isinstance(item, dict):
            raise ValueError(f"each item must be a dict, got {item!r}")
        required = {"item_id", "image_path", "proposed_class", "round", "score"}
        allowed = required | {"judgements"}
        missing = sorted(required - item.keys())
        if missing:
            raise ValueError(f"item {item!r} lacks {', '.join(missing)}")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ValueError(f"item {item.get('item_id')!r} has unknown keys {unknown}")
        check_text(item["item_id"], "item_id", MAX_ID_LENGTH)
        check_text(item["image_path"], f"image_path of item {item['item_id']!r}")
        check_text(item["proposed_class"], f"proposed_class of item {item['item_id']!r}",
                   MAX_ID_LENGTH)
        k = item.get("judgements", 1)
        for key, value, low in (("round", item["round"], 0), ("judgements", k, 1)):
            if not _is_int(value) or value < low:
                raise ValueError(f"{key} of item {item['item_id']!r} must be an int >= {low}, "
                                 f"got {value!r}")
        score = item["score"]
        if not _is_number(score):
            raise ValueError(f"score of item {item['item_id']!r} must be a number, got {score!r}")
        return {"item_id": item["item_id"], "image_path": item["image_path"],
                "proposed_class": item["proposed_class"], "round": int(item["round"]),
                "score": float(score), "judgements": int(k)}

    def item(self, item_id: str) -> dict:
        """The queued item; UnknownItem if none."""
        try:
            check_text(item_id, "item_id")
        except ValueError:
            raise UnknownItem(f"unknown item {item_id!r}") from None
        with self._reading() as conn:
            row = conn.execute(sa.select(items).where(items.c.item_id == item_id)).first()
        if row is None:
            raise UnknownItem(f"unknown item {item_id!r}")
        return _item_dict(row)

    # ---- leases and verdicts ----------------------------------------------------------------------

    def _labeler(self, conn, token) -> tuple[int, str]:
        if not isinstance(token, str) or not token or "\x00" in token:
            raise AuthError("missing token" if not token else "unknown token")
        row = conn.execute(sa.select(labelers.c.id, labelers.c.name)
                           .where(labelers.c.token_hash == hash_token(token))).first()
        if row is None:
            raise AuthError("unknown token")
        return row.id, row.name

    @staticmethod
    def _open_slots(labeler_id: int, now: float):
        """SQL expression (correlated to `items`): judgements the item still needs minus live
        leases held by other labelers."""
        others = sa.select(sa.func.count()).where(
            leases.c.item_id == items.c.item_id, leases.c.labeler_id != labeler_id,
            leases.c.expires_at > now).scalar_subquery()
        return _still_needed_sql(items.c.yes_votes, items.c.no_votes, items.c.judgements) - others

    def _seen_by(self, labeler_id: int):
        """SQL condition (correlated to `items`): the labeler has a standing verdict on the item."""
        return sa.exists().where(verdicts.c.item_id == items.c.item_id,
                                 verdicts.c.labeler_id == labeler_id, verdicts.c.undone_at.is_(None))

    def lease(self, token: str, limit: int, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> list:
        """Up to `limit` items for this labeler to judge: the ones it already holds (renewed) first,
        then new ones (by round, class, descending score). Each is an item dict plus
        "lease_expires" (epoch seconds)."""
        if not _is_int(limit) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        limit = int(limit)
        if not _is_number(lease_seconds) or not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be a positive number, got {lease_seconds!r}")
        with self.engine.begin() as conn:
            labeler_id, _ = self._labeler(conn, token)
            now = time.time()
            expires = now + lease_seconds
            slots = self._open_slots(labeler_id, now)
            # Only this labeler's expired leases are dropped here: every count ignores expired
            # leases, and deleting other labelers' rows would make concurrent leasers wait on
            # (and deadlock with) each other.
            conn.execute(leases.delete().where(leases.c.labeler_id == labeler_id,
                                               leases.c.expires_at <= now))
            held = list(conn.execute(
                sa.select(items.c.item_id).join(leases, leases.c.item_id == items.c.item_id)
                .where(leases.c.labeler_id == labeler_id).order_by(items.c.item_id)
                .with_for_update(of=items)).scalars())
            # Renew what still has a free slot under the row locks (a lease that lapsed just now
            # may have gone to someone else); let go of the rest.
            keep = set(conn.execute(sa.select(items.c.item_id).where(
                items.c.item_id.in_(held), slots > 0)).scalars()) if held else set()
            if len(keep) < len(held):
                conn.execute(leases.delete().where(leases.c.labeler_id == labeler_id,
                                                   leases.c.item_id.not_in(keep)))
            if keep:
                conn.execute(leases.update().where(leases.c.labeler_id == labeler_id)
                             .values(expires_at=expires))
            wanted = limit - len(keep)
            examined: list[str] = []
            for _attempt in range(4):
                if wanted <= 0:
                    break
                mine = sa.exists().where(leases.c.item_id == items.c.item_id,
                                         leases.c.labeler_id == labeler_id)
                query = (sa.select(items.c.item_id)
                         .where(slots > 0, ~self._seen_by(labeler_id), ~mine)
                         .order_by(items.c.round, items.c.proposed_class, items.c.score.desc(),
                                   items.c.item_id)
                         .limit(wanted))
                if examined:
                    query = query.where(items.c.item_id.not_in(examined))
                # PostgreSQL: lock the candidate rows, skipping those another labeler is leasing.
                locked = list(conn.execute(query.with_for_update(of=items, skip_locked=True)).scalars())
                if not locked:
                    break
                examined += locked
                # Re-count under the row locks: the candidate query may have read older state.
                granted = list(conn.execute(
                    sa.select(items.c.item_id).where(items.c.item_id.in_(locked), slots > 0,
                                                     ~self._seen_by(labeler_id))).scalars())
                if granted:
                    conn.execute(leases.insert(), [
                        {"item_id": i, "labeler_id": labeler_id, "expires_at": expires}
                        for i in granted])
                    wanted -= len(granted)
            rows = conn.execute(
                sa.select(items, leases.c.expires_at)
                .join(leases, leases.c.item_id == items.c.item_id)
                .where(leases.c.labeler_id == labeler_id)
                .order_by(items.c.round, items.c.proposed_class, items.c.score.desc(),
                          items.c.item_id)).all()
        return [dict(_item_dict(row), lease_expires=row.expires_at) for row in rows[:limit]]

    def record_verdict(self, token: str, item_id: str, verdict: str, request_id: str) -> dict:
        """Record (and commit) one labeler's verdict on an item. A repeated `request_id` returns the
        first answer with "replayed": True. A new verdict on an item this labeler already judged
        replaces the old one (logged as an undo plus a verdict). Returns {"item_id", "verdict",
        "request_id", "replayed", "decision": "yes"|"no"|None}."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        check_text(request_id, "request_id", MAX_REQUEST_ID_LENGTH)
        check_text(item_id, "item_id")
        try:
            return self._record_verdict(token, item_id, verdict, request_id)
        except sa.exc.IntegrityError:
            # A concurrent retry with the same request_id won the insert: answer as a replay.
            return self._record_verdict(token, item_id, verdict, request_id)

    def _record_verdict(self, token, item_id, verdict, request_id) -> dict:
        with self.engine.begin() as conn:
            labeler_id, name = self._labeler(conn, token)
            # Lock the item: every change to its judges goes through this row lock (PostgreSQL).
            item = conn.execute(sa.select(items).where(items.c.item_id == item_id)
                                .with_for_update()).first()
            if item is None:
                raise UnknownItem(f"unknown item {item_id!r}")
            earlier = conn.execute(sa.select(verdicts).where(
                verdicts.c.request_id == request_id)).first()
            if earlier is not None:
                if (earlier.labeler_id, earlier.item_id, earlier.verdict) != (labeler_id, item_id,
                                                                            verdict):
                    raise Conflict(f"request_id {request_id!r} was already used for another "
                                   f"verdict")
                return self._answer(conn, item, earlier.verdict, request_id, replayed=True)
            now = time.time()
            standing = conn.execute(sa.select(verdicts).where(
                verdicts.c.item_id == item_id, verdicts.c.labeler_id == labeler_id,
                verdicts.c.undone_at.is_(None))).first()
            replaces_judgement = standing is not None and standing.verdict in JUDGEMENTS
            if verdict in JUDGEMENTS and not replaces_judgement:
                slots = conn.execute(sa.select(self._open_slots(labeler_id, now))
                                     .where(items.c.item_id == item_id)).scalar_one()
                if slots <= 0:
                    raise Conflict(f"item {item_id!r} already has the {item.judgements} "
                                   f"judgement(s) it asks for, or is leased to other labelers")
            if standing is not None:
                self._undo_row(conn, standing, name, now)
            conn.execute(verdicts.insert().values(
                item_id=item_id, labeler_id=labeler_id, verdict=verdict, request_id=request_id,
                created_at=now))
            self._count_vote(conn, item_id, verdict, +1)
            conn.execute(audit_log.insert().values(
                at=now, labeler=name, action="verdict", item_id=item_id, verdict=verdict,
                request_id=request_id))
            conn.execute(leases.delete().where(leases.c.item_id == item_id,
                                               leases.c.labeler_id == labeler_id))
            return self._answer(conn, item, verdict, request_id, replayed=False)

    @staticmethod
    def _answer(conn, item, verdict, request_id, replayed) -> dict:
        yes, no = conn.execute(sa.select(items.c.yes_votes, items.c.no_votes)
                               .where(items.c.item_id == item.item_id)).one()
        decided = _still_needed(yes, no, item.judgements) == 0
        return {"item_id": item.item_id, "verdict": verdict, "request_id": request_id,
                "replayed": replayed, "decision": _majority(yes, no) if decided else None}

    @staticmethod
    def _count_vote(conn, item_id: str, verdict: str, delta: int) -> None:
        if verdict in JUDGEMENTS:
            column = items.c.yes_votes if verdict == "yes" else items.c.no_votes
            conn.execute(items.update().where(items.c.item_id == item_id)
                         .values({column: column + delta}))

    @classmethod
    def _undo_row(cls, conn, row, labeler_name: str, now: float) -> None:
        conn.execute(verdicts.update().where(verdicts.c.id == row.id).values(undone_at=now))
        cls._count_vote(conn, row.item_id, row.verdict, -1)
        conn.execute(audit_log.insert().values(
            at=now, labeler=labeler_name, action="undo", item_id=row.item_id, verdict=row.verdict,
            request_id=row.request_id))

    def undo(self, token: str, item_id: Optional[str] = None,
             lease_seconds: float = DEFAULT_LEASE_SECONDS) -> dict:
        """Withdraw this labeler's standing verdict on `item_id` (default: its latest verdict on
        any item) and lease the item back to it when a slot is free. Returns {"item_id",
        "verdict" (the withdrawn one), "request_id", "leased"}; NothingToUndo if there is none."""
        if item_id is not None:
            check_text(item_id, "item_id")
        with self.engine.begin() as conn:
            labeler_id, name = self._labeler(conn, token)
            if item_id is None:
                item_id = conn.execute(
                    sa.select(verdicts.c.item_id).where(verdicts.c.labeler_id == labeler_id,
                                                        verdicts.c.undone_at.is_(None))
                    .order_by(verdicts.c.created_at.desc(), verdicts.c.id.desc()).limit(1)
                ).scalar()
                if item_id is None:
                    raise NothingToUndo("no verdict to undo")
            item = conn.execute(sa.select(items).where(items.c.item_id == item_id)
                                .with_for_update()).first()
            if item is None:
                raise UnknownItem(f"unknown item {item_id!r}")
            standing = conn.execute(sa.select(verdicts).where(
                verdicts.c.item_id == item_id, verdicts.c.labeler_id == labeler_id,
                verdicts.c.undone_at.is_(None))).first()
            if standing is None:
                raise NothingToUndo(f"no verdict on item {item_id!r} to undo")
            now = time.time()
            self._undo_row(conn, standing, name, now)
            slots = conn.execute(sa.select(self._open_slots(labeler_id, now))
                                 .where(items.c.item_id == item_id)).scalar_one()
            leased = slots > 0
            if leased:
                conn.execute(leases.delete().where(leases.c.item_id == item_id,
                                                   leases.c.labeler_id == labeler_id))
                conn.execute(leases.insert().values(item_id=item_id, labeler_id=labeler_id,
                                                    expires_at=now + lease_seconds))
        return {"item_id": item_id, "verdict": standing.verdict,
                "request_id": standing.request_id, "leased": leased}

    # ---- reading results --------------------------------------------------------------------------

    @staticmethod
    def _needed():
        return _still_needed_sql(items.c.yes_votes, items.c.no_votes, items.c.judgements)

    def decisions(self, round: Optional[int] = None) -> dict:
        """{item_id: "yes"|"no"} for every decided item (majority of its k judgements)."""
        query = sa.select(items.c.item_id, items.c.yes_votes, items.c.no_votes).where(
            self._needed() == 0)
        if round is not None:
            query = query.where(items.c.round == round)
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return {i: _majority(y, n) for i, y, n in rows}

    def pending(self, round: Optional[int] = None) -> int:
        """How many items (of `round`) are not decided yet."""
        query = sa.select(sa.func.count()).select_from(items).where(self._needed() > 0)
        if round is not None:
            query = query.where(items.c.round == round)
        with self._reading() as conn:
            return conn.execute(query).scalar_one()

    def progress(self, token: str, proposed_class: Optional[str] = None) -> dict:
        """What a review page shows, counted in the database: {"me": this labeler's done / leased /
        remaining, "all": items / decided, "class": items / decided of `proposed_class`}."""
        decided = sa.func.coalesce(sa.func.sum(sa.case((self._needed() == 0, 1), else_=0)), 0)
        query = sa.select(sa.func.count(), decided).select_from(items)
        with self._reading() as conn:
            counts = lambda *where: dict(zip(("items", "decided"),
                                             conn.execute(query.where(*where)).one()))
            return {"me": self._my_progress(conn, token), "all": counts(),
                    "class": counts(items.c.proposed_class == proposed_class)
                    if proposed_class is not None else None}

    def judgements(self, item_id: Optional[str] = None, include_undone: bool = False) -> list:
        """Verdict records, oldest first: {"item_id", "labeler", "verdict", "request_id", "at",
        "undone_at"}."""
        query = (sa.select(verdicts, labelers.c.name)
                 .join(labelers, labelers.c.id == verdicts.c.labeler_id)
                 .order_by(verdicts.c.id))
        if item_id is not None:
            query = query.where(verdicts.c.item_id == item_id)
        if not include_undone:
            query = query.where(verdicts.c.undone_at.is_(None))
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [{"item_id": r.item_id, "labeler": r.name, "verdict": r.verdict,
                 "request_id": r.request_id, "at": r.created_at, "undone_at": r.undone_at}
                for r in rows]

    def audit(self) -> list:
        """Every verdict and undo, oldest first: {"at", "labeler", "action", "item_id", "verdict",
        "request_id"}."""
        with self._reading() as conn:
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id)).all()
        return [{"at": r.at, "labeler": r.labeler, "action": r.action, "item_id": r.item_id,
                 "verdict": r.verdict, "request_id": r.request_id} for r in rows]

    def stats(self, token: Optional[str] = None) -> dict:
        """Progress and agreement. Keys: items, decided, pending, yes, no (decisions), verdicts
        (standing yes/no/skip counts), agreement (fraction of agreeing pairs among the judgements
        of items judged more than once; None without such items), per_class, per_labeler (every
        labeler's verdict counts and agreement with the final decision on multiply-judged items),
        per_round; with a token also "me": this labeler's done / leased / remaining counts."""
        with self._reading() as conn:
            tallies = conn.execute(sa.select(
                items.c.item_id, items.c.proposed_class, items.c.round, items.c.judgements,
                items.c.yes_votes, items.c.no_votes)).all()
            rows = conn.execute(
                sa.select(verdicts.c.item_id, verdicts.c.verdict, labelers.c.name)
                .join(labelers, labelers.c.id == verdicts.c.labeler_id)
                .where(verdicts.c.undone_at.is_(None))).all()
            names = list(conn.execute(sa.select(labelers.c.name)).scalars())
            me = self._my_progress(conn, token) if token is not None else None

        def empty():
            return {"items": 0, "decided": 0, "pending": 0, "yes": 0, "no": 0}

        total, per_class, per_round = empty(), collections.defaultdict(empty), collections.defaultdict(empty)
        decision, pairs = {}, collections.defaultdict(lambda: [0, 0])  # class -> [agreeing, all]
        for item_id, cls, rnd, k, y, n in tallies:
            decided = _still_needed(y, n, k) == 0
            for bucket in (total, per_class[cls], per_round[rnd]):
                bucket["items"] += 1
                bucket["decided" if decided else "pending"] += 1
                if decided:
                    bucket[_majority(y, n)] += 1
            if decided:
                decision[item_id] = _majority(y, n)
            if y + n >= 2:
                pairs[cls][0] += y * (y - 1) // 2 + n * (n - 1) // 2
                pairs[cls][1] += (y + n) * (y + n - 1) // 2
        for cls, bucket in per_class.items():
            agree, all_pairs = pairs.get(cls, (0, 0))
            bucket["agreement"] = agree / all_pairs if all_pairs else None
            bucket["pairs"] = all_pairs
        multi = {i for i, _c, _r, _k, y, n in tallies if y + n >= 2}
        per_labeler = collections.defaultdict(
            lambda: {"yes": 0, "no": 0, "skip": 0, "compared": 0, "agreed": 0})
        for name in names:  # every labeler is listed, with or without verdicts
            per_labeler[name]
        counts = {v: 0 for v in VERDICTS}
        for item_id, verdict, name in rows:
            counts[verdict] += 1
            stats = per_labeler[name]
            stats[verdict] += 1
            if verdict in JUDGEMENTS and item_id in multi and item_id in decision:
                stats["compared"] += 1
                stats["agreed"] += verdict == decision[item_id]
        for stats in per_labeler.values():
            stats["agreement"] = stats["agreed"] / stats["compared"] if stats["compared"] else None
        agree = sum(a for a, _ in pairs.values())
        all_pairs = sum(p for _, p in pairs.values())
        result = dict(total, verdicts=counts, agreement=agree / all_pairs if all_pairs else None,
                      per_class=dict(sorted(per_class.items())),
                      per_labeler=dict(sorted(per_labeler.items())),
                      per_round={str(r): v for r, v in sorted(per_round.items())})
        if me is not None:
            result["me"] = me
        return result

    def _my_progress(self, conn, token) -> dict:
        labeler_id, name = self._labeler(conn, token)
        now = time.time()
        done = conn.execute(sa.select(sa.func.count()).select_from(verdicts).where(
            verdicts.c.labeler_id == labeler_id, verdicts.c.undone_at.is_(None))).scalar_one()
        leased = conn.execute(sa.select(sa.func.count()).select_from(leases).where(
            leases.c.labeler_id == labeler_id, leases.c.expires_at > now)).scalar_one()
        # Items this labeler could still judge, the ones leased to it included.
        remaining = conn.execute(sa.select(sa.func.count()).select_from(items).where(
            self._open_slots(labeler_id, now) > 0, ~self._seen_by(labeler_id))).scalar_one()
        return {"labeler": name, "done": done, "leased": leased, "remaining": remaining}
