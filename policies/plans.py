"""Checking recovery plans: which AIM sets and groups fail over together, where, to which point,
and what runs after. A plan runs at the destination of every member; each AIM set is in a plan
once; a group's members share its node and its destination."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .durations import DurationError, parse_duration
from .items import mapping, sequence
from .loader import Document
from .model import PlanMember, RecoveryPlan, Resource

if TYPE_CHECKING:
    from .validate import _Semantics


def check_plans(s: _Semantics, doc: Document, build: bool) -> None:
    items = doc.data.get("recovery_plans")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        plan = _plan(s, doc, ("recovery_plans", i), item)
        if plan is not None and build:
            s.b.plans.append(plan)


def _plan(s: _Semantics, doc: Document, p: tuple, item: dict) -> RecoveryPlan | None:
    name = item["name"]
    if name in s.plan_names:
        s.err(doc, p + ("name",), f"recovery plan {name!r} is defined twice (also at {s.plan_names[name]})")
        return None
    s.plan_names[name] = str(doc.where(p))
    node = item.get("node")
    if not s._node(doc, p + ("node",), node):
        return None
    members, seen, ok = [], {}, True
    for j, m in enumerate(sequence(item.get("members"))):
        m = mapping(m)
        if len(m) != 1:  # the schema says so
            ok = False
            continue
        kind = "group" if "group" in m else "aim_set"
        member = _member(s, doc, p + ("members", j, kind), kind, m.get(kind), str(node))
        if member is None:
            ok = False
            continue
        for a in member.aim_sets:
            if a in seen:
                s.err(doc, p + ("members", j, kind), f"AIM set {a!r} is in recovery plan {name!r} twice "
                                                    f"(also through {seen[a]})")
                ok = False
            seen[a] = f"{kind.replace('_', ' ')} {member.name}"
        members.append(member)
    try:
        timeout = parse_duration(item.get("timeout", "10m"))
    except DurationError as e:
        if e.out_of_range:
            s.err(doc, p + ("timeout",), str(e))
        return None
    if not ok:
        return None
    return RecoveryPlan(name, str(node), tuple(members), str(item.get("point", "latest-group-point")),
                        # shaped defensively: semantics run on documents the schema refused too
                        tuple(tuple(map(str, sequence(argv))) for argv in sequence(item.get("after"))), timeout,
                        doc.lazy_where(p))


def _member(s: _Semantics, doc: Document, path: tuple, kind: str, name: object, plan_node: str) -> PlanMember | None:
    """The declared group or AIM set ``name`` (on whichever node declares it), whose destination
    is the plan's node."""
    found = [r for r in s.b.resources.values() if r.kind == kind and r.name == name]
    what = "group" if kind == "group" else "AIM set"
    if not found:
        s.err(doc, path, f"unknown {what} {name!r}: declare it under `resources:`")
        return None
    if len(found) > 1:
        s.err(doc, path, f"{what} {name!r} is declared on several nodes ({', '.join(sorted(r.node for r in found))})")
        return None
    r = found[0]
    sets = [str(a) for a in sequence(r.spec.get("members"))] if kind == "group" else [r.name]
    for a in sets:
        aim: Resource | None = s.b.resource("aim_set", r.node, a)
        dest = mapping(aim.spec.get("to")).get("node") if aim else None
        if aim is not None and dest != plan_node:
            s.err(doc, path, f"AIM set {a!r} replicates to node {dest!r}, not {plan_node!r}: a recovery plan runs "
                             "at the destination of every member")
            return None
    return PlanMember(kind, r.name, r.node, tuple(sets))
