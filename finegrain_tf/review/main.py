"""`finegrain-review`: manage the label store and run the review app.

    finegrain-review add-labeler NAME --db URL        prints the new labeler's token (once)
    finegrain-review serve --db URL --host H --port P [--image_root DIR]
    finegrain-review import-classes FILE --db URL     class definitions and exemplars (JSON/YAML)
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


def read_class_file(path: str) -> dict:
    """{class name: {"definition": str, "exemplars": [paths]}} from a JSON or YAML mapping.
    Relative exemplar paths resolve against the file's folder."""
    import yaml  # a superset of JSON

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of class name to "
                         f"{{definition, exemplars}}, got {type(data).__name__}")
    folder = os.path.dirname(os.path.abspath(path))
    classes = {}
    for name, entry in data.items():
        entry = {"definition": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or set(entry) - {"definition", "exemplars"}:
            raise ValueError(f"{path}: class {name!r} needs a definition string or a mapping with "
                             f"only 'definition' and 'exemplars', got {entry!r}")
        exemplars = entry.get("exemplars") or []
        if not isinstance(exemplars, list):
            raise ValueError(f"{path}: exemplars of class {name!r} must be a list, got {exemplars!r}")
        classes[str(name)] = {
            "definition": str(entry.get("definition") or ""),
            "exemplars": [p if os.path.isabs(p) else os.path.join(folder, p) for p in map(str, exemplars)]}
    return classes


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
                  "load class definitions and exemplar images from a JSON/YAML file "
                  "({class: {definition: text, exemplars: [paths]}})")
    imp.add_argument("file", help="the class-definitions file")
    command("stats", _stats, "print progress and agreement statistics as JSON")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "port", 1) is not None and not 0 < getattr(args, "port", 1) < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        args.func(args)
    except (ValueError, OSError, SQLAlchemyError) as e:  # bad URL or file, unreachable database
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        parser.exit(2, f"finegrain-review {args.command}: error: {message}\n")


if __name__ == "__main__":
    run(sys.argv[1:])
