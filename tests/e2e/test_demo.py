"""`aimsnap demo`: two real nodes, the demo policies under a real `aimsnap run`, a workload, and
a verified report; Ctrl-C leaves no process behind."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import yaml

from ..cli import aimsnap

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "policies", "examples", "demo.yaml")


def demo(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "demo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def processes_under(path: str) -> list[str]:
    """Command lines of live processes that mention ``path``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmd and int(pid) != os.getpid():
            found.append(cmd)
    return found


def test_demo_verifies_a_point_of_every_policy(tmp_path):
    keep = str(tmp_path / "demo")
    t0 = time.monotonic()
    proc = demo("--seconds", "10", "--keep", keep)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert time.monotonic() - t0 < 60, "the demo must stay well under two minutes"
    policies = [p["name"] for p in yaml.safe_load(open(EXAMPLE))["policies"]]
    for name in policies:
        assert any(line.count(name) and "PASS" in line for line in out.splitlines()), (name, out)
    assert "FAIL" not in out and "demo OK" in out
    assert "sent, snapshot-source" in out and "sent, direct mirroring" in out
    db = os.path.join(keep, "aimsnap.db")
    history = aimsnap("history", "--db", db, "--json").json()
    assert {r["policy"] for r in history if r["status"] == "ok"} == set(policies)
    status = aimsnap("status", "--db", db, "--json").json()
    assert all(p["recovery_point"] or (p["kind"] == "dr-test" and p["last_test"]["status"] == "ok")
               for p in status["policies"])
    assert os.path.getsize(os.path.join(keep, "report.html")) > 1000
    assert not processes_under(keep), "the demo left processes running"


def test_ctrl_c_stops_everything(tmp_path):
    keep = str(tmp_path / "demo")
    proc = demo("--seconds", "120", "--keep", keep)
    deadline = time.monotonic() + 60
    while not re.search(r"run \d+ ok", _read(os.path.join(keep, "run.log"))):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else "no run"
        time.sleep(0.2)
    assert processes_under(keep), "nodes and orchestrator should be running"
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:  # seen once in CI: say where every thread of the demo was
        proc.send_signal(signal.SIGUSR1)  # faulthandler (orchestrator.demo.run.main)
        time.sleep(1)
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the demo did not stop within 90 s of Ctrl-C:\n{out[-6000:]}") from None
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert not processes_under(keep), processes_under(keep)
    # the orchestrator was stopped with SIGTERM: no run is left `running`
    rows = json.loads(aimsnap("history", "--db", os.path.join(keep, "aimsnap.db"), "--json").text)
    assert rows and all(r["status"] != "running" for r in rows)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
