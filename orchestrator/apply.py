"""Make the nodes hold what the policy files declare: create what is missing, report drift,
never delete anything. ``dry_run`` only looks (``apply --dry-run``, ``policy validate --check-nodes``)."""

from dataclasses import dataclass

from engine import EngineError, NotFound, parse_size
from engine.interface import NodeAPI
from policies.model import Bundle, Resource

from .nodes import Nodes, read_file, read_token

ORDER = ("volume", "snapshot", "snapshot_set", "aim_set", "group")


@dataclass
class Action:
    node: str
    kind: str
    name: str
    action: str  # ok | create | created | drift | error
    detail: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def reconcile(bundle: Bundle, *, dry_run: bool, nodes: Nodes | None = None) -> list[Action]:
    nodes = nodes or Nodes(bundle, role="admin")
    actions = []
    try:
        for kind in ORDER:
            for r in [r for r in bundle.resources.values() if r.kind == kind]:
                actions.append(_one(bundle, nodes, r, dry_run))
    finally:
        nodes.close()
    return actions


def _one(bundle: Bundle, nodes: Nodes, r: Resource, dry_run: bool) -> Action:
    api = nodes(r.node)
    try:
        current = _get(api, r)
    except NotFound:
        current = None
    if current is not None:
        drift = _drift(r, current)
        return Action(r.node, r.kind, r.name, "drift" if drift else "ok", drift)
    if dry_run:
        return Action(r.node, r.kind, r.name, "create", "missing: apply would create it")
    try:
        _create(bundle, nodes, api, r)
    except EngineError as e:
        if getattr(e, "exit_code", 1) == 3:
            raise
        return Action(r.node, r.kind, r.name, "error", str(e))
    return Action(r.node, r.kind, r.name, "created")


def _get(api: NodeAPI, r: Resource) -> dict:
    return {"volume": api.volume_info, "snapshot": api.snapshot_info, "snapshot_set": api.snapshot_set_info,
            "aim_set": api.replication.info, "group": api.replication.group_info}[r.kind](r.name)


def _drift(r: Resource, cur: dict) -> str:
    s = r.spec
    if r.kind == "volume":
        if cur.get("role") != "volume":
            return f"{r.name!r} exists but is a snapshot volume"
        want = parse_size(s["size"])
        return f"size is {cur['size']} bytes, the policy says {s['size']} ({want})" if cur["size"] != want else ""
    if r.kind == "snapshot":
        if cur["type"] != s["type"] or cur["source"] != s["source"]:
            return f"is a {cur['type']} snapshot of {cur['source']!r}; the policy says {s['type']} of {s['source']!r}"
        return ""
    if r.kind in ("snapshot_set", "group"):
        if sorted(cur["members"]) != sorted(s["members"]):
            return f"members are {', '.join(cur['members'])}; the policy says {', '.join(s['members'])}"
        return ""
    if r.kind == "aim_set":
        if cur["source"] != s["source"] or not cur["destination"].endswith("/" + s["to"]["volume"]):
            return f"replicates {cur['source']!r} to {cur['destination']!r}; the policy says {s['source']!r} to " \
                   f"{s['to']['node']}/{s['to']['volume']}"
    return ""


def _create(bundle: Bundle, nodes: Nodes, api: NodeAPI, r: Resource) -> None:
    s = r.spec
    if r.kind == "volume":
        api.create_volume(r.name, s["size"], s.get("block_size", 65536))
    elif r.kind == "snapshot":
        api.create_snapshot(r.name, s["source"], s["type"])
    elif r.kind == "snapshot_set":
        api.create_snapshot_set(r.name, s["members"])
    elif r.kind == "group":
        api.replication.create_group(r.name, s["members"])
    elif r.kind == "aim_set":
        dest = bundle.nodes[s["to"]["node"]]
        tls = read_file(dest.aim_tls_ca, "CA certificate") if dest.aim_tls_ca else None
        api.replication.create(r.name, s["source"], f"{dest.aim}/{s['to']['volume']}", read_token(dest.token_file),
                               s.get("journal_limit"), tls)
