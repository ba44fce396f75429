"""An in-process AIM link: each connect() of a source node is a ``socket.socketpair()`` whose far
end the destination's AIM port handler serves on a thread; and a recorder for a sender's sleep."""

import socket
import threading

from engine.aim.receiver import Receiver


class Link:
    """Stands for the network: each connect() is a socketpair whose far end the receiver serves."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.opened: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.refuse: list[BaseException] = []  # raised by the next connects, in order

    def connect(self, host: str, port: int, timeout: float = 10.0, tls=None) -> socket.socket:
        if self.refuse:
            raise self.refuse.pop(0)
        near, far = socket.socketpair()
        self.opened.append(near)
        t = threading.Thread(target=self._serve, args=(far,), daemon=True)
        t.start()
        self.threads.append(t)
        return near

    def _serve(self, far: socket.socket) -> None:
        kept = False
        try:
            kept = self.receiver.serve(far, "socketpair")
        finally:
            if not kept:
                far.close()

    def cut(self) -> None:
        """Every open connection fails, as a broken link would."""
        for s in self.opened:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Recorder:
    """The supervisor's delay: records each wait and takes only a millisecond."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> float:
        self.waits.append(seconds)
        return 0.001
