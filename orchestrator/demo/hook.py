"""A webhook receiver on loopback that keeps every POST: the demo's alert receiver (what an
operator's chat or paging bridge would get), and the tests'."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hook:
    """Every POST's path, ``Authorization`` header and JSON body, in ``got`` (oldest first)."""

    def __init__(self) -> None:
        got: list[dict] = []
        self.got = got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = body.decode(errors="replace")
                got.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": parsed})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, name="hook", daemon=True).start()

    def bodies(self, status: str | None = None, rule: str | None = None) -> list[dict]:
        """The aimsnap-format bodies received, optionally only those of one status and rule."""
        return [g["body"] for g in self.got if isinstance(g["body"], dict)
                and (status is None or g["body"].get("status") == status)
                and (rule is None or g["body"].get("rule") == rule)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
