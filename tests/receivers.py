"""Real alert receivers on loopback for the tests: an HTTP server keeping every webhook POST, and
an SMTP server (aiosmtpd) keeping every message."""

import contextlib
import socket
from collections.abc import Iterator

from orchestrator.demo.hook import Hook  # noqa: F401 - the tests' webhook receiver too


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
