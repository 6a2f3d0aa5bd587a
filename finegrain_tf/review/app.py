"""The review web app (FastAPI + Jinja2): review cards for people, a small JSON API for programs.

Pages (server-rendered; the token is given once on the login page or as `/login?token=...`, then
kept in an HttpOnly, SameSite=Strict cookie):
  /review   one card: the candidate image beside exemplars of the proposed class and the class's
            definition; yes / no / skip / undo buttons with keys y / n / s / u; progress
  /stats    progress per class and round, agreement per labeler and per class

API (every request `Authorization: Bearer <token>`; the page's cookie is accepted too):
  GET  /api/queue?limit=N      items leased to this labeler (1 <= N <= 100, default 10)
  POST /api/verdicts           {"item_id", "verdict": "yes"|"no"|"skip", "request_id"}; 200 once
                               committed; the same request_id again replays the first answer
  POST /api/undo               {"item_id"} (or {} for the latest verdict)
  GET  /api/stats              the store's statistics plus this labeler's progress
  GET  /api/items/{id}/image, /api/items/{id}/exemplars/{n}   images, by item id only
Errors: 401 no valid token (nothing changes), 404 unknown item, 400 malformed body or parameter,
409 the item already has its judges, 413 body over the limit; the body is {"detail": "..."}.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import os
import urllib.parse
import uuid
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from finegrain_tf.review.store import (
    VERDICTS, AuthError, Conflict, LabelStore, NothingToUndo, UnknownItem)

COOKIE = "finegrain_review_token"
MAX_BODY_BYTES = 16 * 1024
MAX_QUEUE_LIMIT = 100
CARD_LEASE = 10  # items a page view leases ahead, so the next card is ready
_HERE = os.path.dirname(os.path.abspath(__file__))
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # No inline script or style: an escaped-away class name could not run anything anyway.
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; "
                               "style-src 'self'; frame-ancestors 'none'; form-action 'self'",
}


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: Optional[dict] = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class BodySizeLimit:
    """ASGI middleware: 413 for a declared Content-Length over the limit (before reading a byte).
    Streamed bodies without a length are counted by `read_body`."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                status = 413 if length.isdigit() else 400
                response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"
                                         if status == 413 else "bad Content-Length"}, status)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


# ---- request parsing (every failure is a 400 or 413 naming what was wrong) -----------------------

async def read_body(request: Request, max_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, f"request body over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_body(request: Request, max_bytes: int, allowed: set) -> dict:
    """The body as a JSON object with no keys outside `allowed`."""
    raw = await read_body(request, max_bytes)
    if _content_type(request) != "application/json":
        raise HTTPError(400, "body must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError included
        raise HTTPError(400, f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, f"body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise HTTPError(400, f"unknown field(s) {unknown}; expected {sorted(allowed)}")
    return body


async def form_body(request: Request, max_bytes: int) -> dict:
    raw = await read_body(request, max_bytes)
    if _content_type(request) != "application/x-www-form-urlencoded":
        raise HTTPError(400, "expected a form (application/x-www-form-urlencoded)")
    try:
        return dict(urllib.parse.parse_qsl(raw.decode("utf-8"), strict_parsing=bool(raw)))
    except ValueError as e:
        raise HTTPError(400, f"malformed form: {e}") from None


def string_field(body: dict, key: str, required: bool = True) -> Optional[str]:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise HTTPError(400, f"{key} must be a non-empty string, got {value!r}")
    return value


def small_int(raw: str) -> Optional[int]:
    """A parameter of ASCII digits as an int, else None ("²".isdigit() is True, int("²") fails)."""
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else None


def bearer_token(request: Request) -> str:
    """The request's token: `Authorization: Bearer`, else the page's cookie (not yet checked)."""
    header = request.headers.get("authorization")
    if header is None:
        token = request.cookies.get(COOKIE)
        if not token:
            raise HTTPError(401, "missing token: send Authorization: Bearer <token>",
                            {"WWW-Authenticate": "Bearer"})
        return token
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPError(401, "Authorization must be 'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
    return token.strip()


def csrf_value(token: str) -> str:
    """The page forms' anti-forgery value: derived from the labeler's token, which other sites
    cannot read."""
    return hashlib.sha256(b"finegrain-review-csrf:" + token.encode()).hexdigest()[:32]


# ---- responses ---------------------------------------------------------------------------------

def item_url(item_id: str, *rest: str) -> str:
    return "/api/items/" + "/".join([urllib.parse.quote(item_id, safe="")] + list(rest))


def image_response(path: str, image_root: str) -> Response:
    """The image file at `path` (a path from the store, never from the request)."""
    path = path if os.path.isabs(path) else os.path.join(image_root, path)
    if not os.path.isfile(path):
        raise HTTPError(404, "image file missing")
    media_type, _ = mimetypes.guess_type(path)
    if not (media_type or "").startswith("image/"):
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


NOTICES = {"conflict": "That item was already judged by enough labelers; here is the next one.",
           "nothing": "Nothing to undo.", "undone": "Verdict withdrawn: judge this card again."}


def create_app(store: LabelStore, image_root: Optional[str] = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The app serving `store`. Relative image paths in the store resolve against `image_root`
    (default: the working directory)."""
    image_root = os.path.abspath(image_root or os.getcwd())
    app = FastAPI(title="finegrain-review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.mount("/static", StaticFiles(directory=os.path.join(_HERE, "static")), name="static")
    templates = Jinja2Templates(directory=os.path.join(_HERE, "templates"))  # autoescapes .html

    # ---- errors: JSON for the API, the sign-in page for a person without a valid token ----------

    def error_response(request: Request, status: int, detail: str, headers=None) -> Response:
        if status == 401 and not request.url.path.startswith("/api/"):
            return templates.TemplateResponse(request, "login.html", {"error": detail},
                                              status_code=401)
        return JSONResponse({"detail": detail}, status, headers=headers)

    store_errors = {AuthError: 401, UnknownItem: 404, NothingToUndo: 404, Conflict: 409}
    for error_type, status in store_errors.items():
        def handler(request: Request, exc: Exception, status=status):
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return error_response(request, status, exc.args[0] if exc.args else str(exc), headers)
        app.add_exception_handler(error_type, handler)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        return error_response(request, exc.status, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)  # FastAPI would answer 422
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(request, 400, "malformed request: " + "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)  # unknown routes, wrong methods
    async def _starlette_error(request: Request, exc: StarletteHTTPException):
        return error_response(request, exc.status_code, str(exc.detail), exc.headers)

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    async def call(method, *args):
        """A (blocking) store call on the thread pool; its ValueErrors are the client's (400)."""
        try:
            return await run_in_threadpool(method, *args)
        except ValueError as e:
            raise HTTPError(400, str(e)) from None

    async def labeler(request: Request) -> str:
        """Dependency of every route but sign-in: the token, once the store knows it (else 401)."""
        token = bearer_token(request)
        await call(store.labeler_name, token)
        return token

    # ---- API -------------------------------------------------------------------------------------

    def card_fields(item: dict) -> dict:
        info = store.class_info(item["proposed_class"])
        return {"item_id": item["item_id"], "proposed_class": item["proposed_class"],
                "round": item["round"], "score": item["score"], "judgements": item["judgements"],
                "lease_expires": item["lease_expires"], "definition": info["definition"],
                "file_name": os.path.basename(item["image_path"]),
                "image_url": item_url(item["item_id"], "image"),
                "exemplar_urls": [item_url(item["item_id"], "exemplars", str(n))
                                  for n in range(len(info["exemplars"]))]}

    @app.get("/api/queue")
    async def api_queue(request: Request, token: str = Depends(labeler)):
        raw = request.query_params.get("limit", "10")
        limit = small_int(raw)
        if limit is None or not 1 <= limit <= MAX_QUEUE_LIMIT:
            raise HTTPError(400, f"limit must be an integer in [1, {MAX_QUEUE_LIMIT}], got {raw!r}")
        leased = await call(store.lease, token, limit)
        return {"items": await call(lambda: [card_fields(i) for i in leased])}

    @app.post("/api/verdicts")
    async def api_verdicts(request: Request, token: str = Depends(labeler)):
        body = await json_body(request, max_body_bytes, {"item_id", "verdict", "request_id"})
        item_id, request_id = string_field(body, "item_id"), string_field(body, "request_id")
        verdict = body.get("verdict")
        if verdict not in VERDICTS:
            raise HTTPError(400, f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        return await call(store.record_verdict, token, item_id, verdict, request_id)

    @app.post("/api/undo")
    async def api_undo(request: Request, token: str = Depends(labeler)):
        body = await json_body(request, max_body_bytes, {"item_id"})
        return await call(store.undo, token, string_field(body, "item_id", required=False))

    @app.get("/api/stats")
    async def api_stats(token: str = Depends(labeler)):
        return await call(store.stats, token)

    @app.get("/api/items/{item_id:path}/image", dependencies=[Depends(labeler)])
    async def api_image(item_id: str):
        item = await call(store.item, item_id)
        return image_response(item["image_path"], image_root)

    @app.get("/api/items/{item_id:path}/exemplars/{index}", dependencies=[Depends(labeler)])
    async def api_exemplar(item_id: str, index: str):
        item = await call(store.item, item_id)
        exemplars = (await call(store.class_info, item["proposed_class"]))["exemplars"]
        number = small_int(index)
        if number is None or number >= len(exemplars):
            raise HTTPError(404, f"class of item {item_id!r} has {len(exemplars)} exemplar(s), "
                                 f"no {index!r}")
        return image_response(exemplars[number], image_root)

    # ---- pages -----------------------------------------------------------------------------------

    async def sign_in(request: Request, token: str) -> Response:
        await call(store.labeler_name, token)  # AuthError: the sign-in page again, with a 401
        # Redirect, so the token leaves the address bar and the history entry.
        response = RedirectResponse("/review", 303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/")
    async def index(request: Request):
        if request.cookies.get(COOKIE):
            return RedirectResponse("/review", 303)
        return templates.TemplateResponse(request, "login.html", {"error": None})

    @app.get("/login")
    async def login_get(request: Request):
        token = request.query_params.get("token")
        if not token:
            return templates.TemplateResponse(request, "login.html", {"error": None})
        return await sign_in(request, token)

    @app.post("/login")
    async def login_post(request: Request):
        form = await form_body(request, max_body_bytes)
        return await sign_in(request, form.get("token", ""))

    @app.post("/logout")
    async def logout():
        response = RedirectResponse("/", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def page_form(request: Request, token: str) -> dict:
        form = await form_body(request, max_body_bytes)
        if not hmac.compare_digest(form.get("csrf", ""), csrf_value(token)):
            raise HTTPError(400, "stale or forged form: reload the page")
        return form

    @app.get("/review")
    async def review_page(request: Request, token: str = Depends(labeler)):
        leased = await call(store.lease, token, CARD_LEASE)
        wanted = request.query_params.get("item")
        card = next((i for i in leased if i["item_id"] == wanted), leased[0] if leased else None)
        progress = await call(store.progress, token, card["proposed_class"] if card else None)
        context = {"me": progress["me"], "total": progress["all"], "card": None,
                   "csrf": csrf_value(token),
                   "notice": NOTICES.get(request.query_params.get("notice", ""))}
        if card is not None:
            context["card"] = await call(card_fields, card)
            context["class_progress"] = progress["class"]
            context["request_id"] = uuid.uuid4().hex  # one per rendered card: resubmits replay
        return templates.TemplateResponse(request, "review.html", context)

    @app.post("/review/verdict")
    async def review_verdict(request: Request, token: str = Depends(labeler)):
        form = await page_form(request, token)
        verdict = form.get("verdict")
        if verdict not in VERDICTS or not form.get("item_id") or not form.get("request_id"):
            raise HTTPError(400, "form needs item_id, request_id and a verdict of yes/no/skip")
        try:
            await call(store.record_verdict, token, form["item_id"], verdict, form["request_id"])
        except Conflict:
            return RedirectResponse("/review?notice=conflict", 303)
        return RedirectResponse("/review", 303)

    @app.post("/review/undo")
    async def review_undo(request: Request, token: str = Depends(labeler)):
        await page_form(request, token)
        try:
            undone = await call(store.undo, token)
        except NothingToUndo:
            return RedirectResponse("/review?notice=nothing", 303)
        query = urllib.parse.urlencode({"item": undone["item_id"], "notice": "undone"})
        return RedirectResponse(f"/review?{query}", 303)

    @app.get("/stats")
    async def stats_page(request: Request, token: str = Depends(labeler)):
        stats = await call(store.stats, token)
        return templates.TemplateResponse(request, "stats.html", {"stats": stats})

    return app
