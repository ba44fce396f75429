"""Alerts from a real `aimsnap run` with two real nodes: the destination killed, so no recovery
point lands, and within the objective + 30 s exactly one `rpo_breached` firing per route (webhook
and e-mail); the destination restarted, one resolved; a policy whose quiesce hook fails, one
`run_failed` however often it fails; a receiver that is down retried while the runs go on."""

import signal
import time

from ..cli import aimsnap
from ..receivers import Hook, smtp_server
from .test_apply import points_site
from .test_run import hist, start_run, wait_for

OBJECTIVE = 8


def site(pair, tmp_path, hook: Hook, smtp_addr: str) -> str:
    text = points_site(pair, OBJECTIVE) + f"""\
  - {{name: quiesced, kind: auto-marker, node: prod, aim_set: v-aim, every: 2s, retries: {{count: 0}},
      quiesce: {{pre: ["sh", "-c", "echo frozen disk >&2; exit 3"], timeout: 5s}},
      marker: {{destination_snapshot: v-dr-pit, wait: 3s}}}}
alerts:
  receivers:
    - {{name: hook, webhook: {{url: "{hook.url}"}}}}
    - {{name: mail, email: {{smtp: "{smtp_addr}", from: "aimsnap@example.org", to: ["oncall@example.org"]}}}}
    - {{name: down, webhook: {{url: "http://127.0.0.1:9/nobody", timeout: 1s}}}}
  routes:
    - {{receiver: hook, on: [rpo_breached, run_failed]}}
    - {{receiver: mail, on: [rpo_breached]}}
    - {{receiver: down, on: [rpo_breached]}}
"""
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return str(path)


def test_rpo_breach_run_failure_and_a_receiver_down(pair, tmp_path):
    hook = Hook()
    with smtp_server() as smtp:
        path, db = site(pair, tmp_path, hook, smtp.address), str(tmp_path / "o.db")
        assert aimsnap("apply", path).code == 0
        pair.wait_state("v-aim", "replicating")
        log = open(tmp_path / "run.log", "w")
        proc = start_run(path, db, log)
        try:
            wait_for(lambda: [r for r in hist(db, "--policy", "points") if r["status"] == "ok"], 30)
            # the failing quiesce hook: told once, however many runs fail
            wait_for(lambda: hook.bodies("firing", "run_failed"), 30)  # the engine looks every 5 s
            fails = len([r for r in hist(db, "--policy", "quiesced") if r["status"] == "failed"])
            wait_for(lambda: len([r for r in hist(db, "--policy", "quiesced") if r["status"] == "failed"]) >= fails + 4,
                     30)  # 8 s more of failing runs: at least one more look of the engine
            failed = hook.bodies("firing", "run_failed")
            assert len(failed) == 1 and failed[0]["policy"] == "quiesced" and "exited 3: frozen disk" in failed[0]["reason"]
            assert not hook.bodies(rule="rpo_breached")
            pair.dst.kill(signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: hook.bodies("firing", "rpo_breached"), OBJECTIVE + 30)
            assert time.monotonic() - killed <= OBJECTIVE + 30
            wait_for(lambda: smtp.mail, 10)
            time.sleep(6)  # a few more evaluations while it stays breached: no second message
            breach = hook.bodies("firing", "rpo_breached")
            assert len(breach) == 1 and breach[0]["policy"] == "points"
            assert breach[0]["figures"]["rpo_seconds"] > OBJECTIVE
            assert breach[0]["figures"]["rpo_objective_seconds"] == OBJECTIVE
            assert len(smtp.mail) == 1 and b"FIRING rpo_breached: points" in smtp.mail[0].content
            st = aimsnap("status", "--db", db, "--json").json()
            row = next(p for p in st["policies"] if p["policy"] == "points")
            assert row["rpo_breached"] is True and row["rpo_objective_seconds"] == OBJECTIVE
            pair.dst.start()
            wait_for(lambda: hook.bodies("resolved", "rpo_breached"), 60)
            wait_for(lambda: len(smtp.mail) == 2, 10)
            time.sleep(6)
            assert len(hook.bodies("resolved", "rpo_breached")) == 1 and len(hook.bodies("firing", "rpo_breached")) == 1
            events = aimsnap("history", "--db", db, "--events", "--json").json()
            kinds = [e["kind"] for e in events]
            assert kinds.count("alert") >= 3  # run_failed fired; rpo_breached fired and resolved
            delivered = [e["details"] for e in events if e["kind"] == "alert-delivery"]
            assert any(d["receiver"] == "hook" and d["delivered"] for d in delivered)
            # the receiver that is down: retried (each attempt in the log), while runs went on on time
            assert "alert rpo_breached:points to down: attempt 2 failed" in (tmp_path / "run.log").read_text()
            late = [r for r in hist(db, "--policy", "points") if r["scheduled_for"] and r["status"] != "running"]
            from orchestrator.store import parse_iso
            lateness = [(parse_iso(r["started_at"]) - parse_iso(r["scheduled_for"])).total_seconds() for r in late]
            assert lateness and max(lateness) < 2.0, lateness
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            log.close()
            hook.close()
