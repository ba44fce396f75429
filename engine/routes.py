"""The control API's route table, declared once: each route is one method of the typed node
interface (:mod:`engine.interface`). The server (:mod:`engine.serve.api`) builds its router,
request validation and OpenAPI document from it; the remote client
(:mod:`engine.client.remote`) builds its methods from it. No web framework is imported here.

A route's parameters are the method's: path parameters by name, then the query parameters it
declares, then the JSON body's properties (or, for a raw body, ``data``).

Each route names the least role whose token may call it (:mod:`engine.access`): by default
``read`` for a GET and ``admin`` for anything else; the routes of a scheduler's and a DR
operator's work say ``operator``, and so do the GETs of volume and point data (a monitoring
token reads status, not data). This table is the specification the roles test is generated from.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from .interface import AccessAPI, ReplicationAPI, StorageAPI

MAX_DATA = 64 << 20  # one data request; clients stream larger ranges in pieces
MAX_WAIT = 30  # seconds one marker long-poll may last; the client polls again for longer waits
NAME = {"type": "string", "minLength": 1, "maxLength": 64}
SIZE = {"type": ["string", "integer"], "description": "bytes, or a binary unit: 64MiB, 1GiB"}
OFFSET = {"type": "integer", "minimum": 0, "default": 0}
LENGTH = {"type": "integer", "minimum": 0, "maximum": MAX_DATA}
LABEL = {"type": "string", "minLength": 1, "maxLength": 128}
FLAG = {"type": "boolean", "default": False}
TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "maximum": 86400, "description": "seconds"}


@dataclass
class Route:
    method: str
    path: str
    op: str  # a StorageAPI method, or "replication." and a ReplicationAPI method
    summary: str
    body: dict | None = None  # JSON Schema of a JSON body
    query: dict[str, dict] = field(default_factory=dict)  # a "default" makes a parameter optional
    raw_body: bool = False  # the body is the ``data`` argument (octet-stream)
    returns: str = "json"  # json | bytes
    status: int = 200
    tag: str = "volumes"
    server_args: dict = field(default_factory=dict)  # passed by the server only (a durable write)
    role: str = ""  # the least role allowed (engine.access.ROLES); "" = read for GET, else admin
    # a long-poll: done(result) says whether the answer is final; until then the server asks again
    # (with timeout 0) whenever a marker changes, holding no thread while it waits
    long_poll: Callable[[object], bool] | None = None

    def __post_init__(self) -> None:
        self.role = self.role or ("read" if self.method == "GET" else "admin")

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    @property
    def required_query(self) -> tuple[str, ...]:
        return tuple(k for k, s in self.query.items() if "default" not in s)

    @property
    def protocol_method(self) -> Callable:
        owner, _, name = self.op.rpartition(".")
        return getattr(PROTOCOLS[owner], name)

    def bind(self, target: object) -> Callable:
        """The method this route calls on ``target`` (a node, local or remote)."""
        owner, _, name = self.op.rpartition(".")
        return getattr(getattr(target, owner) if owner else target, name)

    def parameters(self) -> list[str]:
        return [p for p in inspect.signature(self.protocol_method).parameters if p != "self"]


PROTOCOLS = {"": StorageAPI, "replication": ReplicationAPI, "access": AccessAPI}  # a route's op owner


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _members() -> dict:
    return {"type": "array", "items": NAME, "minItems": 1}


ROUTES: list[Route] = [
    Route("GET", "/v1/node", "node_info", "Node identity and counts", tag="node"),
    Route("GET", "/v1/volumes", "list_volumes", "List volumes"),
    Route("POST", "/v1/volumes", "create_volume", "Create a volume",
          body=_obj({"name": NAME, "size": SIZE, "block_size": SIZE}, ["name", "size"]), status=201),
    Route("GET", "/v1/volumes/{name}", "volume_info", "Show a volume"),
    Route("DELETE", "/v1/volumes/{name}", "delete_volume", "Delete a volume", status=204),
    Route("GET", "/v1/volumes/{name}/data", "read", "Read bytes", query={"offset": OFFSET, "length": LENGTH},
          returns="bytes", role="operator"),
    Route("PUT", "/v1/volumes/{name}/data", "write", "Write bytes (durable when answered)",
          query={"offset": OFFSET}, raw_body=True, status=204, server_args={"fua": True}, role="operator"),
    Route("POST", "/v1/volumes/{name}/flush", "flush", "Make every write durable", status=204, role="operator"),
    Route("GET", "/v1/snapshots", "list_snapshots", "List snapshot relationships", tag="snapshots"),
    Route("POST", "/v1/snapshots", "create_snapshot", "Pre-configure a snapshot relationship",
          body=_obj({"name": NAME, "source": NAME, "type": {"enum": ["complete-image", "differential"]}},
                    ["name", "source", "type"]), status=201, tag="snapshots"),
    Route("GET", "/v1/snapshots/{name}", "snapshot_info", "Show a snapshot relationship", tag="snapshots"),
    Route("DELETE", "/v1/snapshots/{name}", "delete_snapshot", "Delete a snapshot relationship", status=204,
          tag="snapshots"),
    Route("POST", "/v1/snapshots/{name}/enable", "enable_snapshot", "Increment, or add a point in time",
          body=_obj({"point": LABEL}, []), tag="snapshots", role="operator"),
    Route("DELETE", "/v1/snapshots/{name}/points/{point}", "delete_point", "Delete one point in time", status=204,
          tag="snapshots", role="operator"),
    Route("GET", "/v1/snapshots/{name}/data", "read_snapshot", "Read a snapshot or one point in time",
          query={"point": {"type": "string", "default": None}, "offset": OFFSET, "length": LENGTH},
          returns="bytes", tag="snapshots", role="operator"),
    Route("POST", "/v1/volumes/{name}/restore", "restore_volume",
          "Make the volume's content a recovery point's, copying only the blocks that differ",
          body=_obj({"origin": {"type": "string", "minLength": 1, "maxLength": 200}, "force": FLAG}, ["origin"]),
          role="operator"),
    Route("GET", "/v1/clones", "list_clones", "List clones", tag="clones"),
    Route("POST", "/v1/clones", "create_clone", "Create a writable clone of a recovery point (nothing is copied)",
          body=_obj({"name": NAME, "origin": {"type": "string", "minLength": 1, "maxLength": 200}},
                    ["name", "origin"]), status=201, tag="clones", role="operator"),
    Route("GET", "/v1/clones/{name}", "clone_info", "Show a clone", tag="clones"),
    Route("DELETE", "/v1/clones/{name}", "delete_clone", "Delete a clone", query={"force": FLAG},
          status=204, tag="clones", role="operator"),
    Route("GET", "/v1/snapshot-sets", "list_snapshot_sets", "List snapshot sets", tag="snapshot-sets"),
    Route("POST", "/v1/snapshot-sets", "create_snapshot_set", "Create a snapshot set",
          body=_obj({"name": NAME, "members": _members()}, ["name", "members"]), status=201, tag="snapshot-sets"),
    Route("GET", "/v1/snapshot-sets/{name}", "snapshot_set_info", "Show a snapshot set", tag="snapshot-sets"),
    Route("DELETE", "/v1/snapshot-sets/{name}", "delete_snapshot_set", "Delete a snapshot set", status=204,
          tag="snapshot-sets"),
    Route("POST", "/v1/snapshot-sets/{name}/enable", "enable_snapshot_set",
          "Enable every member at one write-order point", body=_obj({"point": LABEL}, []), tag="snapshot-sets",
          role="operator"),
    Route("GET", "/v1/aim-sets", "replication.list", "List AIM sets with their status", tag="aim"),
    Route("POST", "/v1/aim-sets", "replication.create", "Create an AIM set (claims the destination volume)",
          body=_obj({"name": NAME, "source": NAME, "to": {"type": "string", "maxLength": 300},
                     "token": {"type": "string", "maxLength": 1024}, "journal_limit": SIZE,
                     "tls_ca": {"type": "string", "maxLength": 65536}},
                    ["name", "source", "to", "token"]), status=201, tag="aim"),
    Route("GET", "/v1/aim-sets/{name}", "replication.info", "Show an AIM set and its status", tag="aim"),
    Route("DELETE", "/v1/aim-sets/{name}", "replication.delete",
          "Delete an AIM set (releases the destination volume)", status=204, tag="aim"),
    Route("POST", "/v1/aim-sets/{name}/pause", "replication.pause", "Stop shipping (the journal keeps growing)",
          tag="aim", role="operator"),
    Route("POST", "/v1/aim-sets/{name}/resume", "replication.resume", "Ship again", tag="aim", role="operator"),
    Route("POST", "/v1/aim-sets/{name}/verify", "replication.verify",
          "Start a block-exact verify at one write-order point", body=_obj({"repair": FLAG}, []), status=202,
          tag="aim", role="operator"),
    Route("GET", "/v1/aim-sets/{name}/verify", "replication.verify_status", "The running or last verify",
          tag="aim"),
    Route("GET", "/v1/aim-sets/{name}/points", "replication.points",
          "At the destination: the recovery points the set's markers made, newest first",
          query={"limit": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}}, tag="aim"),
    Route("POST", "/v1/aim-sets/{name}/failover", "replication.failover",
          "At the destination: promote it (fenced from now on) and make its volume writable",
          body=_obj({"to_point": {"type": ["string", "null"], "minLength": 1, "maxLength": 200}, "latest_point": FLAG,
                     "force": FLAG}, []), tag="aim", role="operator"),
    Route("POST", "/v1/aim-sets/{name}/failback", "replication.failback",
          "At a failed-over destination: replicate back to the old source, sending only what differs",
          body=_obj({"source": {"type": ["string", "null"], "maxLength": 300},
                     "tls_ca": {"type": ["string", "null"], "maxLength": 65536}}, []), tag="aim", role="operator"),
    Route("POST", "/v1/aim-sets/{name}/switchover", "replication.switchover",
          "At the source: swap roles with the destination, nothing lost (fence, drain, verify, promote)",
          body=_obj({"timeout": TIMEOUT, "abort": FLAG}, []), tag="aim", role="operator"),
    Route("POST", "/v1/groups/{group}/switchover", "replication.switchover_group",
          "Switch every member of a group over at one write-order point",
          body=_obj({"timeout": TIMEOUT, "abort": FLAG}, []), tag="aim", role="operator"),
    Route("POST", "/v1/aim-sets/{aim_set}/markers", "replication.issue_marker", "Place a marker in the write stream",
          body=_obj({"snapshot": NAME, "label": LABEL}, ["snapshot"]), status=201, tag="aim", role="operator"),
    Route("GET", "/v1/markers", "replication.markers", "List markers, newest first",
          query={"aim_set": {"type": "string", "default": None},
                 "limit": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}}, tag="aim"),
    Route("GET", "/v1/markers/{ref}", "replication.show", "Show a marker (or a group marker)", tag="aim"),
    Route("GET", "/v1/markers/{ref}/wait", "replication.wait", "Show a marker once it is no longer issued",
          query={"timeout": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT}}, tag="aim",
          long_poll=lambda m: isinstance(m, dict) and m.get("state") != "issued"),
    Route("GET", "/v1/groups", "replication.list_groups", "List groups", tag="aim"),
    Route("POST", "/v1/groups", "replication.create_group", "Create a group of AIM sets",
          body=_obj({"name": NAME, "members": _members()}, ["name", "members"]), status=201, tag="aim",
          role="operator"),  # a failback plan re-forms its group at the reverse side
    Route("GET", "/v1/groups/{name}", "replication.group_info", "Show a group", tag="aim"),
    Route("DELETE", "/v1/groups/{name}", "replication.delete_group", "Delete a group", status=204, tag="aim"),
    Route("POST", "/v1/groups/{group}/markers", "replication.issue_group_marker",
          "Place one marker across every member (one write-order point)",
          body=_obj({"snapshot_set": NAME, "label": LABEL}, ["snapshot_set"]), status=201, tag="aim",
          role="operator"),
    Route("GET", "/v1/tokens", "access.list_tokens", "List API tokens (names and roles)", tag="access",
          role="admin"),
    Route("POST", "/v1/tokens", "access.create_token", "Make an API token (shown once)",
          body=_obj({"name": NAME, "role": {"enum": ["read", "operator", "admin"]}}, ["name", "role"]),
          status=201, tag="access"),
    Route("DELETE", "/v1/tokens/{name}", "access.revoke_token", "Revoke an API token", status=204, tag="access"),
    Route("GET", "/v1/audit", "access.audit", "The audit trail of state-changing requests, oldest first",
          query={"since": {"type": "string", "default": None},
                 "limit": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1000}},
          tag="access", role="admin"),
]
