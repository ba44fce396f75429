"""``aimsnap demo``: the whole promise on one machine, in well under two minutes.

Two real nodes (``aimsnap node serve``) on free loopback ports, the policies of
``policies/examples/demo.yaml`` applied to them and run by a real ``aimsnap run``, a hot-spot write
workload through NBD meanwhile, then a report: runs and outcomes, RPO, the traffic of the
snapshot-source mode against direct mirroring, and every destination point in time compared with the
source content recorded at its marker. Exit code 1 on any mismatch.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

import policies
from engine import parse_size
from policies.loader import load_text
from policies.model import Bundle
from policies.validate import load_policies

from engine.client.remote import RemoteNode
from engine.storage.fsutil import write_new

from ..apply import reconcile
from ..report import render
from ..store import Store
from .certs import CertsUnavailable, Pem, make_ca, make_cert
from .hook import Hook
from .localnode import NodeProc, start_node
from .verify import Check, checks_table, mib, runs_table, traffic_table, verify
from .workload import CONTROL_ENV, ControlServer, Workload

EXAMPLE = Path(policies.__file__).parent / "examples" / "demo.yaml"
SNAPSHOT_POLICY = "db01-snapshot"  # demo.yaml's source-snapshot policy
DR_TEST_POLICY = "app-dr-test"  # ... and its dr-test, run once at the end
FS_VOLUME = "fs01"  # holds an ext4 file system (made at the start), which the DR test checks
RECEIVER = "demo-hook"  # demo.yaml's webhook receiver: the demo serves it on loopback


class DemoFailed(Exception):
    """The demo could not run (a node, the apply, the orchestrator): one line for the operator."""


class Demo:
    """Owns every process and file of one demo; ``close`` leaves nothing running."""

    def __init__(self, work: str, results: str, console: Console) -> None:
        self.work, self.results, self.console = work, results, console
        self.sites: dict[str, NodeProc] = {}
        self.clients: dict[str, RemoteNode] = {}
        self.orchestrator: subprocess.Popen | None = None
        self.workload: Workload | None = None
        self.control: ControlServer | None = None
        self.hook = Hook()  # every alert the orchestrator sends
        self.http = f"127.0.0.1:{_free_port()}"  # the orchestrator's live status page
        self.ca: Pem | None = None  # the private CA of the nodes' HTTPS control APIs
        self.plain_why = ""  # why they serve plain HTTP, if they do
        self.policy_file = os.path.join(work, "demo.yaml")
        self.db = os.path.join(work, "aimsnap.db")
        self.html = os.path.join(results, "report.html")

    # -- setting up ---------------------------------------------------------------------------------------
    def start_sites(self) -> None:
        """Both nodes serve their control API over HTTPS and their AIM port over TLS (a private CA
        made here) where this machine has ``openssl``, and make the orchestrator a token of role
        operator."""
        tls: tuple[str, ...] = ()
        try:
            pki = os.path.join(self.work, "pki")
            self.ca = make_ca(pki, cn="aimsnap demo CA")
            server = make_cert(pki, self.ca, "node", "aimsnap demo node")
            tls = ("--api-tls-cert", server.cert, "--api-tls-key", server.key,
                   "--aim-tls-cert", server.cert, "--aim-tls-key", server.key)
        except CertsUnavailable as e:
            self.ca, self.plain_why = None, str(e)
        for name in ("prod", "dr"):
            self.sites[name] = start_node(os.path.join(self.work, name), new_session=True, extra=tls)
            client = self.clients[name] = RemoteNode(self.sites[name].api, self.sites[name].token, timeout=120,
                                                     ca=self.ca and self.ca.cert)
            token = client.access.create_token("demo-orchestrator", "operator")["token"]
            write_new(os.path.join(self.work, f"{name}-operator.token"), f"{token}\n".encode())

    def write_policies(self) -> Bundle:
        doc = load_text(str(EXAMPLE), EXAMPLE.read_text())[0].data  # as aimsnap reads it (`on:` is a key)
        for name, site in self.sites.items():
            doc["nodes"][name] = {"api": site.api, "token_file": site.token_file, "aim": site.aim, "nbd": site.nbd,
                                  "operator_token_file": os.path.join(self.work, f"{name}-operator.token")}
            if self.ca:
                doc["nodes"][name].update(api_tls_ca=self.ca.cert, aim_tls_ca=self.ca.cert)
        for receiver in doc["alerts"]["receivers"]:
            if receiver["name"] == RECEIVER:
                receiver["webhook"]["url"] = self.hook.url
        with open(self.policy_file, "w") as f:
            f.write(f"# written by aimsnap demo from {EXAMPLE}, with this run's node addresses\n")
            yaml.safe_dump(doc, f, sort_keys=False, width=120)
        return load_policies([self.policy_file])

    def apply(self, bundle: Bundle) -> list:
        actions = reconcile(bundle, dry_run=False)
        bad = [a for a in actions if a.action in ("drift", "error")]
        if bad:
            raise DemoFailed("; ".join(f"{a.kind} {a.name}: {a.detail}" for a in bad))
        prod = self.clients["prod"]
        deadline = time.monotonic() + 30
        while any(s["state"] != "replicating" for s in prod.replication.list()):
            if time.monotonic() > deadline:
                raise DemoFailed("the AIM sets did not start replicating within 30 s")
            time.sleep(0.05)
        return actions

    def make_file_system(self, size: int) -> str:
        """An ext4 with a file in it, written into the fs01 volume (what the DR test's contrib check
        finds on its clone); the reason if this machine cannot (no mkfs.ext4)."""
        if not shutil.which("mkfs.ext4"):
            return "no mkfs.ext4 (e2fsprogs)"
        tree, image = os.path.join(self.work, "fs-tree"), os.path.join(self.work, "fs01.img")
        os.makedirs(tree, exist_ok=True)
        with open(os.path.join(tree, "hello"), "w") as f:
            f.write("hello from the production site\n")
        subprocess.run(["truncate", "-s", str(size), image], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, image], check=True, capture_output=True)
        prod = self.clients["prod"]
        with open(image, "rb") as f:
            offset = 0
            while chunk := f.read(1 << 20):
                prod.write(FS_VOLUME, offset, chunk)
                offset += len(chunk)
        return ""

    def start_workload(self, bundle: Bundle, rate: float, seed: int) -> None:
        sizes = {r.name: parse_size(r.spec["size"]) for r in bundle.resources.values()
                 if r.kind == "volume" and r.node == "prod"}
        self.workload = Workload(self.sites["prod"].nbd, sizes, rate, seed, frozenset([FS_VOLUME]))
        self.control = ControlServer(os.path.join(self.work, "quiesce.sock"), self.workload)
        self.workload.start()

    def start_orchestrator(self) -> None:
        env = {**os.environ, CONTROL_ENV: self.control.server_address,  # type: ignore[union-attr]
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        log = open(os.path.join(self.work, "run.log"), "wb")
        self.orchestrator = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", self.policy_file, "--db", self.db, "--http", self.http],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

    def alert_test(self) -> Check:
        """`aimsnap alerts test demo-hook`: the receiver gets a test alert before anything can fail."""
        p = subprocess.run([sys.executable, "-m", "orchestrator", "alerts", "test", RECEIVER, self.policy_file,
                            "--db", self.db], capture_output=True, text=True, timeout=60)
        got = self.hook.bodies("firing", "test")
        return Check("alerts", f"a test alert to {RECEIVER} (webhook)", p.returncode == 0 and len(got) == 1,
                     got[0]["reason"] if got else (p.stderr.strip() or p.stdout.strip())[:300])

    def status_page(self) -> list[Check]:
        """What the status page says at the end of the run (its /api/status), and the alerts that
        reached the receiver meanwhile: a clean run has every policy ok and fires none."""
        import json
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://{self.http}/api/status", timeout=10) as r:
                s = json.load(r)
        except OSError as e:
            return [Check("status page", f"http://{self.http}/", False, f"cannot read /api/status: {e}")]
        bad = [f"{p['policy']} {p['state']}" for p in s["policies"] if p["state"] != "ok"]
        bad += [f"{a['aim_set']} {a['state']}" for a in s.get("aim_sets", []) if a["state"] != "replicating"]
        n = f"{len(s['policies'])} policies, {len(s.get('aim_sets', []))} AIM sets"
        fired = [f"{b['rule']}: {b['reason']}" for b in self.hook.bodies("firing") if b["rule"] != "test"]
        return [Check("status page", f"http://{self.http}/: every policy ok, every AIM set replicating",
                      not bad and not s["alerts"], "; ".join(bad + [a["rule"] for a in s["alerts"]]) or n),
                Check("alerts", f"no alert fired during the run ({RECEIVER})", not fired,
                      "; ".join(fired)[:300] or f"{len(self.hook.got)} message(s) received, the test only")]

    def dr_test(self) -> Check:
        """Run the demo's dr-test policy once, as an operator would (`aimsnap trigger`)."""
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               "AIMSNAP_DEMO_NO_FS": self.no_fs}
        p = subprocess.run([sys.executable, "-m", "orchestrator", "trigger", DR_TEST_POLICY, self.policy_file,
                            "--db", self.db], capture_output=True, text=True, env=env, timeout=120)
        run = Store(self.db).last_run(DR_TEST_POLICY) or {}
        details = run.get("details") or {}
        clones_left = self.clients["dr"].list_clones()
        ok = p.returncode == 0 and run.get("status") == "ok" and not clones_left
        note = (details.get("check") or {}).get("stdout", "").strip().replace("\n", "; ") if ok else \
            (run.get("error") or p.stderr.strip() or f"clones left: {clones_left}")
        return Check(DR_TEST_POLICY, f"DR test of app-dr-set@{details.get('point')}", ok, note[:300])

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
        self.hook.close()
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


def main(seconds: int, keep: str | None, out: str, rate: int, seed: int) -> int:
    """Two nodes on loopback, the demo policies, a write workload, and a verified report."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: every thread's stack, to stderr
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (a background job of a
    # script inherits that, and Python then never raises KeyboardInterrupt: seen in a CI run)
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
                  f"dr {d.sites['dr'].api} (AIM {d.sites['dr'].aim})"
                  + (f"; control APIs over HTTPS and AIM over TLS (CA {os.path.relpath(d.ca.cert)}), the "
                     "orchestrator with operator tokens" if d.ca else f"; control APIs over plain HTTP: {d.plain_why}"))
    with console.status("aimsnap apply: creating volumes, snapshots, AIM sets, the group"):
        created = d.apply(bundle)
    console.print(f"applied {EXAMPLE.name}: {sum(a.action == 'created' for a in created)} resources created, "
                  f"{len(bundle.policies)} policies")
    size = parse_size(bundle.resource("volume", "prod", FS_VOLUME).spec["size"])  # type: ignore[union-attr]
    d.no_fs = d.make_file_system(size)
    baseline = d.bytes_sent()
    alerted = d.alert_test()
    d.start_workload(bundle, rate, seed)
    d.start_orchestrator()
    console.print(f"status page: http://{d.http}/ (live while the policies run; alerts go to {d.hook.url})")
    store = Store(d.db)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("policies running, workload writing", total=seconds, info="")
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            if d.orchestrator.poll() is not None:  # type: ignore[union-attr]
                raise DemoFailed(f"aimsnap run exited early; see {d.work}/run.log")
            progress.update(task, completed=elapsed, info=_progress_line(d.workload, store))  # type: ignore[arg-type]
            time.sleep(0.25)
        progress.update(task, completed=seconds)
        d.workload.stop()  # type: ignore[union-attr]
        # one more increment after the last write, so both modes have shipped the same writes
        final = progress.add_task("last source-snapshot run after the workload stopped", total=None, info="")
        _wait_for_run(store, SNAPSHOT_POLICY, after=datetime.now(timezone.utc))
        progress.remove_task(final)
        page = d.status_page()
        rc = d.stop_orchestrator()
        _wait_caught_up(d)
        sent = {k: v - baseline.get(k, 0) for k, v in d.bytes_sent().items()}
        checks = [alerted, *page, *verify(d, bundle, store, progress)]
        test = progress.add_task("DR test: a clone of the group's newest point, checked, deleted", total=None, info="")
        checks.append(d.dr_test())
        progress.remove_task(test)
    console.print(runs_table(store, bundle))
    console.print(traffic_table(d, sent))
    console.print(checks_table(checks))
    failures = [c for c in checks if not c.ok]
    unverified = [p.name for p in bundle.policies if not any(c.ok and c.policy == p.name for c in checks)]
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
        console.print(f"[red]demo FAILED: {len(failures)} of {len(checks)} checks failed (see the table above)[/]")
        return 1
    points = sum(c.policy not in (DR_TEST_POLICY, "alerts", "status page") for c in checks)
    console.print(f"[green]demo OK: {points} destination points in time, each equal to its source at its marker; "
                  "the DR test of the newest group point passed[/]")
    return 0


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _progress_line(workload: Workload, store: Store) -> str:
    c = workload.counts()
    runs: dict[str, int] = {}
    for r in store.run_counts():
        runs[r["status"]] = runs.get(r["status"], 0) + r["n"]
    applied = len(store.applied_markers())
    failed = sum(n for s, n in runs.items() if s not in ("ok", "running"))
    return (f"{c['writes']:,} writes, {mib(c['bytes'])} | runs ok {runs.get('ok', 0)}, failed {failed} | "
            f"markers applied {applied}")


def _wait_for_run(store: Store, policy: str, after: datetime, timeout: float = 60) -> bool:
    """Whether a run of ``policy`` that started after ``after`` finished within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.finished_since(policy, after):
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
