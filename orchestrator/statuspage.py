"""``aimsnap run --http HOST:PORT``: the live status page for an operator, and its data.

- ``/``: one self-contained page (``statuspage.html``: no CDN, no external resource) that
  fetches ``/api/status`` every 2 s and redraws: a banner (all OK / N problems) and counts; every
  policy with its state (ok, breached, failing), RPO against its objective, last run, next fire
  and newest recovery point; every AIM set with state, lag and queued bytes; open alerts; the
  last failures with their reasons. Problems sort first; ``?problems`` shows only them and
  ``?filter=TEXT`` only names containing TEXT (a wall screen of a site with hundreds of policies).
- ``/api/status`` (what ``status --json`` says, with the AIM sets), ``/metrics``, ``/healthz``.
Read-only. With a token, every request needs ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``
(the page passes its own on to the API)."""

from __future__ import annotations

import hmac
import json
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import registry
from .status import service_alive, status
from .store import Store

log = logging.getLogger("aimsnap.statuspage")

PAGE = (Path(__file__).parent / "statuspage.html").read_bytes()  # self-contained: no CDN, no other file


class StatusPage:
    def __init__(self, addr: str, store: Store, watchdog, token: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve HTTPS (each connection's handshake in its own thread, so a slow or
        plain-HTTP client holds up no other)."""
        host, _, port = addr.rpartition(":")
        page = self
        self.store, self.watchdog, self.token, self.clock = Store(store.path), watchdog, token, clock
        self.registry = registry(store, watchdog)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                try:
                    page.answer(self)
                except Exception as e:  # noqa: BLE001 - said to the browser and the log, the page serves on
                    log.exception("status page: %s failed", self.path)
                    _send(self, 500, "text/plain", f"internal error: {e}\n".encode())

            def log_message(self, *args) -> None:
                pass
        self.server = _Server((host or "127.0.0.1", int(port)), Handler)
        self.server.tls = tls
        self.address = f"{self.server.server_address[0]}:{self.server.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="status-page", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _allowed(self, h: BaseHTTPRequestHandler, query: dict) -> bool:
        if not self.token:
            return True
        given = h.headers.get("Authorization", "").removeprefix("Bearer ") or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query)
        if not self._allowed(h, query):
            return _send(h, 401, "text/plain", b"a bearer token is needed (Authorization header or ?token=)\n")
        now = self.clock()
        if url.path == "/":
            return _send(h, 200, "text/html; charset=utf-8", PAGE)
        if url.path == "/api/status":
            body = status(self.store, now, self.watchdog.last_seen() if self.watchdog else [])
            return _send(h, 200, "application/json", json.dumps(body, default=str).encode())
        if url.path == "/metrics":
            return _send(h, 200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
        if url.path == "/healthz":
            alive = service_alive(self.store, now)
            return _send(h, 200 if alive else 503, "text/plain", b"ok\n" if alive else b"no heartbeat\n")
        return _send(h, 404, "text/plain", b"not found\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if self.tls is not None:
            request.settimeout(30)  # a handshake that never completes does not hold its thread
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log.info("status page: TLS handshake with %s failed: %s", client_address[0], e)
                return
        super().finish_request(request, client_address)


def _send(h: BaseHTTPRequestHandler, code: int, ctype: str, body: bytes) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Cache-Control", "no-store")
    h.end_headers()
    h.wfile.write(body)
