"""Real alert receivers on loopback for the tests: an HTTP server keeping every webhook POST, and
an SMTP server (aiosmtpd) keeping every message."""

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hook:
    """A webhook receiver: every POST's path, headers and JSON body, in ``got``."""

    def __init__(self) -> None:
        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, status: str | None = None, rule: str | None = None) -> list[dict]:
        return [g["body"] for g in self.got if isinstance(g["body"], dict)
                and (status is None or g["body"]["status"] == status) and (rule is None or g["body"]["rule"] == rule)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Collect:
    def __init__(self) -> None:
        self.mail: list = []
        self.address = ""

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.mail.append(envelope)
        return "250 OK"


@contextlib.contextmanager
def smtp_server() -> Iterator[_Collect]:
    """An SMTP server on loopback; ``.mail`` holds what it received, ``.address`` is HOST:PORT."""
    from aiosmtpd.controller import Controller
    handler = _Collect()
    with socket.socket() as free:  # aiosmtpd checks it serves by connecting to its port: it needs the number
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    c = Controller(handler, hostname="127.0.0.1", port=port)
    c.start()
    handler.address = f"127.0.0.1:{port}"
    try:
        yield handler
    finally:
        c.stop()
