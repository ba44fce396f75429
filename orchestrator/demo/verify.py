"""What the demo measures and shows: every destination point against the source content recorded
at its marker, the RPO series, and the tables of runs, traffic and checks."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.progress import Progress
from rich.table import Table

from engine import parse_size
from policies.model import Bundle

from ..store import Store, parse_iso
from .workload import digest

if TYPE_CHECKING:
    from .run import Demo

# names from demo.yaml: the volume mirrored both ways for the traffic comparison
TRAFFIC_VOLUME, DIRECT_SET, SNAPSHOT_SOURCE_SET = "db01", "db01-direct", "db01-ci-to-dr"


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _t(s: str) -> float:
    return parse_iso(s).timestamp()


@dataclass
class Check:
    policy: str
    what: str
    ok: bool
    note: str = ""


# -- measuring ------------------------------------------------------------------------------------------------
def rpo_series(markers: list[dict]) -> list[float]:
    """RPO just before each new point lands: its arrival minus the previous point's marker time."""
    applied = sorted((_t(m["issued_at"]), _t(m["applied_at"])) for m in markers)
    return [landed - prev_issued for (prev_issued, _), (_, landed) in zip(applied, applied[1:])]


def _dest_snapshot(bundle: Bundle, marker: dict) -> tuple[str, str]:
    """(source volume, destination snapshot) of one recorded marker (a group member's too)."""
    aim = bundle.resource("aim_set", "prod", marker["aim_set"])
    source = aim.spec["source"]
    snap = bundle.resource("snapshot", "prod", source)
    volume = snap.spec["source"] if snap else source  # a snapshot source holds its volume at the increment
    if marker["snapshot"]:
        return volume, marker["snapshot"]
    members = bundle.resource("snapshot_set", aim.spec["to"]["node"], marker["snapshot_set"]).spec["members"]
    dest = next(m for m in members if bundle.resource("snapshot", aim.spec["to"]["node"], m).spec["source"]
                == aim.spec["to"]["volume"])
    return volume, dest


def verify(demo: Demo, bundle: Bundle, store: Store, progress: Progress) -> list[Check]:
    markers = store.markers()
    task = progress.add_task("verifying destination points", total=len(markers), info="")
    checks = []
    for m in markers:
        checks.append(_check(demo, bundle, m))
        progress.advance(task)
    return checks


def _check(demo: Demo, bundle: Bundle, m: dict) -> Check:
    """One recorded marker: its destination point against the source content recorded at its issue."""
    if m["status"] != "applied":
        return Check(m["policy"], f"{m['aim_set']} marker {m['node_marker']}", False,
                     f"marker {m['status']}: {m['error'] or ''}")
    volume, snapshot = _dest_snapshot(bundle, m)
    what = f"{snapshot}@{m['point']}"
    want = demo.workload.content_at(volume, _t(m["issued_at"]))  # type: ignore[union-attr]
    if want is None:
        return Check(m["policy"], what, False, f"no quiesced content of {volume} recorded at {m['issued_at']}")
    size = parse_size(bundle.resource("volume", "prod", volume).spec["size"])
    try:
        got = digest(lambda o, n: demo.clients["dr"].read_snapshot(snapshot, m["point"], o, n), size)
    except Exception as e:  # a pruned or unreadable point is a failed check, with the reason
        return Check(m["policy"], what, False, str(e))
    return Check(m["policy"], what, got == want,
                 f"= {volume} at its marker" if got == want else f"differs from {volume} at its marker")


# -- reporting -------------------------------------------------------------------------------------------------
def runs_table(store: Store, bundle: Bundle) -> Table:
    t = Table(title="runs and recovery points, by policy")
    for col in ("policy", "kind", "every", "runs", "ok", "other outcomes", "points applied", "RPO median", "RPO worst"):
        t.add_column(col, justify="left" if col in ("policy", "kind", "other outcomes") else "right")
    counts: dict[str, dict[str, int]] = {}
    for row in store.run_counts():
        counts.setdefault(row["policy"], {})[row["status"]] = row["n"]
    for p in bundle.policies:
        c = counts.get(p.name, {})
        markers = store.recovery_points(p.name)
        # one run makes one recovery point, however many group members it has
        rpo = rpo_series(markers)
        other = ", ".join(f"{s} {n}" for s, n in sorted(c.items()) if s != "ok") or "-"
        t.add_row(p.name, p.kind, f"{p.every:g}s" if p.every else str(p.cron), str(sum(c.values())),
                  str(c.get("ok", 0)), other, str(len(markers)),
                  f"{statistics.median(rpo):.1f}s" if rpo else "-", f"{max(rpo):.1f}s" if rpo else "-")
    return t


def traffic_table(demo: Demo, sent: dict[str, int]) -> Table:
    db01 = demo.workload.volumes[TRAFFIC_VOLUME]  # type: ignore[union-attr]
    unique = sum(db01.unique)
    direct, snap = sent[DIRECT_SET], sent[SNAPSHOT_SOURCE_SET]
    t = Table(title=f"{TRAFFIC_VOLUME}: what crossed the wire (the same writes, two ways)")
    t.add_column("")
    t.add_column("bytes", justify="right")
    t.add_column("vs unique changed", justify="right")
    rows = [("written by the workload (through NBD)", db01.bytes_written),
            ("unique changed between increments", unique),
            (f"sent, direct mirroring ({DIRECT_SET})", direct),
            (f"sent, snapshot-source ({SNAPSHOT_SOURCE_SET})", snap)]
    for what, n in rows:
        t.add_row(what, mib(n), f"{n / unique:.2f}x" if unique else "-")
    if direct:
        t.caption = (f"snapshot-source mode sent {100 * (1 - snap / direct):.0f} % "
                     "less than direct mirroring: a block rewritten many times in an interval crosses once")
    return t


def checks_table(checks: list[Check]) -> Table:
    t = Table(title="every destination point in time vs the source at its marker")
    for col in ("policy", "point", "result", ""):
        t.add_column(col)
    for c in checks:
        t.add_row(c.policy, c.what, "[green]PASS[/]" if c.ok else "[red]FAIL[/]", c.note)
    return t
