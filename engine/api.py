"""The node's HTTP/JSON control API.

Routes are declared once in :data:`ROUTES`; the same table builds the aiohttp router, validates
requests (JSON Schema), and generates ``/v1/openapi.json``. Every route but ``/healthz`` needs
the bearer token. Engine errors become 4xx JSON bodies ``{"error": {"type", "message"}}``; a
malformed or oversized request is a 4xx, never a 5xx.
"""

import asyncio
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import jsonschema
from aiohttp import web

from .errors import EngineError, InvalidInput
from .node import DEFAULT_BLOCK_SIZE, Node

MAX_DATA = 64 << 20  # one data request; clients stream larger ranges in pieces
NAME = {"type": "string", "minLength": 1, "maxLength": 64}
SIZE = {"type": ["string", "integer"], "description": "bytes, or a binary unit: 64MiB, 1GiB"}
OFFSET = {"type": "integer", "minimum": 0}


@dataclass
class Route:
    method: str
    path: str
    summary: str
    call: Callable[[Node, dict], object]
    body: dict | None = None  # JSON Schema of a JSON body; "bytes" routes take octet-stream
    query: dict[str, dict] = field(default_factory=dict)
    required_query: tuple[str, ...] = ()
    raw_body: bool = False
    returns: str = "json"  # json | bytes
    status: int = 200
    tag: str = "volumes"

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


ROUTES: list[Route] = [
    Route("GET", "/v1/node", "Node identity and counts", lambda n, p: n.node_info(), tag="node"),
    Route("GET", "/v1/volumes", "List volumes", lambda n, p: n.list_volumes()),
    Route("POST", "/v1/volumes", "Create a volume",
          lambda n, p: n.create_volume(p["name"], p["size"], p.get("block_size", DEFAULT_BLOCK_SIZE)),
          body=_obj({"name": NAME, "size": SIZE, "block_size": SIZE}, ["name", "size"]), status=201),
    Route("GET", "/v1/volumes/{name}", "Show a volume", lambda n, p: n.volume_info(p["name"])),
    Route("DELETE", "/v1/volumes/{name}", "Delete a volume", lambda n, p: n.delete_volume(p["name"]), status=204),
    Route("GET", "/v1/volumes/{name}/data", "Read bytes",
          lambda n, p: n.read(p["name"], p.get("offset", 0), p["length"]),
          query={"offset": OFFSET, "length": {"type": "integer", "minimum": 0, "maximum": MAX_DATA}},
          required_query=("length",), returns="bytes"),
    Route("PUT", "/v1/volumes/{name}/data", "Write bytes (durable when answered)",
          lambda n, p: n.write_durably(p["name"], p.get("offset", 0), p["data"]),
          query={"offset": OFFSET}, raw_body=True),
    Route("POST", "/v1/volumes/{name}/flush", "Make every write durable", lambda n, p: n.flush(p["name"])),
    Route("GET", "/v1/snapshots", "List snapshot relationships", lambda n, p: n.list_snapshots(), tag="snapshots"),
    Route("POST", "/v1/snapshots", "Pre-configure a snapshot relationship",
          lambda n, p: n.create_snapshot(p["name"], p["source"], p["type"]),
          body=_obj({"name": NAME, "source": NAME, "type": {"enum": ["complete-image", "differential"]}},
                    ["name", "source", "type"]), status=201, tag="snapshots"),
    Route("GET", "/v1/snapshots/{name}", "Show a snapshot relationship", lambda n, p: n.snapshot_info(p["name"]),
          tag="snapshots"),
    Route("DELETE", "/v1/snapshots/{name}", "Delete a snapshot relationship",
          lambda n, p: n.delete_snapshot(p["name"]), status=204, tag="snapshots"),
    Route("POST", "/v1/snapshots/{name}/enable", "Increment, or add a point in time",
          lambda n, p: n.enable_snapshot(p["name"], p.get("point")),
          body=_obj({"point": {"type": "string", "minLength": 1, "maxLength": 128}}, []), tag="snapshots"),
    Route("DELETE", "/v1/snapshots/{name}/points/{point}", "Delete one point in time",
          lambda n, p: n.delete_point(p["name"], p["point"]), status=204, tag="snapshots"),
    Route("GET", "/v1/snapshots/{name}/data", "Read a snapshot or one point in time",
          lambda n, p: n.read_snapshot(p["name"], p.get("point"), p.get("offset", 0), p["length"]),
          query={"point": {"type": "string"}, "offset": OFFSET,
                 "length": {"type": "integer", "minimum": 0, "maximum": MAX_DATA}},
          required_query=("length",), returns="bytes", tag="snapshots"),
    Route("GET", "/v1/snapshot-sets", "List snapshot sets", lambda n, p: n.list_snapshot_sets(), tag="snapshot-sets"),
    Route("POST", "/v1/snapshot-sets", "Create a snapshot set",
          lambda n, p: n.create_snapshot_set(p["name"], p["members"]),
          body=_obj({"name": NAME, "members": {"type": "array", "items": NAME, "minItems": 1}}, ["name", "members"]),
          status=201, tag="snapshot-sets"),
    Route("GET", "/v1/snapshot-sets/{name}", "Show a snapshot set", lambda n, p: n.snapshot_set_info(p["name"]),
          tag="snapshot-sets"),
    Route("DELETE", "/v1/snapshot-sets/{name}", "Delete a snapshot set",
          lambda n, p: n.delete_snapshot_set(p["name"]), status=204, tag="snapshot-sets"),
    Route("POST", "/v1/snapshot-sets/{name}/enable", "Enable every member at one write-order point",
          lambda n, p: n.enable_snapshot_set(p["name"], p.get("point")),
          body=_obj({"point": {"type": "string", "minLength": 1, "maxLength": 128}}, []), tag="snapshot-sets"),
    Route("GET", "/v1/aim-sets", "List AIM sets with their status", lambda n, p: n.replication.list(), tag="aim"),
    Route("POST", "/v1/aim-sets", "Create an AIM set (claims the destination volume)",
          lambda n, p: n.replication.create(p["name"], p["source"], p["to"], p["token"], p.get("journal_limit"),
                                            p.get("tls_ca")),
          body=_obj({"name": NAME, "source": NAME, "to": {"type": "string", "maxLength": 300},
                     "token": {"type": "string", "maxLength": 1024}, "journal_limit": SIZE,
                     "tls_ca": {"type": "string", "maxLength": 65536}},
                    ["name", "source", "to", "token"]), status=201, tag="aim"),
    Route("GET", "/v1/aim-sets/{name}", "Show an AIM set and its status", lambda n, p: n.replication.info(p["name"]),
          tag="aim"),
    Route("DELETE", "/v1/aim-sets/{name}", "Delete an AIM set (releases the destination volume)",
          lambda n, p: n.replication.delete(p["name"]), status=204, tag="aim"),
    Route("POST", "/v1/aim-sets/{name}/pause", "Stop shipping (the journal keeps growing)",
          lambda n, p: n.replication.pause(p["name"], True), tag="aim"),
    Route("POST", "/v1/aim-sets/{name}/resume", "Ship again", lambda n, p: n.replication.pause(p["name"], False),
          tag="aim"),
    Route("POST", "/v1/aim-sets/{name}/markers", "Place a marker in the write stream",
          lambda n, p: n.replication.issue_marker(p["name"], p.get("snapshot"), p.get("label")),
          body=_obj({"snapshot": NAME, "label": {"type": "string", "minLength": 1, "maxLength": 128}}, ["snapshot"]),
          status=201, tag="aim"),
    Route("GET", "/v1/markers", "List markers, newest first",
          lambda n, p: n.replication.markers(p.get("aim_set"), p.get("limit", 100)),
          query={"aim_set": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 10000}},
          tag="aim"),
    Route("GET", "/v1/markers/{id}", "Show a marker (or a group marker); optionally wait while it is issued",
          lambda n, p: n.replication.wait(p["id"], p.get("wait", 0)),
          query={"wait": {"type": "integer", "minimum": 0, "maximum": 30}}, tag="aim"),
    Route("GET", "/v1/groups", "List groups", lambda n, p: n.replication.list_groups(), tag="aim"),
    Route("POST", "/v1/groups", "Create a group of AIM sets",
          lambda n, p: n.replication.create_group(p["name"], p["members"]),
          body=_obj({"name": NAME, "members": {"type": "array", "items": NAME, "minItems": 1}}, ["name", "members"]),
          status=201, tag="aim"),
    Route("GET", "/v1/groups/{name}", "Show a group", lambda n, p: n.replication.group_info(p["name"]), tag="aim"),
    Route("DELETE", "/v1/groups/{name}", "Delete a group", lambda n, p: n.replication.delete_group(p["name"]),
          status=204, tag="aim"),
    Route("POST", "/v1/groups/{name}/markers", "Place one marker across every member (one write-order point)",
          lambda n, p: n.replication.issue_group_marker(p["name"], p["snapshot_set"], p.get("label")),
          body=_obj({"snapshot_set": NAME, "label": {"type": "string", "minLength": 1, "maxLength": 128}},
                    ["snapshot_set"]), status=201, tag="aim"),
]


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
            if key in route.required_query:
                raise InvalidInput(f"query parameter {key!r} is required")
            continue
        if schema.get("type") == "integer":
            try:
                value: object = int(raw)
            except ValueError:
                raise InvalidInput(f"query parameter {key!r} must be an integer, not {raw[:40]!r}") from None
            if value < schema.get("minimum", value) or value > schema.get("maximum", value):  # type: ignore[operator]
                raise InvalidInput(f"query parameter {key!r} is out of range: {value}")
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
    errors = sorted(jsonschema.Draft202012Validator(route.body).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "body"
        raise InvalidInput(f"{where}: {e.message}")
    return body


def _handler(node: Node, route: Route):
    async def handle(request: web.Request) -> web.StreamResponse:
        params = dict(request.match_info)
        params.update(_parse_query(route, request))
        params.update(await _parse_body(route, request))
        result = await asyncio.to_thread(route.call, node, params)
        if route.returns == "bytes":
            return web.Response(body=result, content_type="application/octet-stream")
        if route.status == 204:
            return web.Response(status=204)
        return web.json_response(result if result is not None else {"ok": True}, status=route.status,
                                 dumps=lambda o: json.dumps(o, default=str))
    return handle


def make_app(node: Node, token: str, metrics: Callable[[], bytes] | None = None) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        if request.path != "/healthz":
            supplied = request.headers.get("Authorization", "")
            if not hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
                return error_response(401, "Unauthorized", "a valid bearer token is required",
                                      **{"WWW-Authenticate": 'Bearer realm="aimsnap"'})
        try:
            return await handler(request)
        except EngineError as e:
            return error_response(e.http_status, type(e).__name__, str(e))
        except web.HTTPException as e:  # 404, 405, 413 from aiohttp itself: JSON too
            if e.status < 400:
                raise
            return error_response(e.status, e.reason.replace(" ", ""), e.text or e.reason)
        except UnicodeError as e:
            return error_response(400, "InvalidInput", f"the request is not valid UTF-8: {e}")

    app = web.Application(middlewares=[guard], client_max_size=MAX_DATA + (1 << 16))
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _handler(node, route))
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
