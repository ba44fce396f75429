"""Alerts against real receivers on loopback: an HTTP server collecting webhook POSTs and an SMTP
server (aiosmtpd) collecting mail. One message when a condition starts, one when it ends,
reminders only as a route's `repeat` allows; Alertmanager's format; a receiver that is down
retried with backoff on a thread of its own (the caller never waits) and the outcome recorded;
the conditions read from the outcome store; `aimsnap alerts test`."""

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.alerts import Alerts, Condition, Delivery, conditions
from orchestrator.store import Store, iso
from policies.validate import load_policies

from ..cli import aimsnap
from ..receivers import Hook, smtp_server

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def smtp():
    with smtp_server() as server:
        yield server


def policy_file(tmp_path, hook_url: str, smtp_addr: str, extra_receivers: str = "", extra_routes: str = "") -> str:
    for name, text in (("hook.token", "hook-secret-123\n"), ("n.token", "x" * 20)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    text = f"""\
version: 1
nodes:
  prod: {{api: "http://127.0.0.1:1", token_file: n.token}}
  dr: {{api: "http://127.0.0.1:2", token_file: n.token, aim: "127.0.0.1:3"}}
resources:
  volumes: [{{node: prod, name: db01, size: 1GiB}}, {{node: dr, name: db01-dr, size: 1GiB}}]
  snapshots: [{{node: dr, name: db01-dr-pit, source: db01-dr, type: differential}}]
  aim_sets: [{{node: prod, name: a, source: db01, to: {{node: dr, volume: db01-dr}}}}]
policies:
  - {{name: p1, kind: auto-marker, node: prod, aim_set: a, every: 15m, rpo_objective: 30m,
      marker: {{destination_snapshot: db01-dr-pit}}}}
alerts:
  receivers:
    - {{name: ops-hook, webhook: {{url: "{hook_url}", token_file: hook.token}}}}
    - {{name: ops-mail, email: {{smtp: "{smtp_addr}", from: "aimsnap@example.org", to: ["oncall@example.org"]}}}}
{extra_receivers}  routes:
    - {{receiver: ops-hook, on: [rpo_breached, run_failed, fenced]}}
    - {{receiver: ops-mail, on: [rpo_breached], repeat: 4h}}
{extra_routes}"""
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return str(path)


def _bundle(path: str):
    return load_policies([path])


RPO = Condition("rpo_breached", "rpo_breached:p1", "policy p1: its newest recovery point is 2000s old, over its "
                "objective of 1800s", "p1", "prod", "a", {"rpo_seconds": 2000.0, "rpo_objective_seconds": 1800.0})


def test_fire_once_remind_as_repeat_says_resolve_once(tmp_path, hook, smtp):
    bundle = _bundle(policy_file(tmp_path, hook.url, smtp.address))
    store = Store(str(tmp_path / "o.db"))
    clock = {"now": T0}
    alerts = Alerts(store, lambda: bundle.alerting, Delivery(store, lambda: clock["now"], inline=True))
    alerts.evaluate(T0, {RPO.key: RPO})
    assert len(hook.got) == 1 and len(smtp.mail) == 1
    body = hook.got[0]["body"]
    assert hook.got[0]["auth"] == "Bearer hook-secret-123" and hook.got[0]["path"] == "/hook"
    assert body["version"] == 1 and body["status"] == "firing" and body["rule"] == "rpo_breached"
    assert body["policy"] == "p1" and body["figures"]["rpo_seconds"] == 2000.0 and body["fired_at"] == iso(T0)
    mail = smtp.mail[0]
    assert mail.rcpt_tos == ["oncall@example.org"] and b"FIRING rpo_breached: p1" in mail.content
    for minutes in (5, 60, 239):  # still breached: no storm, no reminder before 4h
        alerts.evaluate(T0 + timedelta(minutes=minutes), {RPO.key: RPO})
    assert len(hook.got) == 1 and len(smtp.mail) == 1
    alerts.evaluate(T0 + timedelta(hours=4, seconds=1), {RPO.key: RPO})
    assert len(hook.got) == 1 and len(smtp.mail) == 2  # the mail route repeats, the hook's does not
    later = T0 + timedelta(hours=5)
    alerts.evaluate(later, {})
    assert [g["body"]["status"] for g in hook.got] == ["firing", "resolved"] and len(smtp.mail) == 3
    assert hook.got[1]["body"]["resolved_at"] == iso(later) and hook.got[1]["body"]["fired_at"] == iso(T0)
    alerts.evaluate(later + timedelta(hours=1), {})
    assert len(hook.got) == 2 and len(smtp.mail) == 3  # resolved once
    events = store.events(limit=100)
    kinds = [e["kind"] for e in events]
    assert kinds.count("alert") == 3 and kinds.count("alert-delivery") == 5
    assert all(e["details"]["delivered"] for e in events if e["kind"] == "alert-delivery")
    assert store.open_alerts() == {}


def test_an_open_alert_survives_a_restart_of_the_orchestrator(tmp_path, hook, smtp):
    bundle = _bundle(policy_file(tmp_path, hook.url, smtp.address))
    db = str(tmp_path / "o.db")
    Alerts(Store(db), lambda: bundle.alerting, Delivery(Store(db), lambda: T0, inline=True)).evaluate(T0, {RPO.key: RPO})
    again = Alerts(Store(db), lambda: bundle.alerting, Delivery(Store(db), lambda: T0, inline=True))
    again.evaluate(T0 + timedelta(minutes=1), {RPO.key: RPO})  # a new process: neither repeats nor forgets
    assert len(hook.got) == 1
    again.evaluate(T0 + timedelta(minutes=2), {})
    assert [g["body"]["status"] for g in hook.got] == ["firing", "resolved"]


def test_alertmanager_format(tmp_path, hook, smtp):
    path = policy_file(tmp_path, hook.url, smtp.address,
                       extra_receivers=f'    - {{name: am, webhook: {{url: "{hook.url}", format: alertmanager}}}}\n',
                       extra_routes="    - {receiver: am, on: [fenced]}\n")
    bundle = _bundle(path)
    store = Store(str(tmp_path / "o.db"))
    alerts = Alerts(store, lambda: bundle.alerting, Delivery(store, lambda: T0, inline=True))
    fenced = Condition("fenced", "fenced:prod/a", "AIM set a on prod: fenced: the destination was promoted", None,
                       "prod", "a", {"last_error": "fenced"})
    alerts.evaluate(T0, {fenced.key: fenced})
    alerts.evaluate(T0 + timedelta(minutes=1), {})
    am = [g["body"] for g in hook.got if isinstance(g["body"], list)]
    assert len(am) == 2 and am[0][0]["labels"]["alertname"] == "fenced" and am[0][0]["labels"]["aim_set"] == "a"
    assert "endsAt" not in am[0][0] and am[1][0]["endsAt"] == iso(T0 + timedelta(minutes=1))
    assert am[0][0]["annotations"]["summary"].startswith("AIM set a on prod")


def test_a_receiver_that_is_down_is_retried_on_its_own_thread(tmp_path, smtp):
    bundle = _bundle(policy_file(tmp_path, "http://127.0.0.1:9/down", smtp.address))
    store = Store(str(tmp_path / "o.db"))
    waits: list[float] = []
    release = threading.Event()

    def sleep(seconds: float) -> None:  # the backoff, held until the other receiver was served
        waits.append(seconds)
        release.wait(10)
    delivery = Delivery(store, lambda: T0, sleep=sleep)
    alerts = Alerts(store, lambda: bundle.alerting, delivery)
    t = time.monotonic()
    alerts.evaluate(T0, {RPO.key: RPO})
    assert time.monotonic() - t < 0.5  # the caller (a run, the engine) never waits for a receiver
    deadline = time.monotonic() + 10
    while not smtp.mail:  # the mail goes out while the webhook waits out its backoff
        assert time.monotonic() < deadline, "a receiver that is down held up the others"
        time.sleep(0.05)
    assert waits == [1.0]
    release.set()
    delivery.close()
    assert waits == [1.0, 4.0, 15.0, 60.0]  # the backoff between the five attempts
    results = {e["details"]["receiver"]: e["details"] for e in store.events() if e["kind"] == "alert-delivery"}
    assert results["ops-hook"]["delivered"] is False and results["ops-hook"]["attempts"] == 5
    assert "unreachable" in results["ops-hook"]["errors"][-1]
    assert results["ops-mail"]["delivered"] is True and len(smtp.mail) == 1


def test_conditions_come_from_the_store_and_the_watchdog(tmp_path, hook, smtp):
    bundle = _bundle(policy_file(tmp_path, hook.url, smtp.address))
    store = Store(str(tmp_path / "o.db"))
    store.set_service(started_at=iso(T0))
    assert conditions(T0 + timedelta(minutes=10), bundle, store) == {}
    late = conditions(T0 + timedelta(minutes=31), bundle, store)  # no point in 31 minutes: over 30m
    assert list(late) == ["rpo_breached:p1"] and "no recovery point in 1860s" in late["rpo_breached:p1"].reason
    store.record_run("p1", "auto-marker", "schedule", "failed", T0 + timedelta(minutes=32), error="quiesce hook exit 3")
    store.record_marker(None, "p1", "prod", {"aim_set": "a", "id": 1, "state": "applied", "point": "p1.x",
                                             "issued_at": iso(T0 + timedelta(minutes=33)),
                                             "applied_at": iso(T0 + timedelta(minutes=33))})

    class Dog:
        stalled = {("prod", "b")}

        def problems(self):
            return {("prod", "a"): ("fenced", "fenced: the destination was promoted at generation 2")}
    now = conditions(T0 + timedelta(minutes=40), bundle, store, Dog())
    assert set(now) == {"run_failed:p1", "aim_stalled:prod/b", "fenced:prod/a"}  # the point is 7 min old: ok
    assert now["run_failed:p1"].figures["last_error"] == "quiesce hook exit 3"


def test_aimsnap_alerts_test(tmp_path, hook, smtp):
    path = policy_file(tmp_path, hook.url, smtp.address)
    ok = aimsnap("alerts", "test", "ops-hook", path, "--db", str(tmp_path / "o.db"))
    assert ok.code == 0, ok.err
    assert hook.got[-1]["body"]["rule"] == "test" and hook.got[-1]["body"]["status"] == "firing"
    assert aimsnap("alerts", "test", "ops-mail", path, "--db", str(tmp_path / "o.db")).code == 0
    assert len(smtp.mail) == 1
    nope = aimsnap("alerts", "test", "nope", path, "--db", str(tmp_path / "o.db"))
    assert nope.code == 2 and "no receiver 'nope'" in nope.err
