"""finegrain-review: manage the label store and run the review app.

    finegrain-review add-labeler NAME --db URL        prints the new labeler's token (once)
    finegrain-review serve --db URL --host H --port P [--image_root DIR]
    finegrain-review import-classes FILE --db URL     class definitions and exemplars (CSV/JSONL/YAML)
    finegrain-review stats --db URL                   progress and agreement as JSON

URL is sqlite:///path/labels.db (default ./labels.db) or postgresql://user@host/db.
Labelers open http://H:P/login?token=TOKEN (or paste the token on the sign-in page).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Optional, Sequence

DEFAULT_DB = "sqlite:///labels.db"


def _open_store(url: str):
    from finegrain_tf.review.store import LabelStore

    store = LabelStore(url)
    store.create_schema()
    return store


def _class_entries(path: str):
    """(name, definition, exemplars) from the file: a CSV or JSONL of rows with `class`,
    `definition` and optional `exemplars` (";"-separated in CSV) -- the format finegrain-bootstrap's
    --class_definitions reads -- or a JSON/YAML mapping {class: text | {definition, exemplars}}."""
    import csv

    import yaml  # a superset of JSON

    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".csv"):
            rows = list(csv.DictReader(f))
        elif path.endswith(".jsonl"):
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            data = yaml.safe_load(f)
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping of class name to "
                                 f"{{definition, exemplars}}, got {type(data).__name__}")
            rows = [{"class": name, **({"definition": entry} if isinstance(entry, str) else entry)}
                    if isinstance(entry, (str, dict)) else entry for name, entry in data.items()]
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("class") or set(row) - {"class", "definition",
                                                                            "exemplars"}:
            raise ValueError(f"{path}: entry {number} needs a class and only definition / "
                             f"exemplars besides, got {row!r}")
        exemplars = row.get("exemplars") or []
        if isinstance(exemplars, str):
            exemplars = [p.strip() for p in exemplars.split(";") if p.strip()]
        if not isinstance(exemplars, list):
            raise ValueError(f"{path}: exemplars of class {row['class']!r} must be a list, "
                             f"got {exemplars!r}")
        yield str(row["class"]), str(row.get("definition") or ""), [str(p) for p in exemplars]


def read_class_file(path: str) -> dict:
    """{class name: {"definition": str, "exemplars": [paths]}}; relative exemplar paths resolve
    against the file's folder. Formats: see `_class_entries`."""
    folder = os.path.dirname(os.path.abspath(path))
    return {name: {"definition": definition,
                   "exemplars": [p if os.path.isabs(p) else os.path.join(folder, p) for p in exemplars]}
            for name, definition, exemplars in _class_entries(path)}


class RedactTokens(logging.Filter):
    """Keeps `/login?token=...` out of the access log (uvicorn logs the full path)."""

    _TOKEN = re.compile(r"(token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._TOKEN.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def _add_labeler(args) -> None:
    print(_open_store(args.db).add_labeler(args.name))


def _serve(args) -> None:
    import uvicorn

    from finegrain_tf.review.app import create_app

    store = _open_store(args.db)
    if args.image_root and not os.path.isdir(args.image_root):
        raise ValueError(f"--image_root {args.image_root!r} is not a folder")
    app = create_app(store, image_root=args.image_root or None, max_body_bytes=args.max_body_bytes)
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _import_classes(args) -> None:
    store = _open_store(args.db)
    classes = read_class_file(args.file)
    for name, entry in classes.items():
        store.set_class(name, entry["definition"], entry["exemplars"])
    print(f"imported {len(classes)} classes")


def _stats(args) -> None:
    print(json.dumps(_open_store(args.db).stats(), indent=2, sort_keys=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finegrain-review", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n\n")[1:]))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, func, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--db", default=DEFAULT_DB,
                         help=f"label store URL: sqlite:///FILE or postgresql://... (default {DEFAULT_DB})")
        sub.set_defaults(func=func)
        return sub

    add = command("add-labeler", _add_labeler, "register a labeler and print its token")
    add.add_argument("name", help="labeler name (unique)")
    serve = command("serve", _serve, "run the review web app")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve.add_argument("--image_root", default="",
                       help="folder that relative image paths in the store resolve against "
                            "(default: the working directory)")
    serve.add_argument("--max_body_bytes", type=int, default=16 * 1024,
                       help="largest request body accepted (default 16 KiB)")
    serve.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info",
                                                               "debug"])
    imp = command("import-classes", _import_classes,
                  "load class definitions and exemplar images: a CSV/JSONL with class, definition "
                  "(and exemplars) columns, or a JSON/YAML mapping {class: {definition, exemplars}}")
    imp.add_argument("file", help="the class-definitions file")
    command("stats", _stats, "print progress and agreement statistics as JSON")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        if not 0 < args.port < 65536:
            parser.error(f"--port must be in 1..65535, got {args.port}")
        if args.max_body_bytes < 1024:
            parser.error(f"--max_body_bytes must be at least 1024, got {args.max_body_bytes}")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        args.func(args)
    except (ValueError, OSError, SQLAlchemyError) as e:  # bad URL or file, unreachable database
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        parser.exit(2, f"finegrain-review {args.command}: error: {message}\n")


if __name__ == "__main__":
    run(sys.argv[1:])
