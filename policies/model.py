"""The typed policy model the orchestrator runs: what the YAML means once it is valid."""

from dataclasses import dataclass, field
from datetime import date, time

from .errors import Where


@dataclass(frozen=True)
class NodeSpec:
    name: str
    api: str
    token_file: str  # absolute
    aim: str | None
    aim_tls_ca: str | None
    where: Where
    nbd: str | None = None  # HOST:PORT of its NBD server, where a dr-test's check reaches its clone
    operator_token_file: str | None = None  # absolute; what the scheduler uses when given (least privilege)
    api_tls_ca: str | None = None  # absolute; the CA its https:// API must present


@dataclass(frozen=True)
class Resource:
    """A declared volume, snapshot, snapshot set, AIM set or group on a node."""

    kind: str  # volume | snapshot | snapshot_set | aim_set | group
    node: str
    name: str
    spec: dict
    where: Where


@dataclass(frozen=True)
class Retain:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    min: int = 1


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str  # source-snapshot | auto-marker | group | dr-test
    node: str
    where: Where
    every: float | None = None  # seconds
    offset: float = 0.0
    cron: str | None = None
    timezone: str = "UTC"
    window: tuple[time, time] | None = None
    blackout: tuple[tuple[date, date], ...] = ()
    snapshot: str | None = None
    aim_set: str | None = None
    group: str | None = None
    destination_snapshot: str | None = None
    destination_snapshot_set: str | None = None
    marker_label: str | None = None
    marker_wait: float = 300.0
    quiesce_pre: tuple[str, ...] = ()
    quiesce_post: tuple[str, ...] = ()
    quiesce_timeout: float = 60.0
    misfire_grace: float = 300.0
    catch_up: str = "once"
    retries: int = 3
    backoff: float = 30.0
    timeout: float = 600.0
    jitter: float = 0.0
    retain: Retain | None = None
    enabled: bool = True
    snapshot_set: str | None = None  # dr-test: every member at its newest common point
    verify: bool = False  # dr-test: first a block-exact verify of the AIM sets feeding it
    check_run: tuple[str, ...] = ()  # dr-test: the operator's check, against the clone
    check_timeout: float = 900.0
    rpo_objective: float | None = None  # seconds the newest recovery point may age (an alert past it)

    @property
    def label(self) -> str:
        """What its markers carry: the destination names each point LABEL.TIMESTAMP, which is how
        retention knows the points this policy made (and touches no other)."""
        return self.marker_label or self.name


RULES = ("rpo_breached", "run_failed", "aim_stalled", "aim_error", "dr_test_failed", "fenced")


@dataclass(frozen=True)
class Receiver:
    """Where alerts go: ``kind`` webhook or email, ``spec`` as written (its files made absolute)."""

    name: str
    kind: str
    spec: dict
    where: Where


@dataclass(frozen=True)
class Route:
    receiver: str
    on: tuple[str, ...]  # RULES
    repeat: float | None  # seconds between reminders while it fires; None: once


@dataclass
class Alerting:
    receivers: dict[str, Receiver] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)


@dataclass(frozen=True)
class PlanMember:
    """One line of a recovery plan: a group (its members fail over to one group point) or an AIM set."""

    kind: str  # group | aim_set
    name: str
    node: str  # where it is declared (the source side)
    aim_sets: tuple[str, ...]  # the group's members, or the one AIM set


@dataclass(frozen=True)
class RecoveryPlan:
    name: str
    node: str  # where it runs: every member's destination
    members: tuple[PlanMember, ...]
    point: str  # latest-group-point | latest-point | live
    after: tuple[tuple[str, ...], ...]
    timeout: float
    where: Where

    def aim_sets(self) -> list[tuple[str, str]]:
        """(source node, AIM set) of every member, groups expanded."""
        return [(m.node, a) for m in self.members for a in m.aim_sets]


@dataclass
class Bundle:
    """Everything several policy files declare, checked together (names are global)."""

    files: list[str]
    nodes: dict[str, NodeSpec] = field(default_factory=dict)
    resources: dict[tuple[str, str, str], Resource] = field(default_factory=dict)  # (kind, node, name)
    policies: list[Policy] = field(default_factory=list)
    plans: list[RecoveryPlan] = field(default_factory=list)
    alerting: Alerting = field(default_factory=Alerting)
    warnings: list = field(default_factory=list)

    def resource(self, kind: str, node: str, name: str) -> Resource | None:
        return self.resources.get((kind, node, name))

    def aim_sets(self) -> list[tuple[str, str]]:
        """(node, name) of every AIM set the files declare or a policy names, group members
        included: what the orchestrator's watchdog looks at."""
        found = {(node, name) for kind, node, name in self.resources if kind == "aim_set"}
        found |= {(p.node, p.aim_set) for p in self.policies if p.aim_set}
        for p in self.policies:
            group = self.resource("group", p.node, p.group) if p.group else None
            found |= {(p.node, m) for m in (group.spec.get("members", []) if group else [])}
        return sorted(found)
