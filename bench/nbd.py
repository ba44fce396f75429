"""The node's NBD server beside ``nbdkit file`` (a C NBD server from Debian), same load, same run;
plain, and (``--tls``, the default) over TLS too: the node with ``--nbd-tls require`` beside
``nbdkit --tls=require``, the same certificates (``orchestrator/demo/certs.py``).

* ``nbdcopy`` of 1 GiB into and out of a volume (4 connections), dirty-block tracking on (the
  volume has a complete-image relationship); throughput ratio node / nbdkit (target >= 0.8),
  plain and TLS (``nbds://...?tls-certificates=DIR``).
* ``fio`` (nbd engine) 4 KiB random reads and writes at iodepth 16; IOPS ratio (target >= 0.5).
  Over TLS: fio's nbd engine refuses ``?tls-certificates=`` in its ``--uri`` (libnbd allows no
  local file access from a URI unless asked to, and fio does not ask), so fio gets a plain
  ``nbds://`` URI and libnbd's default certificate directory, ``$HOME/.pki/libnbd``, which libnbd
  reads only for a non-root user (root's is ``/etc/pki/libnbd``, not ours to write): as root, fio
  runs as ``nobody`` (``setpriv``) with ``HOME`` set to a directory holding the CA. The server
  certificate is verified against the CA either way. If that cannot be done, the TLS fio rows
  are skipped, saying why.
* Beside each TLS row: what TLS costs, node TLS / node plain (and nbdkit's), as information.
* The nodes' peak RSS (VmHWM) over the run (target <= 256 MiB).

    python bench/nbd.py [--size 1GiB] [--repeat 3] [--fio-seconds 10] [--tls|--no-tls]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from common import emit, fio_iops, free_port, median, timed, vm_hwm_mib

from engine import parse_size  # noqa: E402
from orchestrator.demo.certs import make_ca, make_cert  # noqa: E402
from orchestrator.demo.localnode import start_node  # noqa: E402

NOBODY = 65534


def start_nbdkit(path: str, tls_dir: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    tls = ["--tls=require", f"--tls-certificates={tls_dir}"] if tls_dir else []
    proc = subprocess.Popen(["nbdkit", "--foreground", "--ipaddr", "127.0.0.1", "--port", str(port), *tls,
                             "--exportname", "v", "file", f"file={path}"], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"{'nbds' if tls_dir else 'nbd'}://127.0.0.1:{port}/v"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nbdkit did not start")


class TlsFio:
    """How fio's nbd engine reaches a TLS server here (see the module docstring), or why not."""

    def __init__(self, work: str, ca_cert: str) -> None:
        self.home = os.path.join(work, "fio-home")  # HOME/.pki/libnbd/ca-cert.pem
        os.makedirs(os.path.join(self.home, ".pki", "libnbd"))
        shutil.copy(ca_cert, os.path.join(self.home, ".pki", "libnbd", "ca-cert.pem"))
        self.prefix: list[str] = []
        self.skip: str | None = None
        self.note = ""
        self.uri_form: str | None = None  # "certs": fio takes ?tls-certificates=; "default-dir": $HOME/.pki/libnbd
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                self.skip = "running as root and no setpriv to run fio as a user whose $HOME/.pki/libnbd libnbd reads"
                return
            self.prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            for d in (work, self.home, os.path.join(self.home, ".pki"), os.path.join(self.home, ".pki", "libnbd")):
                os.chmod(d, 0o755)  # mkdtemp's 0700 would keep nobody out
            os.chmod(os.path.join(self.home, ".pki", "libnbd", "ca-cert.pem"), 0o644)
            self.note = " (fio as nobody)"

    def probe(self, uri: str, certs_uri: str) -> None:
        """Try fio with ``?tls-certificates=`` first (the plain way), then the fallback: a short
        run each; ``skip`` says why not if neither works."""
        if self.skip:
            return
        try:
            self.iops(certs_uri, "randread", 1, 1 << 20, plain_env=True)
            self.prefix, self.note = [], " (fio tls-certificates= uri)"  # fio learned it: use it as given
            self.uri_form = "certs"
            return
        except subprocess.CalledProcessError as e:
            first = _last_line(e.stderr)
        try:
            self.iops(uri, "randread", 1, 1 << 20)
            self.uri_form = "default-dir"
            print(f"fio over TLS: {certs_uri!r} refused ({first}); using nbds:// with the CA in "
                  f"$HOME/.pki/libnbd{self.note}", flush=True)
        except subprocess.CalledProcessError as e:
            self.skip = f"fio refused {certs_uri!r} ({first}) and plain nbds:// ({_last_line(e.stderr)})"

    def iops(self, uri: str, rw: str, seconds: int, size: int, plain_env: bool = False) -> float:
        env = os.environ if plain_env else {**os.environ, "HOME": self.home}
        prefix = [] if plain_env else self.prefix
        out = subprocess.run([*prefix, "fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
                              "--bs=4k", "--iodepth=16", f"--size={size}", "--time_based", f"--runtime={seconds}",
                              "--output-format=json"], capture_output=True, text=True, check=True, env=env,
                             cwd="/").stdout
        job = json.loads(out[out.index("{"):])["jobs"][0]
        if job.get("error"):
            raise subprocess.CalledProcessError(1, "fio", out, f"fio job error {job['error']}")
        return job["read" if "read" in rw else "write"]["iops"]


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"


def _volume(node, size: int) -> None:
    env = {**os.environ, **node.cli_env()}
    aimsnap = [os.path.join(os.path.dirname(sys.executable), "aimsnap")]  # not -m: bench/policies.py would shadow
    subprocess.run([*aimsnap, "volume", "create", "v", "--size", str(size)], env=env, check=True, capture_output=True)
    subprocess.run([*aimsnap, "snapshot", "create", "v-ci", "--source", "v", "--type", "complete-image"],
                   env=env, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fio-seconds", type=int, default=10)
    ap.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                    help="also the TLS rows: node --nbd-tls require beside nbdkit --tls=require (default: on)")
    args = ap.parse_args()
    size = parse_size(args.size)
    size_name = "1 GiB" if size == 1 << 30 else args.size
    work = tempfile.mkdtemp(prefix="aimsnap-bench-nbd-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    nodes: dict = {}
    kits: list[subprocess.Popen] = []
    try:
        src = os.path.join(work, "src.img")
        with open(src, "wb") as f:
            for _ in range(size // (4 << 20)):
                f.write(os.urandom(4 << 20))
        servers: dict[str, str] = {}  # name -> URI (nbdcopy's)
        nodes["aimsnap"] = start_node(os.path.join(work, "node"))
        servers["aimsnap"] = nodes["aimsnap"].nbd_uri("v")
        plain = os.path.join(work, "plain.img")
        with open(plain, "wb") as f:
            f.truncate(size)
        kit, servers["nbdkit"] = start_nbdkit(plain)
        kits.append(kit)
        fio_uris = dict(servers)
        tls_fio = None
        if args.tls:
            srv, cli = os.path.join(work, "certs-server"), os.path.join(work, "certs-client")
            ca = make_ca(srv)  # srv: ca-cert.pem, server-cert.pem, server-key.pem (nbdkit's layout)
            server = make_cert(srv, ca, "server", "localhost")  # SAN IP:127.0.0.1, DNS:localhost
            os.makedirs(cli)
            shutil.copy(ca.cert, os.path.join(cli, "ca-cert.pem"))
            node = nodes["aimsnap-tls"] = start_node(os.path.join(work, "node-tls"), extra=(
                "--nbd-tls", "require", "--nbd-tls-cert", server.cert, "--nbd-tls-key", server.key))
            servers["aimsnap-tls"] = f"nbds://{node.nbd}/v?tls-certificates={cli}"
            fio_uris["aimsnap-tls"] = f"nbds://{node.nbd}/v"
            plain_tls = os.path.join(work, "plain-tls.img")
            with open(plain_tls, "wb") as f:
                f.truncate(size)
            kit, kit_uri = start_nbdkit(plain_tls, srv)
            kits.append(kit)
            servers["nbdkit-tls"], fio_uris["nbdkit-tls"] = f"{kit_uri}?tls-certificates={cli}", kit_uri
            tls_fio = TlsFio(work, ca.cert)
            tls_fio.probe(fio_uris["nbdkit-tls"], servers["nbdkit-tls"])
            if tls_fio.uri_form == "certs":
                fio_uris["aimsnap-tls"], fio_uris["nbdkit-tls"] = servers["aimsnap-tls"], servers["nbdkit-tls"]
        for n in nodes.values():
            _volume(n, size)
        names = list(servers)
        out = os.path.join(work, "out.img")
        copies: dict[str, dict[str, float]] = {}  # direction -> server -> median seconds
        for direction in ("into", "out of"):
            times: dict[str, list[float]] = {name: [] for name in names}
            for i in range(args.repeat):
                for name in names[:: 1 if i % 2 == 0 else -1]:
                    uri = servers[name]
                    cmd = ["nbdcopy", "-C", "4", src, uri] if direction == "into" else ["nbdcopy", "-C", "4", uri, out]
                    times[name].append(timed(lambda: subprocess.run(cmd, check=True)))
            copies[direction] = {name: median(ts) for name, ts in times.items()}
        copy_rss = {name: vm_hwm_mib(n.proc.pid) for name, n in nodes.items()}
        fio_names = [n for n in names if not (n.endswith("-tls") and tls_fio and tls_fio.skip)]
        if tls_fio and tls_fio.skip:
            print(f"skipping the TLS fio rows: {tls_fio.skip}", flush=True)
        iops: dict[str, dict[str, float]] = {}
        for rw in ("randread", "randwrite"):
            got: dict[str, list[float]] = {name: [] for name in fio_names}
            for i in range(args.repeat):
                for name in fio_names[:: 1 if i % 2 == 0 else -1]:
                    if name.endswith("-tls"):
                        got[name].append(tls_fio.iops(fio_uris[name], rw, args.fio_seconds, size))
                    else:
                        got[name].append(fio_iops(fio_uris[name], rw, args.fio_seconds, size))
            iops[rw] = {name: median(v) for name, v in got.items()}
        rss = {name: vm_hwm_mib(n.proc.pid) for name, n in nodes.items()}
        for n in nodes.values():
            n.stop()
        rows, verdicts = [], []

        def row(load: str, tls: bool, a: str, k: str, ratio: float | None, target: float, cost: str) -> None:
            transport = ("TLS" + (tls_fio.note if load.startswith("fio") else "")) if tls else "plain"
            rows.append({"load": load, "transport": transport, "aimsnap": a, "nbdkit": k,
                         "ratio": ratio if ratio is not None else "skipped", "target": f">= {target}",
                         "TLS/plain (aimsnap, nbdkit)": cost})
            if ratio is not None:
                verdicts.append(f"{load} {'TLS' if tls else 'plain'} {ratio:.3f} ({'met' if ratio >= target else 'MISSED'})")

        for tls in (False, True) if args.tls else (False,):
            a, k = ("aimsnap-tls", "nbdkit-tls") if tls else ("aimsnap", "nbdkit")
            for direction, t in copies.items():
                cost = (f"{t['aimsnap'] / t[a]:.2f}, {t['nbdkit'] / t[k]:.2f}" if tls else "")
                row(f"nbdcopy {size_name} {direction} volume", tls, f"{size / t[a] / 2**20:.0f} MiB/s",
                    f"{size / t[k] / 2**20:.0f} MiB/s", t[k] / t[a], 0.8, cost)
            for rw, v in iops.items():
                load = f"fio 4KiB {rw} iodepth 16"
                if a not in v:
                    row(load, tls, "skipped", "skipped", None, 0.5, f"fio: {tls_fio.skip}")
                    continue
                cost = f"{v[a] / v['aimsnap']:.2f}, {v[k] / v['nbdkit']:.2f}" if tls else ""
                row(load, tls, f"{v[a]:.0f} IOPS", f"{v[k]:.0f} IOPS",
                    v[a] / v[k], 0.5, cost)
        emit("nbd", rows)
        emit("nbd-rss", [{"node": f"aimsnap node{' (TLS require)' if name.endswith('-tls') else ''}",
                          "peak_rss_MiB_after_copies": copy_rss[name], "peak_rss_MiB_after_fio": rss[name],
                          "target": "<= 256"} for name in nodes])
        print("targets: " + "; ".join(verdicts))
    finally:
        for kit in kits:
            kit.send_signal(signal.SIGTERM)
            kit.wait()
        for n in nodes.values():  # a failed run leaves no node behind
            if n.proc.poll() is None:
                n.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
