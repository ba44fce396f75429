"""NBD over TLS (``node serve --nbd-tls``): real node processes, real clients (libnbd's nbdinfo
and nbdcopy, qemu-img over GnuTLS), certificates made by the openssl CLI, and raw sockets for
what real clients never send (options before STARTTLS, garbage after its ACK)."""

import dataclasses
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Node
from engine.client.nbd import NbdClient
from engine.client.remote import RemoteNode
from engine.serve import nbd
from engine.serve.nbdtls import configure
from orchestrator.demo.certs import make_ca, make_cert
from orchestrator.demo.localnode import start_node

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("nbdcopy", "nbdinfo", "qemu-img", "openssl")),
                                reason="needs libnbd-bin, qemu-utils and openssl (installed by .ci/run)")

CN_A, CN_B = "host-a.example", "host-b.example"
FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])


# -- certificates ------------------------------------------------------------------------------------
def _client_dir(pki: str, name: str, ca: str, cert: str | None = None) -> str:
    """A directory as libnbd and qemu take it: ca-cert.pem (+ client-cert.pem, client-key.pem)."""
    d = os.path.join(pki, name)
    os.makedirs(d)
    shutil.copy(os.path.join(pki, ca), os.path.join(d, "ca-cert.pem"))
    if cert:
        shutil.copy(os.path.join(pki, f"{cert}-cert.pem"), os.path.join(d, "client-cert.pem"))
        shutil.copy(os.path.join(pki, f"{cert}-key.pem"), os.path.join(d, "client-key.pem"))
        os.chmod(os.path.join(d, "client-key.pem"), 0o600)
    return d


@dataclasses.dataclass
class Pki:
    root: str
    trust: str  # the CA only: a client without a certificate
    client_a: str
    client_b: str
    other_ca: str  # a CA that signed nothing here: the server is untrusted
    stranger: str  # a client certificate from another CA

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def server_args(self, mode: str) -> tuple[str, ...]:
        return ("--nbd-tls", mode, "--nbd-tls-cert", self.path("server-cert.pem"),
                "--nbd-tls-key", self.path("server-key.pem"))


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """Files laid out as libnbd and qemu take them (orchestrator.demo.certs makes them)."""
    root = str(tmp_path_factory.mktemp("nbd-pki"))
    ca = make_ca(root)
    make_ca(root, "other-ca", "another CA")
    make_cert(root, ca, "server", "localhost")
    for name, cn in (("a", CN_A), ("b", CN_B)):
        make_cert(root, ca, name, cn, client=True)
    make_ca(root, "stranger", CN_A)  # A's name, not from A's CA
    return Pki(root, _client_dir(root, "trust", "ca-cert.pem"), _client_dir(root, "client-a", "ca-cert.pem", "a"),
               _client_dir(root, "client-b", "ca-cert.pem", "b"), _client_dir(root, "other", "other-ca-cert.pem"),
               _client_dir(root, "stranger", "ca-cert.pem", "stranger"))


def _node(tmp_path_factory, name: str, *extra: str):
    n = start_node(str(tmp_path_factory.mktemp(name) / "node"), extra=extra)
    n.remote = RemoteNode(n.api, n.token)
    return n


@pytest.fixture(scope="module")
def required(tmp_path_factory, pki):
    n = _node(tmp_path_factory, "require", *pki.server_args("require"))
    yield n
    assert n.stop() == 0, n.log()


@pytest.fixture(scope="module")
def offered(tmp_path_factory, pki):
    n = _node(tmp_path_factory, "on", *pki.server_args("on"))
    yield n
    assert n.stop() == 0, n.log()


@pytest.fixture(scope="module")
def mutual(tmp_path_factory, pki):
    """TLS required, client certificates from the test CA, A may open a-*, B b-*."""
    clients = pki.path("clients.json")
    with open(clients, "w") as f:
        json.dump({CN_A: ["a-*"], CN_B: ["b-*"]}, f)
    n = _node(tmp_path_factory, "mutual", *pki.server_args("require"), "--nbd-tls-client-ca",
              pki.path("ca-cert.pem"), "--nbd-tls-clients", clients)
    n.remote.create_volume("a-db", 4 << 20)
    n.remote.create_volume("b-db", 4 << 20)
    yield n
    assert n.stop() == 0, n.log()


# -- clients -------------------------------------------------------------------------------------------
def tls_uri(node, export: str, certs: str) -> str:
    return f"nbds://{node.nbd}/{export}?tls-certificates={certs}"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def qemu_nbd_opts(node, export: str, certs: str) -> list[str]:
    host, port = node.nbd.rsplit(":", 1)
    return ["--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=client", "--image-opts",
            f"driver=nbd,host={host},port={port},export={export},tls-creds=tls0"]


def listed(node, certs: str) -> set[str]:
    res = run("nbdinfo", "--list", "--json", tls_uri(node, "", certs))
    assert res.returncode == 0, res.stderr
    return {e["export-name"] for e in json.loads(res.stdout)["exports"]}


def client_ctx(pki: Pki, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.path("ca-cert.pem"))
    if cert:
        ctx.load_cert_chain(pki.path(f"{cert}-cert.pem"), pki.path(f"{cert}-key.pem"))
    return ctx


class Raw:
    """The client side of the handshake by hand."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        assert self._recv(18)[:16] == struct.pack(">QQ", nbd.NBDMAGIC, nbd.IHAVEOPT)
        self.sock.sendall(struct.pack(">I", nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES))

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def send(self, opt: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", nbd.IHAVEOPT, opt, len(data)) + data)

    def reply(self) -> tuple[int, int, bytes]:
        magic, opt, rtype, length = struct.unpack(">QIII", self._recv(20))
        assert magic == nbd.REPLY_MAGIC
        return opt, rtype, self._recv(length)

    def ask(self, opt: int, data: bytes = b"") -> int:
        self.send(opt, data)
        return self.reply()[1]

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert self.ask(nbd.OPT_STARTTLS) == nbd.REP_ACK
        self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def closed_by_server(self, within: float = 10) -> bool:
        self.sock.settimeout(within)
        try:
            while self.sock.recv(4096):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass  # reset, or a TLS alert: closed all the same
        return True

    def close(self) -> None:
        self.sock.close()


def info_data(name: str) -> bytes:
    return struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)


# -- start-up checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (("--nbd-tls", "on"), "--nbd-tls on needs both --nbd-tls-cert and --nbd-tls-key"),
    (("--nbd-tls", "require", "--nbd-tls-cert", "server-cert.pem", "--nbd-tls-key", "a-key.pem"),
     "--nbd-tls-key a-key.pem is not the key of --nbd-tls-cert server-cert.pem"),
    (("--nbd-tls", "on", "--nbd-tls-cert", "nope.pem", "--nbd-tls-key", "server-key.pem"),
     "cannot read --nbd-tls-cert nope.pem: No such file or directory"),
    (("--nbd-tls", "on", "--nbd-tls-cert", "server.ext", "--nbd-tls-key", "server-key.pem"),
     "cannot load --nbd-tls-cert server.ext and --nbd-tls-key server-key.pem"),
    (("--nbd-tls-cert", "server-cert.pem"), "--nbd-tls-cert given but --nbd-tls is off"),
    (("--nbd-tls", "on", "--nbd-tls-cert", "server-cert.pem", "--nbd-tls-key", "server-key.pem",
      "--nbd-tls-client-ca", "ca-cert.pem"), "need --nbd-tls require"),
    (("--nbd-tls", "require", "--nbd-tls-cert", "server-cert.pem", "--nbd-tls-key", "server-key.pem",
      "--nbd-tls-client-ca", "ca-cert.pem", "--nbd-tls-clients", "server.ext"), "server.ext is not JSON"),
])
def test_bad_tls_options_are_refused_at_start(pki, tmp_path, args, says):
    res = subprocess.run([sys.executable, "-m", "orchestrator", "node", "serve", "--root", str(tmp_path / "n"),
                          "--api", "127.0.0.1:0", "--nbd", "127.0.0.1:0", "--aim", "127.0.0.1:0", *args],
                         cwd=pki.root, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr, res.stderr


# -- real clients ----------------------------------------------------------------------------------------
def test_nbdinfo_nbdcopy_and_qemu_over_tls(required, pki, tmp_path):
    required.remote.create_volume("db01", 32 << 20)
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(os.urandom(8 << 20))
        f.seek(20 << 20)
        f.write(os.urandom(5 << 20 | 4097))
        f.truncate(32 << 20)
    info = run("nbdinfo", "--json", tls_uri(required, "db01", pki.trust))
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["exports"][0]["export-size"] == 32 << 20
    assert "with TLS" in run("nbdinfo", tls_uri(required, "db01", pki.trust)).stdout
    assert run("nbdcopy", str(src), tls_uri(required, "db01", pki.trust)).returncode == 0
    out = tmp_path / "out.img"
    assert run("nbdcopy", tls_uri(required, "db01", pki.trust), str(out)).returncode == 0
    assert out.read_bytes() == src.read_bytes()
    assert required.remote.read("db01", 20 << 20, 4096) == src.read_bytes()[20 << 20:(20 << 20) + 4096]
    cmp = run("qemu-img", "compare", "--object", f"tls-creds-x509,id=tls0,dir={pki.trust},endpoint=client",
              "--image-opts", f"driver=file,filename={src}", qemu_nbd_opts(required, "db01", pki.trust)[-1])
    assert cmp.returncode == 0 and "identical" in cmp.stdout, cmp.stdout + cmp.stderr
    qinfo = run("qemu-img", "info", *qemu_nbd_opts(required, "db01", pki.trust))
    assert qinfo.returncode == 0 and "33554432 bytes" in qinfo.stdout, qinfo.stderr


def test_require_refuses_plain_clients(required, tmp_path):
    required.remote.create_volume("plain", 1 << 20)
    for args in (["nbdinfo", f"nbd://{required.nbd}/plain"], ["nbdinfo", "--list", f"nbd://{required.nbd}"],
                 ["nbdcopy", f"nbd://{required.nbd}/plain", str(tmp_path / "out.img")],
                 ["qemu-img", "info", "-f", "raw", f"nbd://{required.nbd}/plain"]):
        res = run(*args)
        assert res.returncode != 0 and "export-size" not in res.stdout, (args, res.stdout)
    assert not (tmp_path / "out.img").exists() or (tmp_path / "out.img").stat().st_size == 0


def test_on_serves_plain_and_tls(offered, pki, tmp_path):
    offered.remote.create_volume("both", 8 << 20)
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(8 << 20))
    assert run("nbdcopy", str(src), f"nbd://{offered.nbd}/both").returncode == 0  # plain in
    out = tmp_path / "out.img"
    assert run("nbdcopy", tls_uri(offered, "both", pki.trust), str(out)).returncode == 0  # TLS out
    assert out.read_bytes() == src.read_bytes()
    assert "without TLS" in run("nbdinfo", f"nbd://{offered.nbd}/both").stdout
    assert "with TLS" in run("nbdinfo", tls_uri(offered, "both", pki.trust)).stdout


def test_untrusted_server_certificate_is_refused(required, pki):
    required.remote.create_volume("secret", 1 << 20)
    res = run("nbdinfo", tls_uri(required, "secret", pki.other_ca))
    assert res.returncode != 0 and "certificate" in res.stderr, res.stderr
    assert run("qemu-img", "info", *qemu_nbd_opts(required, "secret", pki.other_ca)).returncode != 0
    deadline = time.monotonic() + 5
    while "TLS handshake failed" not in required.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    warning = next(line for line in required.log().splitlines() if "TLS handshake failed" in line)
    assert "WARNING" in warning and "('127.0.0.1'," in warning and "Traceback" not in required.log()


# -- client certificates and the clients map ------------------------------------------------------------------
def test_client_certificate_required(mutual, pki):
    for certs in (pki.trust, pki.stranger):  # none, or one the client CA did not sign
        res = run("nbdinfo", tls_uri(mutual, "a-db", certs))
        assert res.returncode != 0, res.stdout
        assert run("qemu-img", "info", *qemu_nbd_opts(mutual, "a-db", certs)).returncode != 0
    for cert in (None, "stranger"):  # refused by the TLS handshake itself: not even an (empty) LIST
        raw = Raw(mutual.nbd)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            raw.starttls(client_ctx(pki, cert))
            raw.ask(nbd.OPT_LIST)
        raw.close()


def test_clients_map_limits_exports_per_certificate(mutual, pki, tmp_path):
    data = os.urandom(4 << 20)
    (tmp_path / "a.img").write_bytes(data)
    assert run("nbdcopy", str(tmp_path / "a.img"), tls_uri(mutual, "a-db", pki.client_a)).returncode == 0
    assert run("nbdcopy", tls_uri(mutual, "a-db", pki.client_a), str(tmp_path / "back.img")).returncode == 0
    assert (tmp_path / "back.img").read_bytes() == data
    assert run("qemu-img", "info", *qemu_nbd_opts(mutual, "a-db", pki.client_a)).returncode == 0
    assert listed(mutual, pki.client_a) == {"a-db"} and listed(mutual, pki.client_b) == {"b-db"}
    refused = run("nbdinfo", tls_uri(mutual, "a-db", pki.client_b))
    assert refused.returncode != 0 and "export-size" not in refused.stdout
    assert run("nbdcopy", tls_uri(mutual, "a-db", pki.client_b), str(tmp_path / "stolen.img")).returncode != 0
    # the answer for A's export is the answer for one that does not exist
    answers = []
    for name in ("a-db", "no-such"):
        raw = Raw(mutual.nbd)
        raw.starttls(client_ctx(pki, "b"))
        answers.append(raw.ask(nbd.OPT_INFO, info_data(name)))
        raw.send(nbd.OPT_EXPORT_NAME, name.encode())
        assert raw.closed_by_server()
        raw.close()
    assert answers == [nbd.REP_ERR_UNKNOWN, nbd.REP_ERR_UNKNOWN]


# -- the handshake by hand ---------------------------------------------------------------------------------
def test_export_name_before_starttls_closes(required):
    required.remote.create_volume("en", 1 << 20)
    raw = Raw(required.nbd)
    raw.send(nbd.OPT_EXPORT_NAME, b"en")
    assert raw.closed_by_server()


def test_options_before_starttls_are_refused_then_tls_works(required, pki):
    required.remote.create_volume("opts", 1 << 20)
    raw = Raw(required.nbd)
    for opt, data in ((nbd.OPT_INFO, info_data("opts")), (nbd.OPT_GO, info_data("opts")), (nbd.OPT_LIST, b""),
                      (8, b""), (nbd.OPT_STARTTLS, b"x")):
        raw.send(opt, data)
        assert raw.reply()[1] == (nbd.REP_ERR_INVALID if opt == nbd.OPT_STARTTLS else nbd.REP_ERR_TLS_REQD)
    raw.starttls(client_ctx(pki))
    assert raw.ask(nbd.OPT_STARTTLS) == nbd.REP_ERR_INVALID  # already on
    raw.send(nbd.OPT_LIST)
    names = []
    while (reply := raw.reply())[1] == nbd.REP_SERVER:
        names.append(reply[2][4:4 + struct.unpack(">I", reply[2][:4])[0]].decode())
    assert reply[1] == nbd.REP_ACK and "opts" in names
    assert raw.ask(nbd.OPT_ABORT) == nbd.REP_ACK
    raw.close()


@FEW
@given(options=st.lists(st.tuples(st.integers(3, 20) | st.integers(0, 2**32 - 1), st.binary(max_size=64))
                        .filter(lambda o: o[0] not in (nbd.OPT_EXPORT_NAME, nbd.OPT_ABORT, nbd.OPT_STARTTLS)),
                        max_size=5))
def test_any_option_before_starttls_gets_tls_reqd(required, pki, options):
    raw = Raw(required.nbd)
    for opt, data in options:
        raw.send(opt, data)
        assert raw.reply() == (opt, nbd.REP_ERR_TLS_REQD, b"TLS is required: send NBD_OPT_STARTTLS first")
    raw.starttls(client_ctx(pki))
    assert raw.ask(nbd.OPT_ABORT) == nbd.REP_ACK
    raw.close()


@pytest.fixture(scope="module")
def after(required):
    required.remote.create_volume("after", 1 << 20)
    return "after"


@FEW
@given(garbage=st.binary(min_size=1, max_size=2000))
def test_garbage_after_starttls_ack_closes_and_the_node_serves_on(required, pki, after, garbage):
    raw = Raw(required.nbd)
    assert raw.ask(nbd.OPT_STARTTLS) == nbd.REP_ACK
    try:
        raw.sock.sendall(garbage)
        raw.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server was quicker to close it
    assert raw.closed_by_server()
    raw.close()
    good = NbdClient(required.nbd, after, tls=client_ctx(pki))
    assert good.write(0, garbage[:512]) == (0, b"") and good.read(0, len(garbage[:512])) == (0, garbage[:512])
    good.close()


# -- in process: the transmission phase on a TLS socket, the handshake bound, the open count -----------------
@pytest.fixture
def served(tmp_path, pki):
    """An in-process NBD server (TLS required, a short handshake bound) on a real node."""
    node = Node(str(tmp_path / "n"))
    node.create_volume("v", 8 << 20, "4KiB")
    tls = dataclasses.replace(configure("require", pki.path("server-cert.pem"), pki.path("server-key.pem")),
                              handshake_timeout=0.5)
    server = nbd.NbdServer(node, tls=tls)
    listener = socket.create_server(("127.0.0.1", 0))
    server.start(listener)
    yield node, f"127.0.0.1:{listener.getsockname()[1]}", server
    server.stop()
    node.close()


def test_stalled_tls_handshake_is_dropped(served):
    _, address, _ = served
    raw = Raw(address)
    assert raw.ask(nbd.OPT_STARTTLS) == nbd.REP_ACK
    start = time.monotonic()
    assert raw.closed_by_server(within=10)  # says nothing: the server gives up after 0.5 s
    assert time.monotonic() - start < 5


SIZES_AROUND_A_RECORD = (1, 16383, 4096, 16384, 12, 16385, 40000, (16 << 10) + 1, 100, 200000, 3)


def test_transmission_over_tls_batches_and_counts_the_open(served, pki):
    node, address, _ = served
    c = NbdClient(address, "v", tls=client_ctx(pki))
    assert node.hosts.count("v") == 1  # counted before the reply to GO
    big = os.urandom(3 << 20)  # larger than the receive buffer, across many TLS records
    replies = c.pipeline([(nbd.CMD_WRITE, 0, len(big), big, 0)]
                         + [(nbd.CMD_WRITE, (4 << 20) + i * 4096, 4096, bytes([i]) * 4096, 0) for i in range(40)]
                         + [(nbd.CMD_FLUSH, 0, 0, b"", 0)]
                         + [(nbd.CMD_READ, (4 << 20) + i * 4096, 4096, b"", 0) for i in range(40)]
                         + [(nbd.CMD_READ, 0, len(big), b"", 0)]
                         # around one TLS record, between small ones (a large read is sent from its buffer)
                         + [(nbd.CMD_READ, 7 * n, n, b"", 0) for n in SIZES_AROUND_A_RECORD]
                         # past what the connection's read buffer holds (the replies so far go first),
                         # then one larger than it (allocated, as before)
                         + [(nbd.CMD_READ, 0, len(big), b"", 0), (nbd.CMD_READ, 0, 5 << 20, b"", 0)]
                         + [(nbd.CMD_READ, 9 << 20, 1, b"", 0)])
    assert all(e == 0 for e, _ in replies[:-1]) and replies[-1][0] != 0
    assert [d for _, d in replies[42:82]] == [bytes([i]) * 4096 for i in range(40)]
    assert replies[82][1] == big
    assert [d for _, d in replies[83:-3]] == [big[7 * n:8 * n] for n in SIZES_AROUND_A_RECORD]
    assert replies[-3][1] == big
    small = b"".join(bytes([i]) * 4096 for i in range(40))
    assert replies[-2][1] == big + bytes(1 << 20) + small + bytes((1 << 20) - len(small))
    c.send_raw(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_DISC, 0, 0, 0))
    c.close()
    deadline = time.monotonic() + 5
    while node.hosts.count("v") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.hosts.count("v") == 0


def test_stop_wakes_tls_connections(served, pki):
    """The listener knows a connection's TLS wrapper (TLS detaches the accepted socket)."""
    _, address, server = served
    c = NbdClient(address, "v", tls=client_ctx(pki))
    assert c.read(0, 4) == (0, bytes(4))
    server.stop()
    c.sock.settimeout(5)
    with pytest.raises((ConnectionError, ssl.SSLError)):
        c.read(0, 4)


def test_starttls_without_tls_is_unsupported(tmp_path):
    node = Node(str(tmp_path / "n"))
    node.create_volume("v", 1 << 20, "4KiB")
    server = nbd.NbdServer(node)
    listener = socket.create_server(("127.0.0.1", 0))
    server.start(listener)
    try:
        raw = Raw(f"127.0.0.1:{listener.getsockname()[1]}")
        assert raw.ask(nbd.OPT_STARTTLS) == nbd.REP_ERR_UNSUP
        raw.send(nbd.OPT_GO, info_data("v"))
        while (reply := raw.reply())[1] == nbd.REP_INFO:
            pass
        assert reply[1] == nbd.REP_ACK  # the plain session goes on
        raw.close()
    finally:
        server.stop()
        node.close()


def test_a_connection_that_opens_nothing_is_closed_by_the_deadline(served, monkeypatch):
    """Option after option, slowly, never an export: the connection is closed once the
    negotiation deadline passes (idle connections cannot take the listener's slots)."""
    monkeypatch.setattr(nbd, "NEGOTIATION_TIMEOUT", 1.0)
    _, address, _ = served
    raw = Raw(address)
    start = time.monotonic()
    while time.monotonic() - start < 0.8:  # keeps talking (each option answered), opens nothing
        assert raw.ask(nbd.OPT_LIST) == nbd.REP_ERR_TLS_REQD
        time.sleep(0.2)
    assert raw.closed_by_server(within=10)
    assert time.monotonic() - start < 5
