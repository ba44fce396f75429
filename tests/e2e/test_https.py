"""The control API over HTTPS at real nodes: the remote CLI, `apply` and `run` with a pinned CA;
a certificate not trusted, TLS to a plain port and plain HTTP to a TLS port each said clearly
(exit 3); key and token files others may read refused; a plain API on a non-loopback address
refused next to TLS ports unless --insecure-http; and the token never on the wire: a recording
proxy between the CLI and the node (HTTPS) and between the nodes (AIM) never sees its bytes,
while over plain HTTP it does (the tap works)."""

import os
import subprocess
import sys
import time

import pytest

from orchestrator.demo.localnode import start_node

from ..aimpair import Pair
from ..cli import aimsnap
from ..tcpproxy import Proxy


def tls_args(pki) -> tuple[str, ...]:
    return ("--api-tls-cert", pki["server"].cert, "--api-tls-key", pki["server"].key)


@pytest.fixture
def tls_node(tmp_path, pki):
    n = start_node(str(tmp_path / "node"), extra=tls_args(pki))
    yield n
    assert n.stop() == 0, n.log()


def remote(node, *args, ca=None, url=None, **kw):
    env = {"AIMSNAP_NODE": url or node.api, "AIMSNAP_TOKEN_FILE": node.token_file}
    if ca:
        env["AIMSNAP_NODE_CA"] = ca
    return aimsnap(*args, env=env, **kw)


def test_the_remote_cli_over_https(tls_node, pki):
    assert tls_node.api.startswith("https://127.0.0.1:")
    assert remote(tls_node, "volume", "create", "v", "--size", "1MiB", ca=pki["ca"].cert).code == 0
    res = remote(tls_node, "volume", "list", "--json", ca=pki["ca"].cert)
    assert res.code == 0 and [v["name"] for v in res.json()] == ["v"]
    untrusted = remote(tls_node, "volume", "list", ca=pki["other"].cert)
    assert untrusted.code == 3 and "not trusted" in untrusted.err and "--node-ca" in untrusted.err, untrusted.err
    system = remote(tls_node, "volume", "list")  # the system's CAs do not know a private CA
    assert system.code == 3 and "not trusted" in system.err
    plain = remote(tls_node, "volume", "list", url=tls_node.api.replace("https://", "http://"))
    assert plain.code == 3 and "is it an https:// node?" in plain.err, plain.err
    assert "Traceback" not in untrusted.err + system.err + plain.err


def test_tls_to_a_plain_port_is_said(tmp_path, pki):
    n = start_node(str(tmp_path / "plain"))
    try:
        res = remote(n, "volume", "list", ca=pki["ca"].cert, url=n.api.replace("http://", "https://"))
        assert res.code == 3 and "TLS failed" in res.err and "http://" in res.err, res.err
    finally:
        n.stop()


def _serve_fails(tmp_path, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "orchestrator", "node", "serve", "--root", str(tmp_path / "r"),
                        "--nbd", "127.0.0.1:0", "--aim", "127.0.0.1:0", *args], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    return p.stderr


def test_secret_files_others_may_read_are_refused(tmp_path, pki):
    loose = tmp_path / "loose-key.pem"
    loose.write_bytes(open(pki["server"].key, "rb").read())
    loose.chmod(0o644)
    err = _serve_fails(tmp_path, "--api", "127.0.0.1:0", "--api-tls-cert", pki["server"].cert,
                       "--api-tls-key", str(loose))
    assert f"{loose} has mode 0644" in err and "chmod 600" in err
    token = tmp_path / "api.token"
    token.write_text("x" * 32)
    token.chmod(0o640)
    err = _serve_fails(tmp_path, "--api", "127.0.0.1:0", "--token-file", str(token))
    assert f"token file {token} has mode 0640" in err
    assert "x" * 32 not in err  # the secret itself is never said
    n = start_node(str(tmp_path / "n"))
    try:
        os.chmod(n.token_file, 0o644)
        res = remote(n, "volume", "list")
        assert res.code == 2 and "has mode 0644" in res.err
    finally:
        os.chmod(n.token_file, 0o600)
        n.stop()


def test_a_plain_api_off_loopback_beside_tls_needs_insecure_http(tmp_path, pki):
    aim_tls = ("--aim-tls-cert", pki["server"].cert, "--aim-tls-key", pki["server"].key)
    err = _serve_fails(tmp_path, "--api", "0.0.0.0:0", *aim_tls)
    assert "clear text" in err and "--insecure-http" in err
    n = start_node(str(tmp_path / "n"), ports={"api": "0.0.0.0:0"}, extra=(*aim_tls, "--insecure-http"))
    try:
        assert "plain HTTP on a non-loopback address" in n.log()
    finally:
        n.stop()


def test_the_token_never_crosses_the_wire_in_clear(tmp_path, pki):
    """HTTPS between the CLI and the node, the AIM handshake between the nodes: a tap on each
    link never sees the token; over plain HTTP the same tap does."""
    pair = Pair(tmp_path, src={"extra": tls_args(pki), "ca": pki["ca"].cert},
                dst={"extra": tls_args(pki), "ca": pki["ca"].cert})
    try:
        api_tap = Proxy(pair.src.proc.api.partition("://")[2], record=True)
        aim_tap = Proxy(pair.dst.proc.aim, record=True)
        url = f"https://{api_tap.address}"
        assert remote(pair.src.proc, "volume", "create", "v", "--size", "1MiB", ca=pki["ca"].cert, url=url).code == 0
        assert remote(pair.dst.proc, "volume", "create", "v-dr", "--size", "1MiB", ca=pki["ca"].cert).code == 0
        dst_token = tmp_path / "dst.token"
        dst_token.write_text(pair.dst.proc.token)
        dst_token.chmod(0o600)
        res = remote(pair.src.proc, "aim", "create", "v-aim", "--source", "v", "--to", f"{aim_tap.address}/v-dr",
                     "--to-token-file", str(dst_token), ca=pki["ca"].cert, url=url)
        assert res.code == 0, res.err
        pair.wait_state("v-aim", "replicating")
        assert remote(pair.src.proc, "volume", "write", "v", "--offset", "0", input=b"x" * 4096,
                      ca=pki["ca"].cert, url=url).code == 0
        deadline = time.monotonic() + 30
        while pair.src.api.replication.info("v-aim")["queued_entries"] and time.monotonic() < deadline:
            time.sleep(0.05)
        for token in (pair.src.proc.token, pair.dst.proc.token):
            assert token.encode() not in api_tap.seen and token.encode() not in aim_tap.seen
        assert len(api_tap.seen) > 2000 and len(aim_tap.seen) > 4096  # the taps did carry the sessions
        api_tap.close()
        aim_tap.close()
    finally:
        pair.stop()
    plain = start_node(str(tmp_path / "plain"))
    try:
        tap = Proxy(plain.api.removeprefix("http://"), record=True)
        assert remote(plain, "volume", "list", url=f"http://{tap.address}").code == 0
        assert plain.token.encode() in tap.seen  # the control: a tap sees a plain-HTTP token
        tap.close()
    finally:
        plain.stop()


def test_apply_and_run_over_https_run_with_an_operator_token(tmp_path, pki):
    """`apply` with the nodes' own (admin) tokens, `run` with operator tokens (least privilege),
    every node addressed by https:// and pinned by `api_tls_ca`; the audit trail says who did what."""
    import re
    import signal

    from .test_apply import points_site
    from .test_run import wait_for
    pair = Pair(tmp_path, src={"extra": tls_args(pki), "ca": pki["ca"].cert},
                dst={"extra": tls_args(pki), "ca": pki["ca"].cert})
    try:
        ops = {}
        for side, name in ((pair.src, "prod"), (pair.dst, "dr")):
            made = remote(side.proc, "node", "token", "create", "orchestrator", "--role", "operator", "--json",
                          ca=pki["ca"].cert)
            assert made.code == 0, made.err
            ops[name] = tmp_path / f"{name}-operator.token"
            ops[name].write_text(made.json()["token"] + "\n")
            ops[name].chmod(0o600)
        text = points_site(pair, 30)
        for name in ("prod", "dr"):
            text = re.sub(rf'(  {name}: \{{.*?)\}}\n', rf'\1, api_tls_ca: "{pki["ca"].cert}", '
                          rf'operator_token_file: "{ops[name]}"}}\n', text, count=1)
        assert text.count("api_tls_ca") == 2 and "https://" in text
        path = tmp_path / "site.yaml"
        path.write_text(text)
        res = aimsnap("apply", str(path))
        assert res.code == 0, res.err + res.out.decode()
        db = str(tmp_path / "o.db")
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(path), "--db", db],
                                stdout=open(tmp_path / "run.log", "w"), stderr=subprocess.STDOUT)
        try:
            def point():
                st = aimsnap("status", "--db", db, "--json")
                return st.code == 0 and st.json()["policies"] and st.json()["policies"][0]["recovery_point"]
            wait_for(point, 40)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, open(tmp_path / "run.log").read()
        # no secret anywhere an operator (or an attacker with read access) looks
        said = [open(tmp_path / "run.log").read(), pair.src.log(), pair.dst.log(),
                pair.src.api.metrics(), pair.dst.api.metrics()]
        for verb in (("history", "--json"), ("history", "--events", "--json"), ("status", "--json")):
            said.append(aimsnap(*verb, "--db", db).out.decode())
        assert aimsnap("report", "--db", db, "--html", str(tmp_path / "r.html")).code == 0
        said.append((tmp_path / "r.html").read_text())
        secrets = [pair.src.proc.token, pair.dst.proc.token, *(f.read_text().strip() for f in ops.values())]
        assert not [s for s in secrets for text in said if s in text]
        trail = remote(pair.src.proc, "node", "audit", "--json", ca=pki["ca"].cert).json()
        who = {(e["token"], e["method"], e["path"].split("/")[-1], e["status"]) for e in trail}
        assert ("node-token", "POST", "aim-sets", 201) in who  # apply
        assert ("orchestrator", "POST", "markers", 201) in who  # run, as operator
        assert not any(e["token"] == "orchestrator" and e["status"] == 403 for e in trail)
        # an operator token cannot apply (create volumes): said per resource, nothing created
        path.write_text(text.replace(f"token_file: {pair.src.proc.token_file}", f"token_file: {ops['prod']}")
                        .replace("size: 4MiB}", "size: 4MiB}, {node: prod, name: extra, size: 1MiB}", 1))
        res = aimsnap("apply", str(path))
        assert res.code != 0 and "needs admin" in res.out.decode() + res.err, res.out.decode() + res.err
    finally:
        pair.stop()


def test_the_status_page_over_https(tmp_path, pki):
    import ssl
    import urllib.error
    import urllib.request

    from orchestrator.statuspage import StatusPage
    from orchestrator.store import Store
    from engine.net.tls import load_server_tls
    page = StatusPage("127.0.0.1:0", Store(str(tmp_path / "o.db")), None, "page-token-0123456789",
                      tls=load_server_tls(pki["server"].cert, pki["server"].key, "status page", "http"))
    page.start()
    try:
        ctx = ssl.create_default_context(cafile=pki["ca"].cert)
        req = urllib.request.Request(f"https://{page.address}/api/status",
                                     headers={"Authorization": "Bearer page-token-0123456789"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            assert r.status == 200 and b'"policies"' in r.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to it: no answer
            urllib.request.urlopen(f"http://{page.address}/healthz", timeout=10)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:  # and it serves on
            assert r.status == 200
    finally:
        page.close()
