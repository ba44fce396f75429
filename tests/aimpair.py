"""Two real nodes on loopback (source and destination) with an AIM set between them, driven
through the control API client the CLI uses."""

import signal
import time
from collections.abc import Callable

from engine.client.remote import RemoteNode

from orchestrator.demo.localnode import NodeProc, start_node


class Side:
    """One node. ``boot`` gives the command prefix of each start (e.g. a fresh boot id), and
    ``log_path`` where its output goes (default beside the root)."""

    def __init__(self, root: str, *, boot: Callable[[], tuple[str, ...]] = tuple, log_path: str | None = None,
                 extra: tuple[str, ...] = (), ca: str | None = None) -> None:
        """``extra``: more ``node serve`` options (TLS); ``ca``: what its https:// API must present."""
        self.root, self.boot, self.log_path, self.extra, self.ca = root, boot, log_path, extra, ca
        self.ports: dict = {}
        self.start()
        self.ports = {"api": self.proc.api.partition("://")[2], "nbd": self.proc.nbd, "aim": self.proc.aim}

    def start(self) -> None:
        self.proc: NodeProc = start_node(self.root, ports=self.ports, prefix=self.boot(), log_path=self.log_path,
                                         extra=self.extra)
        self.api = RemoteNode(self.proc.api, self.proc.token, timeout=120, ca=self.ca)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.api.close()
        self.proc.stop(sig)

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.kill(sig)
        self.start()

    def stop(self) -> int:
        self.api.close()
        return self.proc.stop(signal.SIGTERM)

    def log(self) -> str:
        return self.proc.log()


class Pair:
    def __init__(self, tmp_path, dst_root: str | None = None, src_root: str | None = None, *,
                 src: dict | None = None, dst: dict | None = None) -> None:
        """``src`` and ``dst``: keyword arguments of each :class:`Side`."""
        self.src = Side(src_root or str(tmp_path / "src"), **(src or {}))
        self.dst = Side(dst_root or str(tmp_path / "dst"), **(dst or {}))

    def stop(self) -> None:
        """Stop both (the second even when the first fails), then say how each ended."""
        codes = []
        for side in (self.src, self.dst):
            try:
                codes.append(side.stop())
            except Exception as e:  # noqa: BLE001 - a timeout: reported below, the other still stopped
                side.proc.proc.kill()
                codes.append(repr(e))
        assert codes[0] == 0, self.src.log()
        assert codes[1] == 0, self.dst.log()

    def replicate(self, volume: str, size: int, *, dest_snapshots=("pit",), journal_limit="1GiB",
                  to: str | None = None, source_exists: bool = False) -> str:
        """Create VOLUME on the source, VOLUME-dr (with differential VOLUME-dr-pit) at the
        destination, and the AIM set VOLUME-aim between them; wait until it replicates."""
        if not source_exists:
            self.src.api.create_volume(volume, size)
        self.dst.api.create_volume(f"{volume}-dr", size)
        for kind in dest_snapshots:
            self.dst.api.create_snapshot(f"{volume}-dr-{kind}", f"{volume}-dr",
                                         "differential" if kind == "pit" else "complete-image")
        self.src.api.replication.create(f"{volume}-aim", volume, f"{to or self.dst.proc.aim}/{volume}-dr",
                                        self.dst.proc.token, journal_limit)
        self.wait_state(f"{volume}-aim", "replicating")
        return f"{volume}-aim"

    def wait_state(self, aim: str, state: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.src.api.replication.info(aim)
            if info["state"] == state or time.monotonic() > deadline:
                assert info["state"] == state, (info, self.src.log()[-2000:])
                return info
            time.sleep(0.05)

    def wait_caught_up(self, aim: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.src.api.replication.info(aim)
            if info["state"] == "replicating" and info["queued_entries"] == 0 and info["acked_seq"] == info["last_seq"]:
                return info
            assert time.monotonic() < deadline, (info, self.src.log()[-3000:], self.dst.log()[-3000:])
            time.sleep(0.05)

    def marker(self, aim: str, snapshot: str, label: str | None = None, wait: float = 60) -> dict:
        m = self.src.api.replication.issue_marker(aim, snapshot, label)
        return self.src.api.replication.wait(m["id"], wait) if wait else m


def read_all(node: RemoteNode, volume: str, size: int) -> bytes:
    out = bytearray()
    for off in range(0, size, 16 << 20):
        out += node.read(volume, off, min(16 << 20, size - off))
    return bytes(out)


def read_point(node: RemoteNode, snapshot: str, point: str | None, size: int) -> bytes:
    out = bytearray()
    for off in range(0, size, 16 << 20):
        out += node.read_snapshot(snapshot, point, off, min(16 << 20, size - off))
    return bytes(out)
