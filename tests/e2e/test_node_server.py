"""A real node process on loopback, driven by real clients: nbdinfo, nbdcopy, qemu-img, qemu-io,
curl-like HTTP, and the aimsnap CLI."""

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from ..cli import aimsnap
from engine.client.nbd import NbdClient
from engine.client.remote import RemoteNode
from orchestrator.demo.localnode import start_node

pytestmark = pytest.mark.skipif(not shutil.which("nbdcopy") or not shutil.which("qemu-img"),
                                reason="needs libnbd-bin and qemu-utils (installed by .ci/run)")


@pytest.fixture
def node(tmp_path):
    n = start_node(str(tmp_path / "node"))
    yield n
    assert n.stop() == 0, n.log()


def cli(node, *args, **kw):
    return aimsnap(*args, env=node.cli_env(), **kw)


def http(node, method, path, *, token=True, body=None, data=None, headers=None):
    req = urllib.request.Request(node.api + path, method=method, data=data if data is not None else
                                 (json.dumps(body).encode() if body is not None else None))
    if token:
        req.add_header("Authorization", f"Bearer {node.token if token is True else token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_startup_token_and_node_json(tmp_path):
    token_file = tmp_path / "secret.token"
    n = start_node(str(tmp_path / "node"), token_file=str(token_file))
    try:
        assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"
        assert "created token file" in n.log() and n.api.startswith("http://127.0.0.1:")
        info = json.load(open(tmp_path / "node" / "node.json"))
        assert info["pid"] == n.proc.pid and info["nbd"] == n.nbd
    finally:
        assert n.stop() == 0


def test_nbdcopy_in_and_out_and_qemu(node, tmp_path):
    assert cli(node, "volume", "create", "db01", "--size", "64MiB").code == 0
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(os.urandom(5 << 20))
        f.seek(40 << 20)
        f.write(os.urandom(3 << 20))
        f.truncate(64 << 20)
    subprocess.run(["nbdcopy", str(src), node.nbd_uri("db01")], check=True)
    out = tmp_path / "out.img"
    subprocess.run(["nbdcopy", node.nbd_uri("db01"), str(out)], check=True)
    assert sha(src) == sha(out)
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), node.nbd_uri("db01")], check=True)
    # odd offsets through qemu-io, visible through the API
    subprocess.run(["qemu-io", "-f", "raw", node.nbd_uri("db01"), "-c", "write -P 0x5a 1000001 77777",
                    "-c", "flush"], check=True, capture_output=True)
    res = cli(node, "volume", "read", "db01", "--offset", "1000000", "--length", "77779")
    assert res.out == bytes([src.read_bytes()[1000000]]) + b"\x5a" * 77777 + bytes([src.read_bytes()[1077778]])
    metrics = http(node, "GET", "/metrics")[1].decode()
    assert 'aimsnap_volume_written_bytes_total{volume="db01"}' in metrics


def test_exports_list_and_read_only_snapshots(node, tmp_path):
    cli(node, "volume", "create", "v", "--size", "4MiB")
    cli(node, "volume", "write", "v", input=b"before" * 1000)
    cli(node, "snapshot", "create", "v-ci", "--source", "v", "--type", "complete-image")
    cli(node, "snapshot", "create", "v-pit", "--source", "v", "--type", "differential")
    cli(node, "snapshot", "enable", "v-ci")
    cli(node, "snapshot", "enable", "v-pit", "--point", "p1")
    cli(node, "volume", "write", "v", input=b"after!" * 1000)
    listing = subprocess.run(["nbdinfo", "--list", "--json", f"nbd://{node.nbd}"], capture_output=True,
                             check=True, text=True).stdout
    exports = {e["export-name"]: e for e in json.loads(listing)["exports"]}
    assert set(exports) == {"v", "v-ci", "v-pit@p1"}
    assert exports["v-ci"]["is_read_only"] and exports["v-pit@p1"]["is_read_only"] and not exports["v"]["is_read_only"]
    for export in ("v-ci", "v-pit@p1"):
        out = tmp_path / f"{export}.img"
        subprocess.run(["nbdcopy", node.nbd_uri(export), str(out)], check=True)
        assert out.read_bytes()[:6000] == b"before" * 1000
        c = NbdClient(node.nbd, export)
        assert c.write(0, b"x" * 512) == (errno.EPERM, b"")
        assert c.request(4, 0, 4096) == (errno.EPERM, b"")  # TRIM
        assert c.read(0, 6) == (0, b"before")  # the connection carries on
        c.close()
    assert subprocess.run(["nbdcopy", str(tmp_path / "v-ci.img"), node.nbd_uri("v-ci")],
                          capture_output=True).returncode != 0
    assert cli(node, "snapshot", "read", "v-pit@p1", "--length", "6").out == b"before"


def test_queued_requests_are_handled_in_order_as_one_batch(node):
    """A client with a queue depth sends many requests before reading a reply: the server takes
    them in one batch (consecutive writes land together) and must keep their order, fail only
    the bad one, and take a write larger than its receive buffer."""
    from engine.client.nbd import CMD_FLUSH, CMD_READ, CMD_WRITE, FLAG_FUA
    cli(node, "volume", "create", "v", "--size", "8MiB")
    c = NbdClient(node.nbd, "v")
    big = os.urandom(3 << 20)  # past the 1 MiB receive buffer: it grows
    replies = c.pipeline([
        (CMD_READ, 0, 4, b"", 0),
        (CMD_WRITE, 0, 4, b"AAAA", 0),
        (CMD_WRITE, 2, 4, b"BBBB", 0),  # overlaps the previous one in the same batch
        (CMD_WRITE, (8 << 20) - 2, 4, b"CCCC", 0),  # beyond the end: fails alone
        (CMD_WRITE, 4096, 4, b"DDDD", FLAG_FUA),
        (CMD_READ, 0, 6, b"", 0),
        (6, 8192, 4096, b"", 0),  # WRITE_ZEROES between writes
        (CMD_WRITE, 1 << 20, len(big), big, 0),
        (CMD_FLUSH, 0, 0, b"", 0),
        (CMD_READ, 4096, 4, b"", 0),
    ])
    assert replies == [(0, b"\0" * 4), (0, b""), (0, b""), (errno.EINVAL, b""), (0, b""), (0, b"AABBBB"),
                       (0, b""), (0, b""), (0, b""), (0, b"DDDD")]
    assert c.read(1 << 20, len(big)) == (0, big)
    many = c.pipeline([(CMD_WRITE, i * 512, 512, bytes([i % 251]) * 512, 0) for i in range(2000)])
    assert many == [(0, b"")] * 2000
    assert c.read(0, 2000 * 512)[1] == b"".join(bytes([i % 251]) * 512 for i in range(2000))
    c.close()


def test_bad_frames_close_only_that_connection(node):
    cli(node, "volume", "create", "v", "--size", "1MiB")
    good = NbdClient(node.nbd, "v")
    assert good.write(0, b"good") == (0, b"")
    bad = NbdClient(node.nbd, "v")
    bad.send_raw(b"\xde\xad\xbe\xef" * 10)
    with pytest.raises((ConnectionError, OSError)):
        bad.read(0, 4)
    garbage = socket.create_connection(tuple(node.nbd.rsplit(":", 1)[0:1]) + (int(node.nbd.rsplit(":", 1)[1]),))
    garbage.recv(18)
    garbage.sendall(os.urandom(4096))
    garbage.close()
    assert good.read(0, 4) == (0, b"good")
    assert good.read(1 << 20, 1)[0] == errno.EINVAL  # out of range: an error reply, not a disconnect
    assert good.request(99, 0, 0)[0] == errno.EINVAL  # unknown command
    assert good.read(0, 4) == (0, b"good")
    good.close()
    with pytest.raises(OSError, match="refused"):
        NbdClient(node.nbd, "no-such-export")
    assert "closing connection" in node.log()


def test_api_auth_and_errors(node):
    assert http(node, "GET", "/healthz", token=False)[0] == 200
    for token in (False, "wrong-token-wrong-token"):
        status, body = http(node, "POST", "/v1/volumes", token=token, body={"name": "x", "size": "1MiB"})
        assert status == 401 and json.loads(body)["error"]["type"] == "Unauthorized"
        assert http(node, "GET", "/metrics", token=token)[0] == 401
        assert http(node, "GET", "/v1/openapi.json", token=token)[0] == 401
    assert json.loads(http(node, "GET", "/v1/volumes")[1]) == []  # nothing was created
    spec = json.loads(http(node, "GET", "/v1/openapi.json")[1])
    assert spec["openapi"].startswith("3.") and "/v1/volumes/{name}/data" in spec["paths"]
    cases = [
        ("POST", "/v1/volumes", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ("POST", "/v1/volumes", {"body": {"name": "x"}}, 400),
        ("POST", "/v1/volumes", {"body": {"name": "x", "size": "1MiB", "colour": "red"}}, 400),
        ("POST", "/v1/volumes", {"body": {"name": "x/y", "size": "1MiB"}}, 400),
        ("POST", "/v1/volumes", {"body": {"name": "x", "size": "1GB"}}, 400),
        ("GET", "/v1/volumes/nope", {}, 404),
        ("GET", "/v1/volumes/nope/data?length=abc", {}, 400),
        ("GET", "/v1/nowhere", {}, 404),
        ("PATCH", "/v1/volumes", {}, 405),
        ("PUT", "/v1/volumes/v/data?offset=0", {"data": bytes((64 << 20) + (1 << 17))}, 413),
    ]
    http(node, "POST", "/v1/volumes", body={"name": "v", "size": "1MiB"})
    for method, path, kw, status in cases:
        got, body = http(node, method, path, **kw)
        assert got == status, (method, path, got, body[:200])
        assert "message" in json.loads(body)["error"]


def test_remote_cli_and_unreachable(node, tmp_path):
    assert cli(node, "volume", "create", "r1", "--size", "8MiB").code == 0
    payload = os.urandom(3 << 20)
    assert cli(node, "volume", "write", "r1", "--offset", "1", input=payload).code == 0
    assert cli(node, "volume", "read", "r1", "--offset", "1", "--length", str(len(payload))).out == payload
    res = cli(node, "volume", "write", "r1", "--offset", "8MiB", input=b"x")
    assert res.code == 2 and "beyond its size" in res.err
    assert cli(node, "snapshot", "create", "r1-pit", "--source", "r1", "--type", "differential").code == 0
    assert cli(node, "snapshot", "enable", "r1-pit", "--point", "a", "--json").json()["point"] == "a"
    assert cli(node, "snapshot", "info", "r1-pit", "--json").json()["points"][0]["name"] == "a"
    assert cli(node, "snapshot-set", "create", "s", "--members", "r1-pit").code == 0
    assert cli(node, "snapshot-set", "enable", "s", "--json").json()["snapshot_set"] == "s"
    res = cli(node, "volume", "info", "nope")
    assert res.code == 1 and res.err.strip() == "aimsnap: error: volume 'nope' does not exist"
    res = aimsnap("volume", "list", env={**node.cli_env(), "AIMSNAP_TOKEN_FILE": str(tmp_path / "missing")})
    assert res.code == 2 and "cannot read token file" in res.err
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-at-all\n")
    wrong.chmod(0o600)
    res = aimsnap("volume", "list", env={**node.cli_env(), "AIMSNAP_TOKEN_FILE": str(wrong)})
    assert res.code == 1 and "refused the token" in res.err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = aimsnap("--node", f"http://127.0.0.1:{port}", "--token-file", node.token_file, "volume", "list")
    assert res.code == 3 and res.err.count("\n") == 1 and "unreachable" in res.err


def test_sigterm_then_restart_keeps_state(tmp_path):
    root = str(tmp_path / "node")
    n = start_node(root)
    cli(n, "volume", "create", "v", "--size", "1MiB")
    c = NbdClient(n.nbd, "v")
    assert c.write(100, b"persist") == (0, b"")  # no flush: SIGTERM flushes
    assert n.stop(signal.SIGTERM) == 0
    assert "stopped cleanly" in n.log()
    n2 = start_node(root)
    try:
        assert cli(n2, "volume", "read", "v", "--offset", "100", "--length", "7").out == b"persist"
    finally:
        assert n2.stop() == 0


def test_nbd_max_connections_is_configurable(tmp_path):
    """--nbd-max-connections: that many hosts are served at once, one more is refused (and the
    node says so in its log), and a closed connection makes room again."""
    n = start_node(str(tmp_path / "node"), extra=("--nbd-max-connections", "2"))
    try:
        remote = RemoteNode(n.api, n.token)
        remote.create_volume("v", 1 << 20)
        remote.close()
        first, second = NbdClient(n.nbd, "v"), NbdClient(n.nbd, "v")
        with pytest.raises((ConnectionError, OSError)):
            NbdClient(n.nbd, "v")
        assert "refused: 2 connections already" in n.log()
        first.close()
        for _ in range(100):  # the server notices the close
            try:
                third = NbdClient(n.nbd, "v")
                break
            except (ConnectionError, OSError):
                time.sleep(0.05)
        assert third.read(0, 4) == (0, bytes(4)) and second.read(0, 4) == (0, bytes(4))
        third.close()
        second.close()
    finally:
        assert n.stop() == 0, n.log()
    assert aimsnap("node", "serve", "--root", str(tmp_path / "x"), "--nbd-max-connections", "0").code == 2
