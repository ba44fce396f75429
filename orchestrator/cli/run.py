"""``aimsnap run``, and the verbs that read or write its outcome store: status, history, trigger, reload."""

import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import click

from engine import InvalidInput
from policies.durations import DurationError, parse_duration

from .output import print_json, print_table
from engine.net.tls import load_server_tls

from ..nodes import read_token
from ..store import Store, iso

db_option = click.option("--db", default="./aimsnap.db", show_default=True, type=click.Path(dir_okay=False),
                         help="The SQLite outcome store.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
WATCH_SECONDS = 5.0  # how often the watchdog looks at the AIM sets and the alerts are evaluated


class _JsonLog(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                           "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()})


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@db_option
@click.option("--log-json", is_flag=True, help="One JSON object per log line.")
@click.option("--stall-after", default="5m", show_default=True, help="Report an AIM set stalled after this long.")
@click.option("--metrics", "metrics_addr", default=None, metavar="HOST:PORT", help="Serve Prometheus metrics here.")
@click.option("--http", "http_addr", default=None, metavar="HOST:PORT",
              help="Serve the live status page here (/, /api/status, /metrics, /healthz).")
@click.option("--http-token-file", default=None, type=click.Path(dir_okay=False),
              help="With --http: every request needs this bearer token (or ?token=).")
@click.option("--http-tls-cert", default=None, type=click.Path(dir_okay=False),
              help="With --http: serve the status page over HTTPS with this certificate.")
@click.option("--http-tls-key", default=None, type=click.Path(dir_okay=False), help="Its key (mode 0600).")
def run(files: tuple[str, ...], db: str, log_json: bool, stall_after: str, metrics_addr: str | None,
        http_addr: str | None, http_token_file: str | None, http_tls_cert: str | None,
        http_tls_key: str | None) -> int:
    """Run the policies until SIGTERM (SIGHUP, or `aimsnap reload`, re-reads the files)."""
    from ..metrics import serve_metrics
    from ..schedule.service import Orchestrator
    from ..alerts import Alerts, Delivery, conditions
    from ..schedule.watchdog import Watchdog
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLog() if log_json else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    try:
        stall = parse_duration(stall_after)
    except DurationError as e:
        raise InvalidInput(str(e)) from None
    stop, reload = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before anything slow: a stop during start is clean
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    orch = Orchestrator(list(files), db)
    dog = Watchdog(orch.store, lambda: orch.bundle.aim_sets(),
                   lambda node: orch.runner.nodes(node).replication.list(), stall)
    if metrics_addr:
        serve_metrics(metrics_addr, orch.store, dog)
    page = None
    if http_addr:
        from ..statuspage import StatusPage
        host, sep, port = http_addr.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidInput(f"invalid --http address {http_addr!r}: write HOST:PORT, e.g. 127.0.0.1:9411")
        tls = load_server_tls(http_tls_cert, http_tls_key, "status page", "http")
        try:
            page = StatusPage(http_addr, orch.store, dog, read_token(http_token_file) if http_token_file else None,
                              tls=tls)
        except OSError as e:
            raise InvalidInput(f"cannot serve the status page on {http_addr}: {e.strerror or e}") from None
        page.start()
        logging.getLogger("aimsnap.scheduler").info("status page on %s://%s/", "https" if tls else "http",
                                                    page.address)
    delivery = Delivery(orch.store, lambda: datetime.now(timezone.utc))
    alerting = Alerts(orch.store, lambda: orch.bundle.alerting, delivery)
    orch.start()
    logging.getLogger("aimsnap.scheduler").info("running %d job(s) from %s; outcomes in %s", len(orch.jobs),
                                                ", ".join(files), os.path.abspath(db))
    last_dog = 0.0
    while not stop.wait(1.0):
        now = datetime.now(timezone.utc)
        orch.store.set_service(heartbeat=iso(now))
        if reload.is_set():
            reload.clear()
            orch.reload()
        for name in orch.store.take_requests(now):
            orch.request(name)
        if time.monotonic() - last_dog >= WATCH_SECONDS:
            last_dog = time.monotonic()
            dog.check(now)
            try:
                alerting.evaluate(now, conditions(now, orch.bundle, orch.store, dog))
            except Exception:  # noqa: BLE001 - an alert's fault must not stop the runs; said, tried again
                logging.getLogger("aimsnap.alerts").exception("evaluating alerts failed")
    logging.getLogger("aimsnap.scheduler").info("stopping: waiting for runs in progress")
    orch.shutdown(wait=True)
    delivery.close()
    if page is not None:
        page.close()
    orch.store.set_service(heartbeat="")
    return 0


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def _service_alive(store: Store) -> dict | None:
    from ..status import service_alive
    return service_alive(store, datetime.now(timezone.utc))


def _open(db: str) -> Store:
    if not os.path.exists(db):
        raise InvalidInput(f"no outcome store at {db}: start `aimsnap run POLICY_FILES --db {db}` first")
    return Store(db)


@click.command()
@db_option
@json_option
def status(db: str, as_json: bool) -> None:
    """Per policy: last run, next fire, newest recovery point and its age (the RPO) against its
    objective, failures."""
    from ..status import status as status_of
    store = _open(db)
    st = status_of(store, datetime.now(timezone.utc))
    rows, stalled, errors, fenced = st["policies"], st["stalled"], st["aim_errors"], st["fenced"]
    alive = _service_alive(store)
    if as_json:
        st.pop("at")
        print_json(st)
        return
    click.echo(f"orchestrator: {'running (pid ' + alive['pid'] + ')' if alive else 'not running'}")
    for r in rows:  # coloured for people (rich markup), plain in --json
        if r["rpo_objective_seconds"]:
            colour = "red" if r["rpo_breached"] else "green"
            r["rpo_shown"] = f"[{colour}]{_num(r['rpo_seconds'])} / {r['rpo_objective_seconds']:g}[/{colour}]"
        else:
            r["rpo_shown"] = _num(r["rpo_seconds"])
    print_table(rows, [("policy", "POLICY"), ("last_status", "LAST"), ("last_started_at", "AT"),
                       ("next_fire", "NEXT"), ("recovery_point_at", "RECOVERY POINT"),
                       ("rpo_shown", "RPO S / OBJECTIVE"), ("consecutive_failures", "FAILURES")],
                empty="no policies scheduled")
    for r in rows:
        if r["last_test"]:
            t = r["last_test"]
            click.echo(f"DR TEST {r['policy']}: {t['point'] or 'no point'} {t['status']} at {t['at']}")
    for s in stalled:
        click.echo(f"STALLED: {s}")
    for s in errors:
        click.echo(f"ERROR: {s}")
    for s in fenced:
        click.echo(f"FENCED: {s}")


@click.command()
@db_option
@click.option("--policy", default=None)
@click.option("--since", default=None, help="e.g. 24h, 7d")
@click.option("--status", "status_", default=None, type=click.Choice(["ok", "failed", "skipped", "missed",
                                                                        "interrupted", "timeout", "running"]))
@click.option("--limit", default=1000, show_default=True)
@click.option("--events", "show_events", is_flag=True,
              help="The orchestrator's events instead: stalled and recovered AIM sets, reloads, interrupted runs.")
@json_option
def history(db: str, policy: str | None, since: str | None, status_: str | None, limit: int, show_events: bool,
            as_json: bool) -> None:
    """Runs, newest first (or, with --events, what the orchestrator noticed)."""
    try:
        since_t = datetime.now(timezone.utc) - timedelta(seconds=parse_duration(since)) if since else None
    except DurationError as e:
        raise InvalidInput(str(e)) from None
    if show_events:
        events = _open(db).events(since_t, limit)
        if as_json:
            print_json(events)
        else:
            print_table(events, [("at", "AT"), ("kind", "KIND"), ("message", "MESSAGE")], empty="no events")
        return
    rows = _open(db).history(policy, since_t, status_, limit)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, [("id", "ID"), ("policy", "POLICY"), ("trigger", "TRIGGER"), ("scheduled_for", "SCHEDULED"),
                           ("started_at", "STARTED"), ("status", "STATUS"), ("attempt", "TRY"), ("error", "ERROR")],
                    empty="no runs")


@click.command()
@click.argument("policy")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@db_option
def trigger(policy: str, files: tuple[str, ...], db: str) -> int:
    """Run POLICY now: through the running orchestrator if there is one, else here (FILES, or the
    files the last `run` used)."""
    store = Store(db)
    if _service_alive(store):
        store.request_run(policy, datetime.now(timezone.utc))
        click.echo(f"asked the running orchestrator to run {policy}")
        return 0
    from ..schedule.service import Orchestrator
    files = files or tuple(filter(None, store.service().get("files", "").splitlines()))
    if not files:
        raise InvalidInput("no orchestrator is running and no policy files were given")
    orch = Orchestrator(list(files), db)
    if orch.runner.policy(policy) is None:
        raise InvalidInput(f"no policy {policy!r} in {', '.join(files)}")
    result = orch.trigger(policy)
    click.echo(f"{policy}: {result}")
    return 0 if result == "ok" else 1


@click.command()
@db_option
def reload(db: str) -> int:
    """Ask the running orchestrator to re-read its policy files (SIGHUP)."""
    alive = _service_alive(_open(db))
    if not alive:
        raise InvalidInput("no orchestrator is running with this --db")
    os.kill(int(alive["pid"]), signal.SIGHUP)
    click.echo(f"sent SIGHUP to {alive['pid']}")
    return 0


@click.command()
@db_option
@click.option("--html", "html_file", required=True, type=click.Path(dir_okay=False), help="Write the page here.")
def report(db: str, html_file: str) -> None:
    """One self-contained HTML page: runs by policy over time, and the RPO over time."""
    from ..report import render
    with open(html_file, "w") as f:
        f.write(render(_open(db)))
    click.echo(f"wrote {html_file}")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only list what retention would delete.")
@db_option
@json_option
def prune(files: tuple[str, ...], dry_run: bool, db: str, as_json: bool) -> int:
    """Apply every policy's `retain` to its destination points in time (never the newest, never
    below `min`)."""
    from ..actions import ActionContext
    from ..actions.retention import destination, prune_destination
    from ..nodes import Nodes
    from policies.validate import load_policies
    bundle = load_policies(list(files))
    nodes = Nodes(bundle)
    rows = []
    try:
        for p in bundle.policies:
            if p.retain is None:
                continue
            ctx = ActionContext(p, bundle, nodes, Store(db), 0, lambda: datetime.now(timezone.utc))
            snapshots = ",".join(destination(ctx)[1])
            for point in prune_destination(ctx, dry_run=dry_run):
                rows.append({"policy": p.name, "snapshot": snapshots, "point": point,
                             "action": "would delete" if dry_run else "deleted"})
    finally:
        nodes.close()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, [("policy", "POLICY"), ("snapshot", "SNAPSHOT"), ("point", "POINT"), ("action", "ACTION")],
                    empty="nothing to prune")
    return 0


COMMANDS = (run, status, history, trigger, reload, report, prune)
