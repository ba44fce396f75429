"""The destination side's record of each AIM set it receives: one row of ``aim_targets`` (how far
it is applied, its generation, whether it was promoted), the stream connected now, and the fencing
decision, taken at the handshake before any frame is applied.

A target's *generation* is the number of promotions the set has been through. A promotion here
(failover, or the destination's half of a switchover) bumps it; from then on a source that
connects with an older generation, or any source of a promoted target, is *fenced*: refused, in
an answer that proves this node knows the set's secret, so the source can trust it and stop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..errors import Conflict, NotFound
from ..net.listener import shut
from ..net.reactor import Reactor
from ..net.tls import leaf_certificate
from ..storage.bitmap import BlockBitmap, ChangeMap
from ..storage.fsutil import atomic_write, make_dir, write_new
from ..storage.names import iso, utcnow
from .barriers import GROUP_TIMEOUT, GroupBarriers

if TYPE_CHECKING:
    from ..storage.storage import Storage

SET_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CHANGED = "changed.bm"  # blocks written here since the promotion
DIVERGENT = "divergent.bm"  # blocks an old source wrote that its destination never applied (failback)
SECRET = "set.token"  # the secret the set was created with, kept when this node was its source
SOURCE_CERT = "source-ca.pem"  # the certificate the source's own AIM port serves (a reverse set pins it)


@dataclass
class Target:
    """One received AIM set (a row of ``aim_targets``)."""

    set_id: str
    set_name: str
    volume: str
    applied_seq: int
    consistent_from: int
    resyncing: bool
    generation: int = 1
    promoted: dict | None = None  # the promotion: its state (promoting | promoted), generation, when, why
    source: str | None = None  # the source volume's name at the source node
    source_addr: str | None = None  # HOST:AIMPORT of the source node, as it last announced itself
    applied_source_ns: int = 0  # the source's clock: everything written there before it is applied here

    @classmethod
    def from_row(cls, row: dict) -> Target:
        return cls(row["set_id"], row["set_name"], row["volume"], row["applied_seq"], row["consistent_from"],
                   bool(row["resyncing"]), row["generation"], json.loads(row["promoted"]) if row["promoted"] else None,
                   row["source"], row["source_addr"], row["applied_source_ns"])

    @property
    def state(self) -> str:
        return self.promoted["state"] if self.promoted else ("resyncing" if self.resyncing else "receiving")


@dataclass
class Stream:
    """The connection applying a target now; ``ended`` is set once nothing serves it any more."""

    conn: socket.socket
    applier: object | None = None  # the Applier, once the handshake is done: where it has got to
    ended: threading.Event = field(default_factory=threading.Event)


class Targets:
    def __init__(self, storage: Storage, reactor: Reactor, stream_timeout: float) -> None:
        self.storage, self.meta, self.reactor = storage, storage.meta, reactor
        self.stream_timeout = stream_timeout  # a source silent this long has gone (the applier ends the stream)
        self.lock = threading.Lock()  # a leaf lock: the stream map
        self.streams: dict[str, Stream] = {}
        self.changes: dict[str, ChangeMap] = {}  # set id -> its promoted volume's change map
        # where members' streams wait at a group marker; a wait sends no acknowledgement, so it gives up
        # well before the source's stream timeout would (the same setting at both sites)
        self.groups = GroupBarriers(storage.meta, reactor.call_later, min(GROUP_TIMEOUT, stream_timeout / 2))

    # -- records -----------------------------------------------------------------------------------------
    def get(self, set_id: str) -> Target | None:
        row = self.meta.one("SELECT * FROM aim_targets WHERE set_id=?", set_id)
        return Target.from_row(row) if row else None

    def named(self, name: str) -> Target:
        row = self.meta.one("SELECT * FROM aim_targets WHERE set_name=? ORDER BY created_at DESC", name)
        if not row:
            raise NotFound(f"AIM set {name!r} has no destination volume on this node")
        return Target.from_row(row)

    def all(self) -> list[Target]:
        return [Target.from_row(r) for r in self.meta.query("SELECT * FROM aim_targets ORDER BY set_name")]

    def dir(self, set_id: str) -> str:
        if not SET_ID_RE.match(set_id):
            raise Conflict(f"{set_id!r} is not an AIM set id")
        return self.storage.files.aim_target(set_id)

    def secret(self, set_id: str) -> str | None:
        """The set's own secret, if this node keeps one (it was the set's source once)."""
        if not SET_ID_RE.match(set_id):
            return None
        try:
            with open(os.path.join(self.dir(set_id), SECRET)) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def load(self) -> None:
        """At open: replicas are read-only to hosts; a promoted volume tracks its changes again."""
        for t in self.all():
            vol = self.storage.volumes.get(t.volume)
            if vol is None:
                continue
            if t.promoted:
                self.track(t)
            if not t.promoted or t.promoted["state"] != "promoted":
                vol.replica_of = t.set_name

    def claim(self, hello: dict) -> dict:
        """Probe or claim a volume for a new AIM set; {"error": ...} when it cannot be."""
        volume, set_id = str(hello.get("volume", "")), str(hello.get("set_id", ""))
        vol = self.storage.volumes.get(volume)
        if vol is None or vol.role != "volume":
            return {"error": f"destination volume {volume!r} does not exist on the destination node"}
        if hello.get("size") != vol.size:
            return {"error": f"destination volume {volume!r} is {vol.size} bytes, the source is {hello.get('size')}: "
                             "they must be the same size"}
        if not SET_ID_RE.match(set_id):
            return {"error": "the AIM set id is not 32 hex digits"}
        row = self.meta.one("SELECT set_id, set_name FROM aim_targets WHERE volume=?", volume)
        if row and row["set_id"] != set_id:
            return {"error": f"destination volume {volume!r} is already the destination of AIM set {row['set_name']!r}"}
        sources = ", ".join(f"{o.kind} {o.name}" for o in vol.observers if o.kind == "AIM set")
        if sources and not row:
            return {"error": f"destination volume {volume!r} is the source of {sources} here"}
        existing = self.get(set_id) if row else None
        if hello.get("op") == "claim" and not (existing and existing.promoted):  # a promoted one keeps its pin
            self.keep_source_cert(set_id, hello.get("source_cert"))
        if hello.get("op") == "claim" and not row:
            self.meta.execute(
                "INSERT INTO aim_targets (set_id, set_name, volume, source, generation, created_at) "
                "VALUES (?,?,?,?,?,?)", set_id, str(hello.get("set_name", "")), volume, str(hello.get("source", "")),
                int(hello.get("generation") or 1), iso(utcnow()))
            vol.replica_of = str(hello.get("set_name", ""))
        return {"size": vol.size}

    def announced(self, t: Target, host: str, aim_port: object) -> None:
        """Where the source's own AIM port is (what a failback connects to), as it says now."""
        if isinstance(aim_port, int) and 0 < aim_port < 65536:
            addr = f"[{host}]:{aim_port}" if ":" in host else f"{host}:{aim_port}"
            if addr != t.source_addr:
                self.meta.execute("UPDATE aim_targets SET source_addr=? WHERE set_id=?", addr, t.set_id)
                t.source_addr = addr

    def release(self, set_id: str, generation: int = 1) -> None:
        """The source deleted the set. A promoted target stays (a failback needs it; the operator
        deletes it here), and so does a target of a newer generation than the one releasing it."""
        t = self.get(set_id)
        if t and not t.promoted and generation >= t.generation:
            self.forget(t)

    def forget(self, t: Target) -> None:
        """An operator deletes the set here: its row, its files; the volume is a plain volume."""
        self.untrack(t)
        self.meta.execute("DELETE FROM aim_targets WHERE set_id=?", t.set_id)
        vol = self.storage.volumes.get(t.volume)
        if vol is not None and vol.replica_of == t.set_name:
            vol.replica_of = None
        shutil.rmtree(self.dir(t.set_id), ignore_errors=True)

    # -- fencing -----------------------------------------------------------------------------------------
    def refusal(self, t: Target | None, generation: int, promoted_here: dict | None) -> dict | None:
        """Why a stream of this ``generation`` must not be applied: a promoted target, a
        generation older than the target's, or the set's source is this node now (``promoted_here``).
        None: go on."""
        if promoted_here is not None:
            return promoted_here
        if t is None:
            return None
        if t.promoted:
            return t.promoted
        if generation < t.generation:
            return {"state": "promoted", "generation": t.generation, "promoted_at": None,
                    "reason": f"the source is of generation {generation}"}
        return None

    @staticmethod
    def fenced_message(info: dict) -> str:
        when = f" on {info['promoted_at']}" if info.get("promoted_at") else ""
        how = f" ({info['reason']})" if info.get("reason") else ""
        return f"fenced: the destination was promoted at generation {info['generation']}{when}{how}"

    # -- streams -------------------------------------------------------------------------------------------
    def attach(self, set_id: str, conn: socket.socket) -> Stream:
        """This connection streams the set now: a reconnect replaces a half-dead connection, and
        the old one's end is waited for, so that two appliers never write one volume."""
        with self.lock:
            old = self.streams.get(set_id)
            stream = self.streams[set_id] = Stream(conn)
        if old is not None:
            shut(old.conn)
            # one suspended at a group marker reads nothing: resumed, it sees its connection cut
            self.groups.cancel(set_id, "the member's stream reconnected before the group marker completed")
            old.ended.wait(30)
        return stream

    def detach(self, set_id: str, stream: Stream) -> None:
        with self.lock:
            if self.streams.get(set_id) is stream:
                del self.streams[set_id]
        stream.ended.set()

    def stop_stream(self, set_id: str, timeout: float = 30.0) -> object | None:
        """Cut the set's stream and wait until its applier has stopped (one waiting at a group
        barrier is released: the group point cannot be made without this member now); the
        applier, if there was one. The stream stays known until it has ended, so that a second
        call waits for the same end."""
        with self.lock:
            stream = self.streams.get(set_id)
        if stream is None:
            return None
        shut(stream.conn)
        self.groups.cancel(set_id, "a member of the group was failed over before the group marker completed")
        if not stream.ended.wait(timeout):
            raise Conflict(f"the AIM stream did not stop within {timeout:.0f}s: try again")
        return stream.applier

    def stop_all(self, timeout: float = 10.0) -> None:
        """Cut every stream and wait (``timeout`` in all) for their appliers to end."""
        with self.lock:
            streams = dict(self.streams)
        for set_id, s in streams.items():
            shut(s.conn)
            # one suspended at a group marker reads nothing: it must be resumed to see its end
            self.groups.cancel(set_id, "the destination node is stopping")
        deadline = self.reactor.monotonic() + timeout
        for s in streams.values():
            s.ended.wait(max(0.0, deadline - self.reactor.monotonic()))

    # -- change maps of promoted volumes ---------------------------------------------------------------
    def track(self, t: Target, create: bool = False) -> ChangeMap:
        """The promoted volume's change map, attached as a write observer (made empty if ``create``)."""
        if t.set_id in self.changes:
            return self.changes[t.set_id]
        vol = self.storage.volume(t.volume)
        path = os.path.join(self.dir(t.set_id), CHANGED)
        if create or not os.path.exists(path):
            make_dir(self.dir(t.set_id))
            bm = BlockBitmap.create(path, vol.nblocks)
        else:
            bm = BlockBitmap(path, vol.nblocks)
        change = self.changes[t.set_id] = ChangeMap(t.set_name, "promoted AIM destination", bm)
        with vol.lock:
            vol.observers.append(change)
        return change

    def untrack(self, t: Target) -> None:
        change = self.changes.pop(t.set_id, None)
        if change is None:
            return
        vol = self.storage.volumes.get(t.volume)
        if vol is not None:
            with vol.lock:
                vol.observers.remove(change)
        change.bitmap.close()

    def keep_source_cert(self, set_id: str, pem: object) -> None:
        """The source's AIM certificate, as it says at a claim or a switchover (authenticated by
        the handshake's MAC): what this node trusts when it replicates back."""
        leaf = leaf_certificate(pem) if isinstance(pem, str) else None
        path = os.path.join(self.dir(set_id), SOURCE_CERT)
        if leaf:
            make_dir(self.dir(set_id))
            atomic_write(path, leaf.encode())
        elif os.path.exists(path):  # the source serves no TLS now: no stale pin
            os.unlink(path)

    def source_cert(self, set_id: str) -> str | None:
        try:
            with open(os.path.join(self.dir(set_id), SOURCE_CERT)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def keep_secret(self, set_id: str, secret: str) -> None:
        make_dir(self.dir(set_id))
        path = os.path.join(self.dir(set_id), SECRET)
        if os.path.exists(path):
            os.unlink(path)
        write_new(path, secret.encode())

    def close(self) -> None:
        for t in [self.get(sid) for sid in list(self.changes)]:
            if t is not None:
                self.untrack(t)

    def points(self, t: Target, limit: int = 100) -> list[dict]:
        """The recovery points the set's markers made here, newest first: what a recovery plan
        chooses its (group) point from."""
        rows = self.meta.query("SELECT result FROM applied_markers WHERE set_id=?", t.set_id)
        results = [json.loads(r["result"]) for r in rows]
        applied = [r for r in results if r.get("state") == "applied" and r.get("point")]
        applied.sort(key=lambda r: (r.get("source_ns") or 0, r.get("id") or 0), reverse=True)
        return [{"id": r.get("id"), "group_marker": r.get("group_marker"), "snapshot": r.get("snapshot"),
                 "snapshot_set": r.get("snapshot_set"), "point": r["point"], "applied_at": r.get("applied_at"),
                 "source_time": iso_ns(int(r.get("source_ns") or 0)), "source_ns": int(r.get("source_ns") or 0)}
                for r in applied[:limit]]

    # -- reporting ------------------------------------------------------------------------------------
    def info(self, t: Target) -> dict:
        with self.lock:
            connected = t.set_id in self.streams
        vol = self.storage.volumes.get(t.volume)
        change = self.changes.get(t.set_id)
        return {"name": t.set_name, "role": "destination", "id": t.set_id,
                "state": t.state,
                "connected": connected, "source": t.source, "source_address": t.source_addr,
                "destination": t.volume, "applied_seq": t.applied_seq, "generation": t.generation,
                "applied_source_time": iso_ns(t.applied_source_ns), "promoted": t.promoted,
                "changed_blocks": change.bitmap.count() if change else 0,
                "writable": bool(vol and vol.host_writable)}


def iso_ns(ns: int) -> str | None:
    return iso(datetime.fromtimestamp(ns / 1e9, timezone.utc)) if ns else None
