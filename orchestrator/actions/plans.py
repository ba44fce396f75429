"""Running a recovery plan (policies: ``recovery_plans``): the failover of every member at the
plan's node, a group's members rolled back to one group point (consistent across volumes), then
the plan's ``after`` commands; failback and switchover of every member the same way. Every point
is chosen before anything changes, so a plan that cannot find one changes nothing. The outcome,
per member, goes into the outcome store as an event (``history --events``, the report)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from engine import AlreadyExists, EngineError
from engine.interface import NodeAPI
from policies.model import PlanMember, RecoveryPlan

from ..store import Store
from .commands import command, last_line

EVENT_KINDS = ("plan-failover", "plan-failback", "plan-switchover")


class PlanError(EngineError):
    """The plan cannot run as written (no point for a group): nothing was changed."""


@dataclass
class Step:
    """One AIM set of a plan, and the point it fails over to (None: live)."""

    member: PlanMember
    aim_set: str
    point: str | None

    def as_dict(self) -> dict:
        return {"member": f"{self.member.kind.replace('_', ' ')} {self.member.name}", "aim_set": self.aim_set,
                "point": self.point or "live"}


class PlanRun:
    def __init__(self, plan: RecoveryPlan, nodes: Callable[[str], NodeAPI], store: Store | None,
                 clock: Callable[[], datetime]) -> None:
        self.plan, self.nodes, self.store, self.clock = plan, nodes, store, clock

    @property
    def dest(self) -> NodeAPI:
        return self.nodes(self.plan.node)

    # -- choosing points ----------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        out: list[Step] = []
        for m in self.plan.members:
            if self.plan.point == "live":
                out += [Step(m, a, None) for a in m.aim_sets]
            elif m.kind == "group":
                out += self._group_points(m)
            else:
                out.append(Step(m, m.name, self._latest(m.name)))
        return out

    def _latest(self, aim_set: str) -> str:
        """The newest point a marker of the set made here."""
        for p in self.dest.replication.points(aim_set):
            if p["snapshot"]:
                return f"{p['snapshot']}@{p['point']}"
        raise PlanError(f"recovery plan {self.plan.name}: AIM set {aim_set} has no recovery point at "
                        f"{self.plan.node} (no marker applied): nothing was changed")

    def _group_points(self, m: PlanMember) -> list[Step]:
        """Every member at the newest group point all of them have (one write-order point)."""
        found: dict[str, dict[str, dict]] = {}  # group marker -> aim set -> its point
        for a in m.aim_sets:
            for p in self.dest.replication.points(a):
                if p["group_marker"] and p["snapshot_set"]:
                    found.setdefault(p["group_marker"], {})[a] = p
        common = [pts for pts in found.values() if len(pts) == len(m.aim_sets)]
        if not common:
            if self.plan.point == "latest-point":  # each member alone: consistent per volume only
                return [Step(m, a, self._latest(a)) for a in m.aim_sets]
            raise PlanError(f"recovery plan {self.plan.name}: group {m.name} has no group point applied at every "
                            f"member at {self.plan.node}: nothing was changed (point: latest-point would take "
                            "each member's own newest point)")
        newest = max(common, key=lambda pts: max(p["source_ns"] for p in pts.values()))
        sset = next(iter(newest.values()))["snapshot_set"]
        by_volume = {self.dest.snapshot_info(s)["source"]: s for s in self.dest.snapshot_set_info(sset)["members"]}
        steps = []
        for a in m.aim_sets:
            volume = self.dest.replication.info(a)["destination"]
            if volume not in by_volume:
                raise PlanError(f"recovery plan {self.plan.name}: snapshot set {sset} has no snapshot of {volume}")
            steps.append(Step(m, a, f"{by_volume[volume]}@{newest[a]['point']}"))
        return steps

    # -- the verbs ------------------------------------------------------------------------------------------
    def failover(self, dry_run: bool = False) -> dict:
        started = time.monotonic()
        steps = self.steps()
        if dry_run:
            return {"plan": self.plan.name, "dry_run": True, "node": self.plan.node,
                    "members": [s.as_dict() for s in steps], "after": [list(a) for a in self.plan.after]}
        members = [self._one(s.as_dict(), lambda s=s: self.dest.replication.failover(s.aim_set, s.point))
                   for s in steps]
        failed = [m for m in members if m["status"] != "ok"]
        after: dict = {}
        if not failed:  # the application starts only on every member
            for i, argv in enumerate(self.plan.after):
                code = command(argv, self.plan.timeout, "after", after, key=f"after[{i}]")
                if code != 0:
                    failed.append({"after": list(argv), "error": f"exit {code}: {last_line(after[f'after[{i}]'])}"})
                    break
        return self._outcome("failover", members, failed, started, after=after)

    def failback(self) -> dict:
        started = time.monotonic()
        members = [self._one({"aim_set": a}, lambda a=a: self.dest.replication.failback(a))
                   for _n, a in self.plan.aim_sets()]
        failed = [m for m in members if m["status"] != "ok"]
        for m in self.plan.members:  # a group's reverse sets form the group here: its markers, its switchover
            if m.kind == "group" and not any(f["aim_set"] in m.aim_sets for f in failed):
                try:
                    self.dest.replication.create_group(m.name, list(m.aim_sets))
                except AlreadyExists:
                    pass
        return self._outcome("failback", members, failed, started)

    def switchover(self) -> dict:
        """At whichever node is the source now: the original one, or (switching back) the plan's."""
        started = time.monotonic()
        members = []
        for m in self.plan.members:
            node = self._source_of(m)
            repl = self.nodes(node).replication
            call = (lambda m=m, repl=repl: repl.switchover_group(m.name)) if m.kind == "group" else \
                (lambda m=m, repl=repl: repl.switchover(m.name))
            members.append(self._one({"member": f"{m.kind.replace('_', ' ')} {m.name}", "at": node}, call))
        return self._outcome("switchover", members, [m for m in members if m["status"] != "ok"], started)

    def _source_of(self, m: PlanMember) -> str:
        for node in (m.node, self.plan.node):
            try:
                if self.nodes(node).replication.info(m.aim_sets[0])["role"] == "source":
                    return node
            except EngineError:
                continue
        raise PlanError(f"recovery plan {self.plan.name}: no node is the source of {m.aim_sets[0]} now")

    def _one(self, row: dict, call: Callable[[], dict]) -> dict:
        t = time.monotonic()
        try:
            r = call()
            return {**row, "status": "ok", "result": r, "seconds": round(time.monotonic() - t, 3)}
        except EngineError as e:  # one member's failure is said; the others still go
            return {**row, "status": "failed", "error": str(e), "seconds": round(time.monotonic() - t, 3)}

    def _outcome(self, verb: str, members: list[dict], failed: list[dict], started: float, **extra: object) -> dict:
        status = "failed" if failed else "ok"
        out = {"plan": self.plan.name, "verb": verb, "status": status, "members": members,
               "seconds": round(time.monotonic() - started, 3), **extra}
        if failed:
            out["failed"] = failed
        if self.store is not None:
            what = "; ".join(f"{m.get('aim_set') or m.get('member')} {m['status']}" for m in members)
            self.store.event(self.clock(), f"plan-{verb}", f"recovery plan {self.plan.name}: {verb} {status} ({what})",
                             details=out)
        return out
