"""``aimsnap node serve``: one asyncio process serving the control API, NBD and the AIM port.

Addresses with port 0 get a free port; the chosen addresses are printed and written to
``ROOT/node.json``. SIGTERM or SIGINT: stop accepting, close connections, flush every volume,
close the node cleanly, exit 0.
"""

import asyncio
import ipaddress
import json
import logging
import os
import resource
import secrets
import signal
import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..aim.receiver import Receiver
from ..aim.sender import STREAM_TIMEOUT
from ..errors import InvalidInput
from ..net.secretfile import read_secret
from ..net.tls import leaf_certificate, load_server_tls
from ..node import Node
from ..storage.fsutil import atomic_write, make_dir, write_new
from .api import make_app
from .metrics import NodeMetrics
from .nbd import NbdServer
from .nbdtls import NbdTls

log = logging.getLogger("aimsnap.node")


@dataclass
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str) -> "Listen":
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise InvalidInput(f"invalid --{what} address {text!r}: write HOST:PORT, e.g. 127.0.0.1:7410")
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            return socket.create_server((self.host, self.port), family=family, reuse_port=False, backlog=1024)
        except OSError as e:
            raise InvalidInput(f"cannot listen on {self.host}:{self.port}: {e.strerror}") from None


def load_or_create_token(path: str) -> tuple[str, bool]:
    """The node's API token; created (random, mode 0600) if the file is absent."""
    if os.path.exists(path):
        token = read_secret(path, "token file").strip()
        if len(token) < 16:
            raise InvalidInput(f"token file {path} holds no usable token (at least 16 characters)")
        return token, False
    token = secrets.token_urlsafe(32)
    write_new(path, f"{token}\n".encode())  # durable before anyone is given it
    return token, True


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(root: str, api: Listen, nbd: Listen, aim: Listen, token_file: str | None,
                aim_tls: tuple[ssl.SSLContext, str] | None = None, api_tls: ssl.SSLContext | None = None,
                nbd_tls: NbdTls | None = None, nbd_max_connections: int = 64,
                aim_stream_timeout: float = STREAM_TIMEOUT) -> None:
    """``aim_tls``: the AIM port's TLS context and the PEM certificate it serves."""
    make_dir(root)
    token_file = token_file or os.path.join(root, "api.token")
    token, created = load_or_create_token(token_file)
    sockets = {"api": api.bind(), "nbd": nbd.bind(), "aim": aim.bind()}
    node = Node(root, stream_timeout=aim_stream_timeout)
    nbd_server = NbdServer(node, max_connections=nbd_max_connections, tls=nbd_tls)
    receiver = Receiver(node, token, *(aim_tls or (None, None)))
    metrics = NodeMetrics(node, receiver)
    runner = web.AppRunner(make_app(node, token, metrics.render), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sockets["api"], ssl_context=api_tls).start()
    nbd_server.start(sockets["nbd"])
    receiver.start(sockets["aim"])
    node.replication.start()

    addresses = {"api": f"{'https' if api_tls else 'http'}://{_address(sockets['api'])}", "nbd": _address(sockets["nbd"]),
                 "aim": _address(sockets["aim"]), "pid": os.getpid(), "token_file": os.path.abspath(token_file)}
    atomic_write(os.path.join(root, "node.json"), json.dumps(addresses, indent=2).encode())
    if created:
        print(f"created token file {os.path.abspath(token_file)} (mode 0600)", flush=True)
    nbd_mode = f" (TLS {nbd_tls.mode})" if nbd_tls else ""
    print(f"aimsnap node serving {node.root}: api {addresses['api']}  nbd {addresses['nbd']}{nbd_mode}  "
          f"aim {addresses['aim']}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # blocking engine calls (long-polls wait in the event loop, see api.Changes): a bound, not a thread per caller
    loop.set_default_executor(ThreadPoolExecutor(max_workers=16, thread_name_prefix="api"))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("stopping: closing listeners and connections, flushing volumes")
    nbd_server.stop()
    receiver.stop()
    await runner.cleanup()
    await asyncio.to_thread(node.close)
    print("aimsnap node stopped cleanly", flush=True)


def _raise_open_files_limit() -> None:
    """A node holds a descriptor per volume, journal segment, bitmap, open point and connection:
    thousands at a real site. Take the hard limit (what the administrator allows) as the soft one,
    as servers do; said in the log if it stays low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as e:  # beyond the kernel's nr_open
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, want, e)
    if hard < 16384:
        log.warning("the open files limit is %d: a node with thousands of volumes, points or AIM sets needs more "
                    "(raise LimitNOFILE / ulimit -Hn)", hard)


def run(root: str, api: str, nbd: str, aim: str, token_file: str | None,
        aim_tls_cert: str | None = None, aim_tls_key: str | None = None, api_tls_cert: str | None = None,
        api_tls_key: str | None = None, insecure_http: bool = False, nbd_tls: NbdTls | None = None,
        nbd_max_connections: int = 64, aim_stream_timeout: float = STREAM_TIMEOUT) -> int:
    """Serve until SIGTERM; ``nbd_tls`` is the NBD port's TLS policy (:func:`.nbdtls.configure`)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _raise_open_files_limit()
    listens = (Listen.parse(api, "api"), Listen.parse(nbd, "nbd"), Listen.parse(aim, "aim"))
    aim_ctx = load_server_tls(aim_tls_cert, aim_tls_key, "AIM port", "aim")
    api_ctx = load_server_tls(api_tls_cert, api_tls_key, "control API", "api")
    if api_ctx is None and not listens[0].loopback:
        if (aim_ctx or nbd_tls) and not insecure_http:  # TLS is wanted here, but not for the token
            raise InvalidInput(f"the control API on {api} (not loopback) would be plain HTTP while "
                               f"{'the AIM port' if aim_ctx else 'NBD'} has TLS: its bearer token would cross the "
                               "network in clear text. Give --api-tls-cert and --api-tls-key, or --insecure-http "
                               "to accept that")
        log.warning("the control API on %s is plain HTTP on a non-loopback address: its bearer token crosses the "
                    "network in clear text (serve it with --api-tls-cert/--api-tls-key)", api)
    if nbd_tls is None and not listens[1].loopback:
        log.warning("NBD on %s is plain and unauthenticated on a non-loopback address: whoever reaches it reads and "
                    "writes the volumes (serve it with --nbd-tls require)", nbd)
    aim_cert = leaf_certificate(Path(aim_tls_cert).read_text()) if aim_ctx and aim_tls_cert else None
    asyncio.run(serve(root, *listens, token_file, (aim_ctx, aim_cert) if aim_ctx else None, api_ctx, nbd_tls,
                      nbd_max_connections, aim_stream_timeout))
    return 0
