"""``aimsnap demo``: the whole promise on one machine, in well under two minutes.

Two real nodes (``aimsnap node serve``) on free loopback ports, the policies of
``policies/examples/demo.yaml`` applied to them and run by a real ``aimsnap run``, a hot-spot write
workload through NBD meanwhile, then a report: runs and outcomes, RPO, the traffic of the
snapshot-source mode against direct mirroring, and every destination point in time compared with the
source content recorded at its marker. Exit code 1 on any mismatch.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import policies
from engine import parse_size
from policies.model import Bundle
from policies.validate import load_policies

from .apply import reconcile
from .demo_workload import CONTROL_ENV, ControlServer, Workload, digest, request
from .localnode import NodeProc, start_node
from .node_client import RemoteNode
from .store import Store, iso, parse_iso

EXAMPLE = Path(policies.__file__).parent / "examples" / "demo.yaml"
# names from demo.yaml: the source-snapshot policy, and the volume mirrored both ways for the traffic
SNAPSHOT_POLICY, TRAFFIC_VOLUME, DIRECT_SET, SNAPSHOT_SOURCE_SET = "db01-snapshot", "db01", "db01-direct", "db01-ci-to-dr"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _t(s: str) -> float:
    return parse_iso(s).timestamp()


@dataclass
class Check:
    policy: str
    what: str
    ok: bool
    note: str = ""


class Demo:
    """Owns every process and file of one demo; ``close`` leaves nothing running."""

    def __init__(self, work: str, results: str, console: Console) -> None:
        self.work, self.results, self.console = work, results, console
        self.sites: dict[str, NodeProc] = {}
        self.clients: dict[str, RemoteNode] = {}
        self.orchestrator: subprocess.Popen | None = None
        self.workload: Workload | None = None
        self.control: ControlServer | None = None
        self.policy_file = os.path.join(work, "demo.yaml")
        self.db = os.path.join(work, "aimsnap.db")
        self.html = os.path.join(results, "report.html")

    # -- setting up ---------------------------------------------------------------------------------------
    def start_sites(self) -> None:
        for name in ("prod", "dr"):
            self.sites[name] = start_node(os.path.join(self.work, name), new_session=True)
            self.clients[name] = RemoteNode(self.sites[name].api, self.sites[name].token, timeout=120)

    def write_policies(self) -> Bundle:
        doc = yaml.safe_load(EXAMPLE.read_text())
        for name, site in self.sites.items():
            doc["nodes"][name] = {"api": site.api, "token_file": site.token_file, "aim": site.aim}
        with open(self.policy_file, "w") as f:
            f.write(f"# written by aimsnap demo from {EXAMPLE}, with this run's node addresses\n")
            yaml.safe_dump(doc, f, sort_keys=False, width=120)
        return load_policies([self.policy_file])

    def apply(self, bundle: Bundle) -> list:
        actions = reconcile(bundle, dry_run=False)
        bad = [a for a in actions if a.action in ("drift", "error")]
        if bad:
            raise click.ClickException("; ".join(f"{a.kind} {a.name}: {a.detail}" for a in bad))
        prod = self.clients["prod"]
        deadline = time.monotonic() + 30
        while any(s["state"] != "replicating" for s in prod.replication.list()):
            if time.monotonic() > deadline:
                raise click.ClickException("the AIM sets did not start replicating within 30 s")
            time.sleep(0.05)
        return actions

    def start_workload(self, bundle: Bundle, rate: float, seed: int) -> None:
        sizes = {r.name: parse_size(r.spec["size"]) for r in bundle.resources.values()
                 if r.kind == "volume" and r.node == "prod"}
        self.workload = Workload(self.sites["prod"].nbd, sizes, rate, seed)
        self.control = ControlServer(os.path.join(self.work, "quiesce.sock"), self.workload)
        self.workload.start()

    def start_orchestrator(self) -> None:
        env = {**os.environ, CONTROL_ENV: self.control.server_address,  # type: ignore[union-attr]
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        log = open(os.path.join(self.work, "run.log"), "wb")
        self.orchestrator = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", self.policy_file, "--db", self.db],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

    def save_results(self) -> None:
        """Leave the outcome store, the policy file and the logs where the user can look at them."""
        if self.results == self.work:
            return
        import sqlite3
        src, dst = sqlite3.connect(self.db), sqlite3.connect(os.path.join(self.results, "aimsnap.db"))
        with dst:
            src.backup(dst)  # a consistent copy, WAL included
        src.close()
        dst.close()
        for name in ("demo.yaml", "run.log", "prod.log", "dr.log"):
            if os.path.exists(os.path.join(self.work, name)):
                shutil.copy(os.path.join(self.work, name), self.results)

    def bytes_sent(self) -> dict[str, int]:
        return {s["name"]: s["bytes_sent"] for s in self.clients["prod"].replication.list()}

    # -- tearing down -------------------------------------------------------------------------------------
    def stop_orchestrator(self) -> int | None:
        proc, self.orchestrator = self.orchestrator, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # lets runs in progress finish
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        if self.workload:
            self.workload.stop()
        self.stop_orchestrator()  # before the control socket goes: its hooks still thaw
        if self.control:
            self.control.shutdown()
            self.control.server_close()
        if self.workload:
            self.workload.close()
        for client in self.clients.values():
            client.close()
        for site in self.sites.values():
            try:
                site.stop(signal.SIGTERM, timeout=30)
            except subprocess.TimeoutExpired:
                site.proc.kill()
                site.proc.wait()


# -- measuring ------------------------------------------------------------------------------------------------
def _runs(store: Store) -> list[dict]:
    return list(store.db.query("SELECT policy, status, COUNT(*) AS n FROM runs GROUP BY policy, status"))


def _rpo(markers: list[dict]) -> list[float]:
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
    markers = list(store.db.query("SELECT * FROM markers ORDER BY issued_at"))
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
def _runs_table(store: Store, bundle: Bundle) -> Table:
    t = Table(title="runs and recovery points, by policy")
    for col in ("policy", "kind", "every", "runs", "ok", "other outcomes", "points applied", "RPO median", "RPO worst"):
        t.add_column(col, justify="left" if col in ("policy", "kind", "other outcomes") else "right")
    counts: dict[str, dict[str, int]] = {}
    for row in _runs(store):
        counts.setdefault(row["policy"], {})[row["status"]] = row["n"]
    for p in bundle.policies:
        c = counts.get(p.name, {})
        markers = list(store.db.query(
            "SELECT MIN(issued_at) AS issued_at, MAX(applied_at) AS applied_at FROM markers "
            "WHERE policy=? AND status='applied' GROUP BY run_id", [p.name]))
        # one run makes one recovery point, however many group members it has
        rpo = _rpo(markers)
        other = ", ".join(f"{s} {n}" for s, n in sorted(c.items()) if s != "ok") or "-"
        t.add_row(p.name, p.kind, f"{p.every:g}s" if p.every else str(p.cron), str(sum(c.values())),
                  str(c.get("ok", 0)), other, str(len(markers)),
                  f"{statistics.median(rpo):.1f}s" if rpo else "-", f"{max(rpo):.1f}s" if rpo else "-")
    return t


def _traffic_table(demo: Demo, sent: dict[str, int]) -> Table:
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
        t.add_row(what, _mib(n), f"{n / unique:.2f}x" if unique else "-")
    if direct:
        t.caption = (f"snapshot-source mode sent {100 * (1 - snap / direct):.0f} % "
                     "less than direct mirroring: a block rewritten many times in an interval crosses once")
    return t


def _checks_table(checks: list[Check]) -> Table:
    t = Table(title="every destination point in time vs the source at its marker")
    for col in ("policy", "point", "result", ""):
        t.add_column(col)
    for c in checks:
        t.add_row(c.policy, c.what, "[green]PASS[/]" if c.ok else "[red]FAIL[/]", c.note)
    return t


# -- the command ----------------------------------------------------------------------------------------------
@click.command()
@click.option("--seconds", default=30, show_default=True, type=click.IntRange(5, 3600),
              help="How long the workload writes while the policies run.")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Work in DIR and keep all of it, the nodes' roots included.")
@click.option("--out", type=click.Path(file_okay=False), default="aimsnap-demo", show_default=True,
              help="Without --keep: where the outcome store, the HTML report, the policy file and the logs are left.")
@click.option("--rate", default=300, show_default=True, type=click.IntRange(1, 100000), help="Writes per second.")
@click.option("--seed", default=1, show_default=True)
def demo(seconds: int, keep: str | None, out: str, rate: int, seed: int) -> int:
    """Two nodes on loopback, the demo policies, a write workload, and a verified report."""
    console = Console(width=None if sys.stdout.isatty() else 120)
    work = os.path.abspath(keep) if keep else tempfile.mkdtemp(prefix="aimsnap-demo-")
    results = work if keep else os.path.abspath(out)
    os.makedirs(work, exist_ok=True)
    os.makedirs(results, exist_ok=True)
    d = Demo(work, results, console)
    try:
        return _run(d, console, seconds, rate, seed)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the orchestrator and the nodes[/]")
        return 130
    finally:
        d.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(d: Demo, console: Console, seconds: int, rate: int, seed: int) -> int:
    with console.status("starting two nodes (prod, dr) on loopback"):
        d.start_sites()
        bundle = d.write_policies()
    console.print(f"nodes: prod {d.sites['prod'].api} (NBD {d.sites['prod'].nbd}), "
                  f"dr {d.sites['dr'].api} (AIM {d.sites['dr'].aim})")
    with console.status("aimsnap apply: creating volumes, snapshots, AIM sets, the group"):
        created = d.apply(bundle)
    console.print(f"applied {EXAMPLE.name}: {sum(a.action == 'created' for a in created)} resources created, "
                  f"{len(bundle.policies)} policies")
    baseline = d.bytes_sent()
    d.start_workload(bundle, rate, seed)
    d.start_orchestrator()
    store = Store(d.db)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("policies running, workload writing", total=seconds, info="")
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            if d.orchestrator.poll() is not None:  # type: ignore[union-attr]
                raise click.ClickException(f"aimsnap run exited early; see {d.work}/run.log")
            progress.update(task, completed=elapsed, info=_progress_line(d.workload, store))  # type: ignore[arg-type]
            time.sleep(0.25)
        progress.update(task, completed=seconds)
        d.workload.stop()  # type: ignore[union-attr]
        # one more increment after the last write, so both modes have shipped the same writes
        final = progress.add_task("last source-snapshot run after the workload stopped", total=None, info="")
        _wait_for_run(store, SNAPSHOT_POLICY, after=datetime.now(timezone.utc))
        progress.remove_task(final)
        rc = d.stop_orchestrator()
        _wait_caught_up(d)
        sent = {k: v - baseline.get(k, 0) for k, v in d.bytes_sent().items()}
        checks = verify(d, bundle, store, progress)
    console.print(_runs_table(store, bundle))
    console.print(_traffic_table(d, sent))
    console.print(_checks_table(checks))
    failures = [c for c in checks if not c.ok]
    unverified = [p.name for p in bundle.policies if not any(c.ok and c.policy == p.name for c in checks)]
    from .report import render
    with open(d.html, "w") as f:
        f.write(render(store))
    d.save_results()
    db = os.path.relpath(os.path.join(d.results, "aimsnap.db"))
    console.print(f"outcomes (SQLite): {db}\nreport (HTML):     {os.path.relpath(d.html)}\n"
                  f"look at them:      aimsnap status --db {db}\n"
                  f"                   aimsnap history --db {db} --policy {SNAPSHOT_POLICY} --json")
    if rc != 0:
        console.print(f"[red]aimsnap run exited {rc}[/]")
    if unverified:
        console.print(f"[red]no verified point for: {', '.join(unverified)}[/]")
    if failures or unverified or rc != 0:
        console.print(f"[red]demo FAILED: {len(failures)} of {len(checks)} points differ or are missing[/]")
        return 1
    console.print(f"[green]demo OK: {len(checks)} destination points in time, each equal to its source at its marker[/]")
    return 0


def _progress_line(workload: Workload, store: Store) -> str:
    c = workload.counts()
    runs = {r["status"]: r["n"] for r in store.db.query("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")}
    applied = store.db.execute("SELECT COUNT(*) FROM markers WHERE status='applied'").fetchone()[0]
    failed = sum(n for s, n in runs.items() if s not in ("ok", "running"))
    return (f"{c['writes']:,} writes, {_mib(c['bytes'])} | runs ok {runs.get('ok', 0)}, failed {failed} | "
            f"markers applied {applied}")


def _wait_for_run(store: Store, policy: str, after: datetime, timeout: float = 60) -> bool:
    """Whether a run of ``policy`` that started after ``after`` finished within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(store.db.query("SELECT id FROM runs WHERE policy=? AND status!='running' AND started_at > ?",
                               [policy, iso(after)])):
            return True
        time.sleep(0.2)
    return False


def _wait_caught_up(d: Demo, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sets = d.clients["prod"].replication.list()
        if all(s["queued_entries"] == 0 and s["state"] == "replicating" for s in sets):
            return
        time.sleep(0.1)


@click.command("demo-quiesce", hidden=True)
@click.argument("op", type=click.Choice(["freeze", "thaw"]))
@click.argument("volumes", nargs=-1, required=True)
def demo_quiesce(op: str, volumes: tuple[str, ...]) -> int:
    """The demo policies' quiesce hook: pause (freeze) or resume (thaw) the demo's writes to VOLUMES."""
    try:
        request(op, list(volumes))
    except (RuntimeError, OSError) as e:
        click.echo(f"aimsnap demo-quiesce: {e}", err=True)
        return 1
    return 0
