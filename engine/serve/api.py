"""The node's HTTP/JSON control API, built from the route table (:mod:`engine.routes`).

The same table builds the aiohttp router, validates requests (JSON Schema), and generates
``/v1/openapi.json``; the remote client is built from it too. Every route but ``/healthz`` needs
a bearer token, checked before anything else (an unauthenticated client learns nothing, not even
whether a path or a volume exists: 401 for all), then the token's role against the route's
(403 with the reason). Every state-changing request is written to the audit trail, with its
result, before the answer leaves. Engine errors become 4xx JSON bodies ``{"error": {"type",
"message"}}``; a malformed or oversized request is a 4xx, never a 5xx.
"""

import asyncio
import errno
import hmac
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone

import jsonschema
from aiohttp import web

from ..access import NODE_TOKEN, allows, audit
from ..errors import EngineError, Forbidden, InvalidInput
from ..node import Node
from ..routes import MAX_DATA, ROUTES, Route
from ..storage.names import iso

SECRET_FIELDS = ("token", "tls_ca")  # never echoed in an error message (a body's values may be secrets)

def error_response(status: int, kind: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status, headers=headers)


def _parse_query(route: Route, request: web.Request) -> dict:
    params: dict = {}
    for key in request.query:
        if key not in route.query:
            raise InvalidInput(f"unknown query parameter {key!r}")
    for key, schema in route.query.items():
        raw = request.query.get(key)
        if raw is None:
            if "default" not in schema:
                raise InvalidInput(f"query parameter {key!r} is required")
            params[key] = schema["default"]
            continue
        if schema.get("type") == "integer":
            try:
                value: object = int(raw)
            except ValueError:
                raise InvalidInput(f"query parameter {key!r} must be an integer, not {raw[:40]!r}") from None
            if value < schema.get("minimum", value) or value > schema.get("maximum", value):  # type: ignore[operator]
                raise InvalidInput(f"query parameter {key!r} is out of range: {value}")
        elif schema.get("type") == "boolean":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise InvalidInput(f"query parameter {key!r} must be true or false, not {raw[:40]!r}")
            value = raw.lower() in ("true", "1")
        else:
            value = raw
        params[key] = value
    return params


async def _parse_body(route: Route, request: web.Request) -> dict:
    if route.raw_body:
        data = await request.read()
        return {"data": data}
    raw = await request.read()
    if route.body is None:
        return {}
    if not raw and not route.body.get("required"):
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the request body is not valid JSON") from None
    request["body"] = body  # the audit line names some of its fields
    errors = sorted(jsonschema.Draft202012Validator(route.body).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "body"
        echoes = e.path[0] in SECRET_FIELDS if e.path else e.validator not in ("required", "additionalProperties")
        if echoes:  # say what is wrong, never the value (it may be a secret: a token, the whole body)
            raise InvalidInput(f"{where}: invalid ({e.validator} {e.validator_value!r})")
        raise InvalidInput(f"{where}: {e.message}")
    return body


class Changes:
    """Marker results, as a signal inside the event loop: a long-poll awaits the next one instead
    of holding a thread (a thousand policies waiting for their markers cost no threads)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event = asyncio.Event()

    def notify(self) -> None:  # from any thread (a sender's turn: it must not raise there)
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self._fire)
            except RuntimeError:  # the loop closed meanwhile: the server is stopping
                pass

    def _fire(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


async def _long_poll(route: Route, call: Callable, changes: Changes, params: dict) -> object:
    """``call`` with timeout 0 until ``route.long_poll`` says its answer is final, or the timeout passes."""
    changes.loop = asyncio.get_running_loop()
    deadline = changes.loop.time() + float(params.pop("timeout", 0) or 0)
    while True:
        event = changes.event  # before asking: a change from here on wakes this poll
        result = await asyncio.to_thread(call, **params, timeout=0)
        left = deadline - changes.loop.time()
        if left <= 0 or route.long_poll(result):  # type: ignore[misc]
            return result
        try:
            await asyncio.wait_for(event.wait(), min(left, 1.0))
        except TimeoutError:
            pass


def _handler(node: Node, route: Route, changes: Changes):
    async def handle(request: web.Request) -> web.StreamResponse:
        params = dict(request.match_info)
        params.update(_parse_query(route, request))
        params.update(await _parse_body(route, request))
        if route.long_poll is not None:
            result = await _long_poll(route, route.bind(node), changes, params)
        else:
            result = await asyncio.to_thread(route.bind(node), **params, **route.server_args)
        if route.returns == "bytes":
            return web.Response(body=result, content_type="application/octet-stream")
        if route.status == 204:
            return web.Response(status=204)
        return web.json_response(result if result is not None else {"ok": True}, status=route.status,
                                 dumps=lambda o: json.dumps(o, default=str))
    handle.route = route  # type: ignore[attr-defined]  # the guard checks its role and audits it
    return handle


def make_app(node: Node, token: str, metrics: Callable[[], bytes] | None = None,
             clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> web.Application:
    def identify(request: web.Request) -> tuple[str, str] | None:
        """(name, role) of the request's bearer token, or None."""
        supplied = request.headers.get("Authorization", "")
        if not supplied.startswith("Bearer "):
            return None
        if hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
            return NODE_TOKEN, "admin"
        return node.access.tokens.lookup(supplied[len("Bearer "):])

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        who = None
        if request.path != "/healthz":
            who = identify(request)
            if who is None:
                return error_response(401, "Unauthorized", "a valid bearer token is required",
                                      **{"WWW-Authenticate": 'Bearer realm="aimsnap"'})
        route: Route | None = getattr(request.match_info.handler, "route", None)
        if request.method in ("GET", "HEAD") or who is None:
            return await _answer(request, handler, who, route)
        response: web.StreamResponse = web.Response(status=500)  # what the record says if the handler raises
        try:
            response = await _answer(request, handler, who, route)
            return response
        finally:  # the answer leaves once its record is synced; an unexpected error is recorded too
            entry = await _audit_entry(request, who, route, response, clock())
            await asyncio.to_thread(node.access.log.record, entry)

    async def _answer(request: web.Request, handler, who: tuple[str, str] | None,
                      route: Route | None) -> web.StreamResponse:
        try:
            need = route.role if route else "read"
            if who is not None and not allows(who[1], need):
                raise Forbidden(f"token {who[0]!r} has role {who[1]}: {request.method} {request.path} needs "
                                f"{need} (node token create NAME --role {need})")
            return await handler(request)
        except EngineError as e:
            return error_response(e.http_status, type(e).__name__, str(e))
        except web.HTTPException as e:  # 404, 405, 413 from aiohttp itself: JSON too
            if e.status < 400:
                raise
            return error_response(e.status, e.reason.replace(" ", ""), e.text or e.reason)
        except UnicodeError as e:
            return error_response(400, "InvalidInput", f"the request is not valid UTF-8: {e}")
        except OSError as e:  # the node's own storage: out of space (507) or an IO error, said as such
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = os.strerror(e.errno) if e.errno else str(e)
            return error_response(507 if full else 500, "StorageError", f"the node's storage: {reason}")

    app = web.Application(middlewares=[guard], client_max_size=MAX_DATA + (1 << 16))
    changes = Changes()
    node.replication.ledger.listeners.append(changes.notify)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _handler(node, route, changes))
    spec = openapi()
    app.router.add_get("/v1/openapi.json", lambda r: web.json_response(spec))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        async def metrics_handler(request: web.Request) -> web.Response:
            return web.Response(body=await asyncio.to_thread(metrics),
                                content_type="text/plain", charset="utf-8")
        app.router.add_get("/metrics", metrics_handler)
    return app


# the body fields an audit line names (what was made or changed); never a token, a CA or data
AUDITED_FIELDS = ("name", "role", "source", "type", "to", "members", "point", "label", "snapshot", "snapshot_set",
                  "origin", "force", "repair", "abort", "latest_point", "to_point", "timeout", "size")


_unparsed = object()


async def _audit_entry(request: web.Request, who: tuple[str, str], route: Route | None,
                       response: web.StreamResponse, now: datetime) -> dict:
    """One line of the audit trail: what was asked (the route, the names in its JSON body as the
    handler parsed it, never a secret), by whom, from where, and the answer (the error's message
    when refused)."""
    body = request.get("body", _unparsed)
    if body is _unparsed and route is not None and route.body is not None and not route.raw_body:
        try:  # refused before its handler parsed it: aiohttp kept it (already read, within its size limit)
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, web.HTTPException):
            body = None
    fields = {k: body[k] for k in AUDITED_FIELDS if k in body} if isinstance(body, dict) else {}
    error = None
    if response.status >= 400 and isinstance(response, web.Response) and response.body:
        try:
            error = json.loads(response.body)["error"]["message"]  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError):
            pass
    return audit.entry(iso(now), who[0], who[1], request.remote, request.method, request.path,
                       route.op if route else None, response.status, fields, error)


def openapi() -> dict:
    """The OpenAPI 3.1 document, generated from :data:`ROUTES`."""
    error = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict = {}
    for route in ROUTES:
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in route.path_params]
        params += [{"name": q, "in": "query", "required": q in route.required_query, "schema": s}
                   for q, s in route.query.items()]
        op: dict = {"summary": route.summary, "tags": [route.tag], "parameters": params,
                    "operationId": f"{route.method.lower()}{route.path.replace('/', '_').replace('{', '').replace('}', '')}",
                    "responses": {str(c): error for c in (400, 401, 404, 409, 413)}}
        if route.raw_body:
            op["requestBody"] = {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}}
        elif route.body is not None:
            op["requestBody"] = {"required": bool(route.body.get("required")),
                                 "content": {"application/json": {"schema": route.body}}}
        if route.returns == "bytes":
            ok = {"description": "bytes", "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                             "format": "binary"}}}}
        elif route.status == 204:
            ok = {"description": "done"}
        else:
            ok = {"description": "ok", "content": {"application/json": {"schema": {"type": ["object", "array"]}}}}
        op["responses"][str(route.status)] = ok
        paths.setdefault(route.path, {})[route.method.lower()] = op
    paths["/healthz"] = {"get": {"summary": "Liveness (no token)", "operationId": "healthz", "security": [],
                                 "responses": {"200": {"description": "alive"}}}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "responses": {"200": {"description": "text exposition format"},
                                               "401": error}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "aimsnap node control API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}}},
        },
        "security": [{"bearer": []}],
    }
