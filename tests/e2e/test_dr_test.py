"""The dr-test policy kind against two real nodes, run with `aimsnap trigger`: a passing check, a
failing one (its output in `history`), a hanging one (timeout, the clone deleted), `verify: true`,
and the contrib file-system check on an ext4 made through nbdfuse on the source and replicated."""

import os
import shutil
import subprocess
import time

import pytest

from ..cli import aimsnap
from .test_apply import policy_file

CONTRIB = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "checks", "aimsnap-check-fs")


def site(pair, tmp_path, tests: str) -> tuple[str, str]:
    """The site of test_apply with dr-test policies appended, applied, and a point on erp-dr-pit."""
    path = policy_file(pair, tmp_path)
    text = open(path).read().replace(f'aim: "{pair.dst.proc.aim}"}}',
                                     f'aim: "{pair.dst.proc.aim}", nbd: "{pair.dst.proc.nbd}"}}')
    open(path, "w").write(text + tests)
    assert aimsnap("apply", path).code == 0
    pair.wait_state("erp-to-dr", "replicating")
    return path, str(tmp_path / "o.db")


def dr_test(name: str, check: list[str] | None, timeout: str = "1m", verify: bool = False) -> str:
    lines = [f"  - name: {name}", "    kind: dr-test", "    node: dr", "    snapshot: erp-dr-pit",
             "    every: 1h", "    retries: {count: 0}", f"    verify: {str(verify).lower()}"]
    if check:
        lines.append(f"    check: {{run: [{', '.join(repr(a) for a in check)}], timeout: {timeout}}}")
    return "\n".join(lines) + "\n"


def trigger(path: str, db: str, name: str):
    return aimsnap("trigger", name, path, "--db", db, timeout=120)


def last(db: str, name: str) -> dict:
    return aimsnap("history", "--db", db, "--policy", name, "--json").json()[0]


def test_passing_failing_and_hanging_checks(pair, tmp_path):
    script = tmp_path / "check.sh"
    script.write_text('#!/bin/sh\necho "checking $AIMSNAP_CLONE at $1"\n'
                      'qemu-img info --output=json "$1" >/dev/null || exit 5\n'
                      '[ "$2" = fail ] && { echo "table t1: 3 rows corrupt" >&2; exit 3; }\n'
                      '[ "$2" = hang ] && sleep 60\nexit 0\n')
    script.chmod(0o755)
    tests = (dr_test("weekly", [str(script), "{nbd_url}", "ok", "{point}"], verify=True)
             + dr_test("broken", [str(script), "{nbd_url}", "fail"])
             + dr_test("stuck", [str(script), "{nbd_url}", "hang"], timeout="2s"))
    path, db = site(pair, tmp_path, tests)
    pair.src.api.write("erp", 0, b"erp data")
    m = pair.marker("erp-to-dr", "erp-dr-pit", "p1")
    assert m["state"] == "applied"
    if not shutil.which("qemu-img"):
        pytest.skip("needs qemu-utils (make deps)")
    ok = trigger(path, db, "weekly")
    assert ok.code == 0, ok.err
    run = last(db, "weekly")
    assert run["status"] == "ok" and run["details"]["point"] == m["point"]
    assert run["details"]["check"]["exit"] == 0 and f"at nbd://{pair.dst.proc.nbd}/weekly.test" in \
        run["details"]["check"]["stdout"]
    assert run["details"]["verify"]["erp-to-dr"]["mismatched_ranges"] == 0
    bad = trigger(path, db, "broken")
    assert bad.code == 1
    run = last(db, "broken")
    assert run["status"] == "failed" and "exit 3" in run["error"] and "3 rows corrupt" in run["error"]
    assert "3 rows corrupt" in run["details"]["check"]["stderr"]
    t0 = time.monotonic()
    hung = trigger(path, db, "stuck")
    assert hung.code == 1 and time.monotonic() - t0 < 30
    run = last(db, "stuck")
    assert run["status"] == "timeout" and "did not finish within 2s" in run["error"]
    assert pair.dst.api.list_clones() == []  # every run deleted its clone
    page = tmp_path / "report.html"
    assert aimsnap("report", "--db", db, "--html", str(page)).code == 0
    html = page.read_text()
    assert "<h2>DR tests</h2>" in html and m["point"] in html and "3 rows corrupt" in html
    # `status` (with an orchestrator running: it publishes the schedule) says what each last tested
    import signal
    import sys
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", path, "--db", db, "--metrics",
                             f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            st = aimsnap("status", "--db", db, "--json")
            by = {p["policy"]: p for p in st.json()["policies"]} if st.code == 0 else {}
            if "weekly" in by or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert by["weekly"]["last_test"]["point"] == m["point"] and by["weekly"]["last_test"]["status"] == "ok"
        assert by["broken"]["last_test"]["status"] == "failed"
        assert "DR TEST weekly: " in aimsnap("status", "--db", db).text
        import urllib.request
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'aimsnap_dr_test_last_success_timestamp{policy="weekly"}' in metrics
        assert 'aimsnap_dr_test_last_success_timestamp{policy="broken"}' not in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_a_point_with_no_points_yet_fails_with_the_reason(pair, tmp_path):
    path, db = site(pair, tmp_path, dr_test("early", ["/bin/true"]))
    assert trigger(path, db, "early").code == 1
    assert "no recovery point to test" in last(db, "early")["error"]


@pytest.mark.skipif(not (shutil.which("nbdfuse") and shutil.which("mkfs.ext4") and os.geteuid() == 0
                         and os.path.exists("/dev/fuse")),
                    reason="needs nbdfuse (libnbd-bin), e2fsprogs, /dev/fuse and root")
def test_the_contrib_check_on_an_ext4_made_through_nbdfuse_and_replicated(pair, tmp_path):
    tests = dr_test("fs", [CONTRIB, "--replay", "{nbd_url}", "--", "sh", "-c", 'cat "$AIMSNAP_MOUNT/hello"'])
    path, db = site(pair, tmp_path, tests)
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    fuse = subprocess.Popen(["nbdfuse", str(mnt / "disk"), pair.src.proc.nbd_uri("erp")])
    try:
        deadline = time.monotonic() + 20
        while not (mnt / "disk").exists():
            assert time.monotonic() < deadline and fuse.poll() is None
            time.sleep(0.1)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(_tree(tmp_path)), str(mnt / "disk")], check=True)
        subprocess.run(["sync", str(mnt / "disk")], check=True)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)])
        fuse.wait(20)
    m = pair.marker("erp-to-dr", "erp-dr-pit", "fs")
    assert m["state"] == "applied"
    res = trigger(path, db, "fs")
    run = last(db, "fs")
    assert res.code == 0 and run["status"] == "ok", (res.err, run)
    assert "file system clean" in run["details"]["check"]["stdout"]
    assert "hello from the source" in run["details"]["check"]["stdout"]
    assert pair.dst.api.list_clones() == []


def _tree(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello").write_text("hello from the source\n")
    return tree


def test_orchestrator_shutdown_stops_the_check_and_deletes_the_clone(pair, tmp_path):
    """SIGTERM while a check runs (it would run for ten minutes): the orchestrator kills it, the run
    says why, the clone is gone, and the process exits 0 within seconds."""
    import signal
    import sys
    path, db = site(pair, tmp_path, dr_test("long", ["sleep", "600"], timeout="10m"))
    assert pair.marker("erp-to-dr", "erp-dr-pit", "p1")["state"] == "applied"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", path, "--db", db],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30

        def serving() -> bool:
            st = aimsnap("status", "--db", db, "--json")
            return st.code == 0 and st.json()["orchestrator"] == "running"
        while not serving():  # else trigger would run the check here, for ten minutes
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "asked the running orchestrator" in aimsnap("trigger", "long", "--db", db).text
        while not pair.dst.api.list_clones():
            assert time.monotonic() < deadline, "the run never made its clone"
            time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0 and time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    assert pair.dst.api.list_clones() == []
    run = [r for r in aimsnap("history", "--db", db, "--policy", "long", "--json").json() if r["trigger"] == "manual"][0]
    assert run["status"] == "failed" and "shutting down" in run["error"]
