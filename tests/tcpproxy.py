"""A TCP proxy on loopback that can drop every connection or corrupt bytes in flight, to test
what the AIM stream does on a bad network, and record every byte it carries (what a wiretap on
the link would see)."""

import random
import socket
import threading


class Proxy:
    def __init__(self, target: str, seed: int = 0, record: bool = False) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.corrupt_next = 0  # corrupt this many upcoming source->destination chunks
        self.corrupted = self.dropped = 0
        self.closed = False
        self.record, self.seen = record, bytearray()  # with record: every byte carried, both ways
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                continue
            with self.lock:
                self.conns.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, forward: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if forward and self.corrupt_next and len(data) > 64:
                    with self.lock:
                        if self.corrupt_next:
                            self.corrupt_next -= 1
                            self.corrupted += 1
                            buf = bytearray(data)
                            buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)
                            data = bytes(buf)
                if self.record:
                    with self.lock:
                        self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self.lock:
                self.conns.discard(src)
                self.conns.discard(dst)

    def corrupt(self) -> None:
        """Flip one bit in the next source->destination chunk (under the lock the pumps take)."""
        with self.lock:
            self.corrupt_next += 1

    def drop(self) -> None:
        """Cut every connection (as a network failure would)."""
        with self.lock:
            conns = list(self.conns)
            self.dropped += 1
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.drop()
