"""AIM replication between two real node processes on loopback."""

import os
import random
import socket
import threading

import pytest

from engine import Conflict, EngineError, InvalidInput
from engine.aim.wire import GREETING

from ..aimpair import read_all, read_point
from ..cli import aimsnap
from engine.client.nbd import NbdClient

MiB = 1 << 20


def test_every_applied_marker_equals_the_source_at_issue(pair):
    """Random writes via NBD and API with markers in between: each destination point in time
    equals the source volume at the instant its marker was issued."""
    size = 8 * MiB
    aim = pair.replicate("db01", size)
    rng = random.Random(11)
    nbd = NbdClient(pair.src.proc.nbd, "db01")
    expected = {}
    for i in range(12):
        for _ in range(rng.randrange(5, 40)):
            length = rng.randrange(1, 70000)
            offset = rng.randrange(0, size - length)
            if rng.random() < 0.5:
                assert nbd.write(offset, os.urandom(length))[0] == 0
            else:
                pair.src.api.write("db01", offset, os.urandom(length))
        if rng.random() < 0.2:
            assert nbd.request(6, rng.randrange(0, size - 65536), 65536)[0] == 0  # WRITE_ZEROES
        if rng.random() < 0.5:  # queued writes, often to the same blocks: one batch in the journal
            base = rng.randrange(0, size - 65536)
            queued = [(1, base + rng.randrange(0, 60000), 4096, os.urandom(4096), 0)
                      for _ in range(rng.randrange(2, 30))]
            assert nbd.pipeline(queued) == [(0, b"")] * len(queued)
        m = pair.src.api.replication.issue_marker(aim, "db01-dr-pit", f"m{i}")
        expected[m["id"]] = (f"m{i}", read_all(pair.src.api, "db01", size))
    nbd.close()
    for marker_id, (label, content) in expected.items():
        m = pair.src.api.replication.wait(marker_id, 60)
        assert m["state"] == "applied" and m["point"].startswith(f"{label}."), m  # LABEL.TIMESTAMP
        assert read_point(pair.dst.api, "db01-dr-pit", m["point"], size) == content, f"point {label} differs"
    status = pair.wait_caught_up(aim)
    assert status["bytes_written"] > 0 and status["bytes_sent"] > 0 and status["queued_bytes"] == 0
    assert read_all(pair.dst.api, "db01-dr", size) == read_all(pair.src.api, "db01", size)


def test_initial_sync_marker_fields_and_failures(pair):
    size = 4 * MiB
    pair.src.api.create_volume("v", size)
    pair.src.api.write("v", 123, b"before the AIM set existed")
    aim = pair.replicate("v", size, source_exists=True, dest_snapshots=("pit", "ci"))
    m = pair.marker(aim, "v-dr-pit")
    assert {"id", "aim_set", "state", "issued_at", "applied_at", "snapshot", "point"} <= set(m)
    assert m["state"] == "applied" and m["aim_set"] == aim and m["snapshot"] == "v-dr-pit" and m["point"]
    assert read_point(pair.dst.api, "v-dr-pit", m["point"], size)[123:149] == b"before the AIM set existed"
    pair.src.api.write("v", 0, b"ci")
    ci = pair.marker(aim, "v-dr-ci")  # complete-image at the destination: an increment
    assert ci["state"] == "applied" and ci["point"] is None
    assert pair.dst.api.read_snapshot("v-dr-ci", None, 0, 2) == b"ci"
    bad = pair.marker(aim, "no-such-snapshot")
    assert bad["state"] == "failed" and "not pre-configured" in bad["error"]
    pair.dst.api.create_volume("other", size)
    pair.dst.api.create_snapshot("other-pit", "other", "differential")
    wrong = pair.marker(aim, "other-pit")
    assert wrong["state"] == "failed" and "not of the destination volume" in wrong["error"]
    pair.src.api.write("v", 0, b"stream carries on")
    after = pair.marker(aim, "v-dr-pit", "after")
    assert after["state"] == "applied"
    assert after["point"].startswith("after.")
    assert pair.dst.api.read_snapshot("v-dr-pit", after["point"], 0, 17) == b"stream carries on"
    listed = pair.src.api.replication.markers(aim)
    assert [x["id"] for x in listed] == sorted((x["id"] for x in listed), reverse=True)
    assert [x["state"] for x in listed][:2] == ["applied", "failed"]


def test_create_refusals_change_nothing(pair, tmp_path):
    size = 4 * MiB
    pair.src.api.create_volume("v", size)
    pair.dst.api.create_volume("small", size // 2)
    to = pair.dst.proc.aim
    cases = [
        (f"{to}/missing", pair.dst.proc.token, "does not exist"),
        (f"{to}/small", pair.dst.proc.token, "same size"),
        (f"{to}/small", "x" * 40, "authentication failed"),
        ("nonsense", pair.dst.proc.token, "invalid --to"),
    ]
    for dest, token, fragment in cases:
        with pytest.raises(EngineError, match=fragment):
            pair.src.api.replication.create("v-aim", "v", dest, token)
    assert pair.src.api.replication.list() == []
    assert "authentication failed" in pair.dst.log()
    # the destination volume is protected from hosts once claimed
    pair.dst.api.create_volume("v-dr", size)
    pair.src.api.replication.create("v-aim", "v", f"{to}/v-dr", pair.dst.proc.token)
    with pytest.raises(Conflict, match="destination of AIM set"):
        pair.dst.api.write("v-dr", 0, b"host write")
    with pytest.raises(Conflict, match="already the destination"):
        pair.src.api.create_volume("w", size)
        pair.src.api.replication.create("w-aim", "w", f"{to}/v-dr", pair.dst.proc.token)
    c = NbdClient(pair.dst.proc.nbd, "v-dr")
    assert c.write(0, b"x")[0] != 0  # read-only over NBD too
    c.close()
    with pytest.raises(Conflict):
        pair.src.api.delete_volume("v")
    pair.src.api.replication.delete("v-aim")
    pair.dst.api.write("v-dr", 0, b"released")  # the destination is a plain volume again


def test_garbage_wrong_token_and_wrong_protocol_on_the_aim_port(pair):
    size = 2 * MiB
    aim = pair.replicate("g", size)
    host, port = pair.dst.proc.aim.rsplit(":", 1)
    for payload in (os.urandom(5000), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\x00\x00\x05hello",
                    b"\x00\x00\x01\x00" + b'{"op": "stream", "set_id": "x", "nonce": "00", "mac": "00"}'):
        with socket.create_connection((host, int(port))) as s:
            assert s.recv(len(GREETING) + 32).startswith(GREETING)
            s.sendall(payload)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    before = pair.dst.api.snapshot_info("g-dr-pit")
    pair.src.api.write("g", 0, b"still fine")
    m = pair.marker(aim, "g-dr-pit")
    assert m["state"] == "applied" and len(pair.dst.api.snapshot_info("g-dr-pit")["points"]) == \
        len(before["points"]) + 1
    assert pair.dst.api.read("g-dr", 0, 10) == b"still fine"
    assert "closing connection" in pair.dst.log()
    metrics = pair.dst.api.metrics()
    rejected = [line for line in metrics.splitlines() if line.startswith("aimsnap_aim_rejected_connections_total")]
    assert rejected and float(rejected[0].split()[-1]) >= 3


def test_group_marker_is_one_write_order_point(pair):
    """Two volumes written by concurrent writers (a counter on a, then the same on b); a group
    marker enables the destination snapshot set, whose points satisfy a - b in {0, 1}."""
    size = 2 * MiB
    a = pair.replicate("a", size)
    b = pair.replicate("b", size)
    pair.dst.api.create_snapshot_set("ab-dr", ["a-dr-pit", "b-dr-pit"])
    pair.src.api.replication.create_group("ab", [a, b])
    stop = threading.Event()
    errors = []

    def writer(offset: int) -> None:
        from engine.client.remote import RemoteNode
        api = RemoteNode(pair.src.proc.api, pair.src.proc.token)
        i = 0
        try:
            while not stop.is_set():
                i += 1
                api.write("a", offset, i.to_bytes(8, "little"))
                api.write("b", offset, i.to_bytes(8, "little"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(off,)) for off in (0, 4096)]
    for t in threads:
        t.start()
    try:
        markers = [pair.src.api.replication.issue_group_marker("ab", "ab-dr", f"g{k}") for k in range(8)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    for k, gm in enumerate(markers):
        done = pair.src.api.replication.wait(gm["id"], 60)
        assert done["state"] == "applied", done
        assert {m["aim_set"] for m in done["members"]} == {a, b}
        point = done["point"]
        assert point.startswith(f"g{k}.") and {m["point"] for m in done["members"]} == {point}
        for off in (0, 4096):
            va = int.from_bytes(pair.dst.api.read_snapshot("a-dr-pit", point, off, 8), "little")
            vb = int.from_bytes(pair.dst.api.read_snapshot("b-dr-pit", point, off, 8), "little")
            assert va - vb in (0, 1), (k, off, va, vb)
    res = aimsnap("--node", pair.src.proc.api, "--token-file", pair.src.proc.token_file, "marker", "show",
                  markers[0]["id"], "--json")
    assert res.code == 0 and res.json()["state"] == "applied"


def test_snapshot_at_the_source_ships_exactly_the_incremented_blocks(pair):
    """The 15-minute mode: the AIM source is a complete-image snapshot volume; each increment
    ships the blocks it copied (once each, however often they were rewritten)."""
    size, bs = 16 * MiB, 64 * 1024
    pair.src.api.create_volume("prod", size)
    pair.src.api.create_snapshot("prod-ci", "prod", "complete-image")
    pair.src.api.enable_snapshot("prod-ci")
    aim = pair.replicate("prod-ci", size, source_exists=True)
    rng = random.Random(5)
    for interval in range(3):
        blocks = rng.sample(range(size // bs), 10)
        for _ in range(200):  # hot blocks rewritten many times
            b = rng.choice(blocks)
            pair.src.api.write("prod", b * bs + rng.randrange(bs - 512), os.urandom(512))
        before = pair.src.api.replication.info(aim)["bytes_sent"]
        inc = pair.src.api.enable_snapshot("prod-ci")
        assert inc["blocks"] == 10
        m = pair.marker(aim, "prod-ci-dr-pit", f"i{interval}")
        assert m["state"] == "applied"
        sent = pair.src.api.replication.info(aim)["bytes_sent"] - before
        assert 10 * bs <= sent <= 10 * bs * 1.02 + 4096, sent  # framing and the marker on top
        assert read_point(pair.dst.api, "prod-ci-dr-pit", m["point"], size) == \
            read_point(pair.src.api, "prod-ci", None, size)


def test_pause_resume_and_cli(pair):
    size = 2 * MiB
    aim = pair.replicate("p", size)
    env = {"AIMSNAP_NODE": pair.src.proc.api, "AIMSNAP_TOKEN_FILE": pair.src.proc.token_file}
    assert aimsnap("aim", "pause", aim, env=env).code == 0
    pair.wait_state(aim, "paused")
    pair.src.api.write("p", 0, b"queued while paused")
    m = pair.src.api.replication.issue_marker(aim, "p-dr-pit", "while-paused")
    st = aimsnap("aim", "status", aim, "--json", env=env).json()
    assert st["state"] == "paused" and st["queued_entries"] == 2 and st["queued_bytes"] > 19
    assert pair.src.api.replication.wait(m["id"], 1)["state"] == "issued"
    assert aimsnap("aim", "resume", aim, env=env).code == 0
    assert pair.src.api.replication.wait(m["id"], 30)["state"] == "applied"
    res = aimsnap("marker", "issue", aim, "--snapshot", "p-dr-pit", "--wait", "--json", env=env)
    assert res.code == 0 and res.json()["state"] == "applied"
    res = aimsnap("marker", "issue", aim, "--snapshot", "nope", "--wait", env=env)
    assert res.code == 1 and "not pre-configured" in res.err
    assert aimsnap("marker", "list", "--aim-set", aim, "--json", env=env).json()[0]["state"] == "failed"
    listing = aimsnap("aim", "list", "--json", env=env).json()
    assert listing[0]["name"] == aim and listing[0]["state"] == "replicating"
    metrics = pair.src.api.metrics()
    assert f'aimsnap_aim_state{{aim_set="{aim}",state="replicating"}} 1.0' in metrics
    assert f'aimsnap_aim_bytes_sent_total{{aim_set="{aim}"}}' in metrics
    with pytest.raises(InvalidInput):
        pair.src.api.replication.issue_marker(aim, "p-dr-pit", "bad label!")


def _self_signed(tmp_path, name: str) -> tuple[str, str]:
    import subprocess
    cert, key = str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=aimsnap",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="needs openssl to make a test certificate")
def test_tls_on_the_aim_port(tmp_path):
    from orchestrator.demo.localnode import start_node
    from engine.client.remote import RemoteNode
    cert, key = _self_signed(tmp_path, "dst")
    other, _ = _self_signed(tmp_path, "other")
    src = start_node(str(tmp_path / "src"))
    dst = start_node(str(tmp_path / "dst"), extra=("--aim-tls-cert", cert, "--aim-tls-key", key))
    try:
        s, d = RemoteNode(src.api, src.token), RemoteNode(dst.api, dst.token)
        s.create_volume("v", 1 * MiB)
        d.create_volume("v-dr", 1 * MiB)
        d.create_snapshot("v-dr-pit", "v-dr", "differential")
        with pytest.raises(EngineError, match="unreachable|refused|closed|reset"):
            s.replication.create("v-aim", "v", f"{dst.aim}/v-dr", dst.token)  # plaintext to a TLS port
        with pytest.raises(EngineError, match="TLS handshake failed"):
            s.replication.create("v-aim", "v", f"{dst.aim}/v-dr", dst.token, tls_ca=open(other).read())
        info = s.replication.create("v-aim", "v", f"{dst.aim}/v-dr", dst.token, tls_ca=open(cert).read())
        assert info["tls"]
        m = s.replication.issue_marker("v-aim", "v-dr-pit", "early")
        if m["state"] == "failed":  # before the initial sync a marker cannot be consistent: it says so
            assert "initial sync" in m["error"]
        for _ in range(200):
            if s.replication.info("v-aim")["state"] == "replicating":
                break
            __import__("time").sleep(0.05)
        s.write("v", 10, b"over TLS")
        m = s.replication.wait(s.replication.issue_marker("v-aim", "v-dr-pit", "t")["id"], 30)
        assert m["state"] == "applied" and d.read_snapshot("v-dr-pit", m["point"], 10, 8) == b"over TLS"
    finally:
        assert src.stop() == 0 and dst.stop() == 0
