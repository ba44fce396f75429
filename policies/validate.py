"""Load and check policy files: YAML, then the schema, then the meaning. Every problem of every
file is collected in one pass; :func:`load_policies` raises :class:`PolicyError` with all of them."""

import contextlib
import functools
import gc
import os
from collections.abc import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .durations import DurationError, parse_duration
from .errors import PolicyError, Problem, json_path
from .loader import Document, load_file
from .model import Bundle, NodeSpec, Policy, Resource, Retain
from .alerting import POINT_KINDS, check_alerts, check_objective
from .plans import check_plans
from .items import dates, feeding_aim_sets, mapping, parse_window, resource_items, sequence, size_of, size_text
from .schema import schema_problems

BUILTIN_DEFAULTS = {"timezone": "UTC", "misfire": {"grace": "5m", "catch_up": "once"},
                    "retries": {"count": 3, "backoff": "30s"}, "timeout": "10m", "jitter": 0}


def load_policies(files: list[str]) -> Bundle:
    bundle, problems = check(files)
    if problems:
        raise PolicyError(problems)
    return bundle


def check(files: list[str]) -> tuple[Bundle, list[Problem]]:
    """The bundle and every error (warnings go to ``bundle.warnings``)."""
    with _collector_paused():
        return _check(files)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Loading builds a large tree of fresh objects and no cycles worth collecting; the cyclic
    collector would re-scan the growing tree again and again (a third of the load time here)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _check(files: list[str]) -> tuple[Bundle, list[Problem]]:
    bundle = Bundle(files=list(files))
    problems: list[Problem] = []
    docs = []
    for f in files:
        doc, load_problems = load_file(f)
        problems += load_problems
        if doc.data is None:
            continue
        if not isinstance(doc.data, dict):
            problems.append(Problem(doc.where(()), "a policy file is a mapping with at least `version: 1`"))
            continue
        found = schema_problems(doc)
        problems += found
        docs.append((doc, not found))
    checker = _Semantics(bundle, problems)
    for doc, _ in docs:
        checker.declare(doc)
    for doc, _ in docs:
        checker.resources(doc)
    for doc, schema_ok in docs:  # references are checked everywhere; the model is built from valid files
        checker.policies(doc, build=schema_ok)
        check_plans(checker, doc, build=schema_ok)
        check_alerts(checker, doc, build=schema_ok)
    return bundle, sorted(set(problems))


@functools.lru_cache(maxsize=4096)
def _cron_valid(expr: str) -> bool:
    """Validity does not depend on the hash of H fields; many policies share an expression."""
    return croniter.is_valid(expr, hash_id=b"aimsnap")


class _Semantics:
    def __init__(self, bundle: Bundle, problems: list[Problem]) -> None:
        self.b, self.problems = bundle, problems
        self.policy_names: dict[str, Problem] = {}
        self.plan_names: dict[str, str] = {}  # recovery plan -> where it is defined
        self.names: dict[tuple[str, str, str], Resource] = {}  # (namespace, node, name)

    def err(self, doc: Document, path: tuple, message: str, key: bool = False) -> None:
        self.problems.append(Problem(doc.where(path, key), message, json_path(path)))

    def warn(self, doc: Document, path: tuple, message: str) -> None:
        self.b.warnings.append(Problem(doc.where(path), message, json_path(path), warning=True))

    # -- names --------------------------------------------------------------------------------------------
    def declare(self, doc: Document) -> None:
        nodes = doc.data.get("nodes")
        if isinstance(nodes, dict):
            for name, spec in nodes.items():
                if not isinstance(spec, dict):
                    continue
                if name in self.b.nodes:
                    self.err(doc, ("nodes", name), f"node {name!r} is declared twice (also at "
                                                   f"{self.b.nodes[name].where})", key=True)
                    continue
                base = os.path.dirname(os.path.abspath(doc.file))

                def path(key: str) -> str | None:
                    return os.path.join(base, str(spec[key])) if spec.get(key) else None  # noqa: B023
                self.b.nodes[name] = NodeSpec(name, str(spec.get("api", "")), path("token_file") or base,
                                              spec.get("aim"), path("aim_tls_ca"), doc.lazy_where(("nodes", name), True),
                                              spec.get("nbd"), path("operator_token_file"), path("api_tls_ca"))
        for section, kind, i, item in resource_items(doc):
            if not isinstance(item.get("name"), str):
                continue
            node, name = str(item.get("node")), item["name"]
            space = "volume" if kind in ("volume", "snapshot") else kind  # a complete image is a volume
            clash = self.names.get((space, node, name))
            if clash:
                self.err(doc, ("resources", section, i, "name"),
                         f"{kind.replace('_', ' ')} {name!r} on node {node!r} is declared twice "
                         f"(also at {clash.where})")
                continue
            r = Resource(kind, node, name, item, doc.lazy_where(("resources", section, i)))
            self.b.resources[(kind, node, name)] = self.names[(space, node, name)] = r

    # -- resources ---------------------------------------------------------------------------------------
    def _node(self, doc: Document, path: tuple, node: object) -> bool:
        if not isinstance(node, str) or node not in self.b.nodes:
            self.err(doc, path, f"unknown node {node!r}: declare it under `nodes:`" +
                     (f" (declared: {', '.join(sorted(self.b.nodes))})" if self.b.nodes else ""))
            return False
        return True

    def _ref(self, doc: Document, path: tuple, kinds: tuple[str, ...], node: str, name: object, what: str) -> Resource | None:
        for kind in kinds:
            r = self.b.resource(kind, node, str(name))
            if r:
                return r
        self.err(doc, path, f"unknown {what} {name!r} on node {node!r}: declare it under `resources:`")
        return None

    def resources(self, doc: Document) -> None:
        for section, kind, i, item in resource_items(doc):
            p = ("resources", section, i)
            if not self._node(doc, p + ("node",), item.get("node")):
                continue
            node = item["node"]
            if kind == "snapshot":
                self._ref(doc, p + ("source",), ("volume", "snapshot"), node, item.get("source"), "volume")
            elif kind == "snapshot_set":
                for j, m in enumerate(sequence(item.get("members"))):
                    self._ref(doc, p + ("members", j), ("snapshot",), node, m, "snapshot")
            elif kind == "group":
                for j, m in enumerate(sequence(item.get("members"))):
                    self._ref(doc, p + ("members", j), ("aim_set",), node, m, "AIM set")
            elif kind == "aim_set":
                src = self._ref(doc, p + ("source",), ("volume", "snapshot"), node, item.get("source"), "volume")
                to = item.get("to") if isinstance(item.get("to"), dict) else {}
                if self._node(doc, p + ("to", "node"), to.get("node")):
                    dest = self._ref(doc, p + ("to", "volume"), ("volume",), to["node"], to.get("volume"),
                                     "destination volume")
                    if src and dest and size_of(self.b, src) is not None and size_of(self.b, dest) is not None \
                            and size_of(self.b, src) != size_of(self.b, dest):
                        self.err(doc, p + ("to", "volume"), f"destination volume {dest.name!r} is "
                                 f"{dest.spec.get('size')}, the source {src.name!r} is "
                                 f"{size_text(self.b, src)}: they must be the same size")
                    if not self.b.nodes[to["node"]].aim:
                        self.err(doc, p + ("to", "node"), f"node {to['node']!r} is an AIM destination: "
                                 "give its AIM address (`aim: HOST:PORT`) under `nodes:`")

    # -- policies ------------------------------------------------------------------------------------------
    def policies(self, doc: Document, build: bool = True) -> None:
        given = doc.data.get("defaults") if isinstance(doc.data.get("defaults"), dict) else {}
        defaults = {**BUILTIN_DEFAULTS, **given}
        if "timezone" in given:
            self._zone(doc, ("defaults", "timezone"), defaults["timezone"])
        items = doc.data.get("policies")
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                policy = self.policy(doc, ("policies", i), item, defaults, build)
                if policy is not None:
                    self.b.policies.append(policy)

    def _zone(self, doc: Document, path: tuple, name: object) -> bool:
        try:
            ZoneInfo(str(name))
            return True
        except (ZoneInfoNotFoundError, ValueError):
            self.err(doc, path, f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Berlin")
            return False

    def _duration(self, doc: Document, path: tuple, value: object, default: object = None) -> float:
        if value is None:
            value = default
        try:
            return parse_duration(value) if value is not None else 0.0
        except DurationError as e:
            if e.out_of_range:  # well formed, so the schema's pattern did not report it
                self.err(doc, path, str(e))
            return 0.0  # else the schema's pattern has reported it, with the same position

    def policy(self, doc: Document, p: tuple, item: dict, defaults: dict, build: bool) -> Policy | None:
        name = item["name"]
        ok = True
        if name in self.policy_names:
            self.err(doc, p + ("name",), f"policy {name!r} is defined twice (also at {self.policy_names[name].where})")
            return None
        self.policy_names[name] = Problem(doc.lazy_where(p), "")  # type: ignore[arg-type]
        kind, node = item.get("kind"), item.get("node")
        if not self._node(doc, p + ("node",), node):
            return None
        every, cron = item.get("every"), item.get("cron")
        if (every is None) == (cron is None):
            self.err(doc, p, f"policy {name!r} needs exactly one of `every` or `cron`" +
                     (" (it has both)" if every is not None else ""))
            ok = False
        seconds = None
        if every is not None:
            try:
                seconds = parse_duration(every)
            except DurationError as e:
                if e.out_of_range:  # well formed: the schema's pattern did not report it
                    self.err(doc, p + ("every",), str(e))
                ok = False
            if seconds is not None and seconds < 1:
                self.err(doc, p + ("every",), f"interval {every!r} is under 1 second")
                ok = False
            elif seconds is not None and seconds < 60:
                self.warn(doc, p + ("every",), f"interval {every!r} is under a minute: fine for demos and tests, "
                                               "rarely what production wants")
        if isinstance(cron, str) and not _cron_valid(cron):
            self.err(doc, p + ("cron",), f"invalid cron expression {cron!r}: five fields, minute hour day month "
                                         "weekday (H for a stable hashed value)")
            ok = False
        tz = item.get("timezone", defaults.get("timezone", "UTC"))
        if "timezone" in item and not self._zone(doc, p + ("timezone",), tz):
            ok = False
        window = parse_window(item.get("window"))
        if item.get("window") is not None and window is None:
            self.err(doc, p + ("window",), f"invalid window {item['window']!r}: write HH:MM-HH:MM with different times")
            ok = False
        blackout = []
        for j, text in enumerate(sequence(item.get("blackout"))):
            span = dates(str(text))
            if span is None:
                self.err(doc, p + ("blackout", j), f"invalid blackout {text!r}: write YYYY-MM-DD or "
                                                   "YYYY-MM-DD..YYYY-MM-DD (start before end)")
                ok = False
            else:
                blackout.append(span)
        marker = item.get("marker") if isinstance(item.get("marker"), dict) else {}
        aim = None
        if kind in ("source-snapshot", "auto-marker") and item.get("aim_set") is not None:
            aim = self._ref(doc, p + ("aim_set",), ("aim_set",), node, item["aim_set"], "AIM set")
            ok &= aim is not None
        if kind == "source-snapshot" and item.get("snapshot") is not None:
            snap = self._ref(doc, p + ("snapshot",), ("snapshot",), node, item["snapshot"], "snapshot")
            if snap and snap.spec.get("type") != "complete-image":
                self.err(doc, p + ("snapshot",), f"snapshot {snap.name!r} is {snap.spec.get('type')}: a source-snapshot "
                                                 "policy increments a complete-image snapshot")
                ok = False
            if snap and aim and aim.spec.get("source") != snap.name:
                self.err(doc, p + ("aim_set",), f"AIM set {aim.name!r} replicates {aim.spec.get('source')!r}, not the "
                                                f"snapshot {snap.name!r}: the increments would not be shipped")
                ok = False
            ok &= snap is not None
        if aim and marker.get("destination_snapshot") is not None:
            to = mapping(aim.spec.get("to"))
            dsnap = self.b.resource("snapshot", str(to.get("node")), str(marker["destination_snapshot"]))
            if dsnap is None or dsnap.spec.get("source") != to.get("volume"):
                self.err(doc, p + ("marker", "destination_snapshot"),
                         f"destination snapshot {marker['destination_snapshot']!r} is not declared on the AIM set's "
                         f"destination volume {to.get('volume')!r} (node {to.get('node')!r}): markers enable "
                         "pre-configured snapshots only")
                ok = False
        if kind == "group" and item.get("group") is not None:
            group = self._ref(doc, p + ("group",), ("group",), node, item["group"], "group")
            ok &= group is not None and self._group_set(doc, p, node, group, marker.get("destination_snapshot_set"))
        if kind == "dr-test":
            ok &= self._dr_test(doc, p, item, node)
        elif any(k in item for k in ("check", "verify", "snapshot_set")):
            key = next(k for k in ("check", "verify", "snapshot_set") if k in item)
            self.err(doc, p + (key,), f"`{key}` is for dr-test policies, not {kind}", key=True)
            ok = False
        check_objective(self, doc, p, item, kind)
        misfire = {**mapping(defaults.get("misfire")), **mapping(item.get("misfire"))}
        retries = {**mapping(defaults.get("retries")), **mapping(item.get("retries"))}
        quiesce = mapping(item.get("quiesce"))
        retain = item.get("retain")
        if not ok or not build:
            return None
        return Policy(
            name=name, kind=kind, node=node, where=doc.lazy_where(p), every=seconds,
            offset=self._duration(doc, p + ("offset",), item.get("offset"), 0), cron=cron, timezone=str(tz),
            window=window, blackout=tuple(blackout), snapshot=item.get("snapshot"), aim_set=item.get("aim_set"),
            group=item.get("group"), destination_snapshot=marker.get("destination_snapshot"),
            destination_snapshot_set=marker.get("destination_snapshot_set"),
            marker_label=marker.get("label"),
            marker_wait=self._duration(doc, p + ("marker", "wait"), marker.get("wait"), "5m"),
            quiesce_pre=tuple(quiesce.get("pre") or ()), quiesce_post=tuple(quiesce.get("post") or ()),
            quiesce_timeout=self._duration(doc, p + ("quiesce", "timeout"), quiesce.get("timeout"), "1m"),
            misfire_grace=self._duration(doc, p + ("misfire", "grace"), misfire.get("grace"), "5m"),
            catch_up=str(misfire.get("catch_up", "once")), retries=int(retries.get("count", 3)),
            backoff=self._duration(doc, p + ("retries", "backoff"), retries.get("backoff"), "30s"),
            timeout=self._duration(doc, p + ("timeout",), item.get("timeout"), defaults.get("timeout")),
            jitter=self._duration(doc, p + ("jitter",), item.get("jitter"), defaults.get("jitter")),
            retain=Retain(**retain) if isinstance(retain, dict) else None, enabled=bool(item.get("enabled", True)),
            snapshot_set=item.get("snapshot_set"), verify=bool(item.get("verify", False)),
            check_run=tuple(mapping(item.get("check")).get("run") or ()),
            check_timeout=self._duration(doc, p + ("check", "timeout"), mapping(item.get("check")).get("timeout"),
                                         "15m"),
            rpo_objective=self._duration(doc, p + ("rpo_objective",), item.get("rpo_objective"),
                                         defaults.get("rpo_objective")) or None if kind in POINT_KINDS else None)

    def _dr_test(self, doc: Document, p: tuple, item: dict, node: str) -> bool:
        """A dr-test names the points it tests (a differential snapshot, or a snapshot set, on its
        node), and nothing of the marker kinds; ``verify`` needs an AIM set feeding them."""
        for key in ("marker", "retain", "aim_set", "group", "quiesce"):
            if key in item:
                self.err(doc, p + (key,), f"a dr-test policy has no `{key}`: it tests the points other "
                                          "policies make", key=True)
                return False
        if ("snapshot" in item) == ("snapshot_set" in item):
            self.err(doc, p, f"dr-test policy {item['name']!r} needs exactly one of `snapshot` or `snapshot_set`")
            return False
        if "snapshot" in item:
            snaps = [self._ref(doc, p + ("snapshot",), ("snapshot",), node, item["snapshot"], "snapshot")]
        else:
            sset = self._ref(doc, p + ("snapshot_set",), ("snapshot_set",), node, item["snapshot_set"], "snapshot set")
            if sset is None:
                return False
            snaps = [self.b.resource("snapshot", node, str(m)) for m in sequence(sset.spec.get("members"))]
        if any(s is None for s in snaps):
            return False
        for s in snaps:
            if s.spec.get("type") != "differential":  # type: ignore[union-attr]
                self.err(doc, p + ("snapshot" if "snapshot" in item else "snapshot_set",),
                         f"snapshot {s.name!r} is {s.spec.get('type')}: a dr-test clones points in time "  # type: ignore[union-attr]
                         "of differential snapshots")
                return False
        if item.get("verify") and not feeding_aim_sets(self.b, node, [str(s.spec.get("source")) for s in snaps]):  # type: ignore[union-attr]
            self.err(doc, p + ("verify",), f"no AIM set declared replicates into {node!r}'s volume(s) "
                                           f"{', '.join(sorted({str(s.spec.get('source')) for s in snaps}))}: "  # type: ignore[union-attr]
                                           "nothing to verify")
            return False
        return True

    def _group_set(self, doc: Document, p: tuple, node: str, group: Resource, set_name: object) -> bool:
        members = [self.b.resource("aim_set", node, str(m)) for m in sequence(group.spec.get("members"))]
        dests = {str(mapping(m.spec.get("to")).get("node")) for m in members if m}
        if len(dests) != 1:
            self.err(doc, p + ("group",), f"the AIM sets of group {group.name!r} replicate to different nodes "
                                          f"({', '.join(sorted(map(str, dests)))}): one snapshot set cannot cover them")
            return False
        dest = dests.pop()
        sset = self.b.resource("snapshot_set", str(dest), str(set_name))
        if sset is None:
            self.err(doc, p + ("marker", "destination_snapshot_set"),
                     f"destination snapshot set {set_name!r} is not declared on node {dest!r}")
            return False
        covered = {str((self.b.resource("snapshot", dest, str(s)) or Resource("", "", "", {}, doc.where(p))).spec.get(
                   "source")) for s in sequence(sset.spec.get("members"))}
        missing = sorted({str(mapping(m.spec.get("to")).get("volume")) for m in members if m} - covered)
        if missing:
            self.err(doc, p + ("marker", "destination_snapshot_set"),
                     f"snapshot set {set_name!r} has no snapshot of destination volume(s) {', '.join(missing)}")
            return False
        return True
