"""Failover and failback, run at the destination.

**Failover** (unplanned; the source may be gone) promotes the destination of one set: it fences
the set (from this instant a stream of it is refused: the promotion is durable before the stream
is cut), optionally rolls the volume back to a point (application-consistent; the blocks changed
since it are copied back), starts a change map of the blocks written here, and makes the volume
writable. O(1) in the volume's size; a rollback costs what changed since the point.

**Failback** (the old source is back) makes this node the set's source, streaming to the old
source: it asks the old source for the blocks it wrote that were never applied here (and the old
source keeps them as a ``divergent.*`` point), and sends only the union of those and of the change
map. Both are idempotent: run again after a crash, they find what is done and go on.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from typing import TYPE_CHECKING

from ..errors import Conflict, EngineError, InvalidInput, NotFound
from ..storage.bitmap import count_bits
from ..storage.names import iso
from ..storage.snapshots import Differential
from ..net.tls import client_tls, plaintext_peer
from . import wire
from .roles import receive_bits
from .wire import parse_address
from .targets import Target, iso_ns

if TYPE_CHECKING:
    from .replication import Replication

log = logging.getLogger("aimsnap.aim")


def failover(repl: Replication, name: str, to_point: str | None = None, latest_point: bool = False,
             force: bool = False) -> dict:
    started = time.monotonic()
    if to_point and latest_point:
        raise InvalidInput("give --to-point or --latest-point, not both")
    with repl.roles.lock:
        t = repl.targets.named(name)
        if t.promoted and t.promoted["state"] == "promoted":
            return {**t.promoted, "aim_set": name, "already": True}
        storage, vol = repl.storage, repl.storage.volume(t.volume)
        fresh = t.promoted is None  # else a failover cut short by a crash: its change map goes on
        origin = latest(repl, t) if latest_point else to_point
        if not fresh:  # the same point as the first run: a rollback half done is finished, not mixed
            first = t.promoted.get("point")
            if (to_point or latest_point) and origin != first:
                raise Conflict(f"a failover of {name!r} to {first or 'the live volume'} was cut short: run it again "
                               "as it was (the point is kept), not to another point")
            origin = first
        if origin:
            storage._origin(vol, origin)  # checked before anything changes
        if t.resyncing and not origin and not force:
            raise Conflict(f"the destination of {name!r} is resynchronising: its volume is not consistent. Fail over "
                           "to a point (--to-point or --latest-point), or with --force to take it as it is")
        generation = t.generation + (1 if fresh else 0)
        promoted = {"state": "promoting", "generation": generation, "promoted_at": iso(storage.clock()),
                    "reason": "failover", "point": origin}
        _save(repl, t, promoted, generation)  # durable: from here every stream of the set is refused
        applier = repl.targets.stop_stream(t.set_id)
        vol.flush()  # what the stopped stream applied is durable: the recovery point is exact
        t = repl.targets.get(t.set_id)
        applied = max(t.applied_seq, getattr(applier, "applied", 0))
        source_ns = max(t.applied_source_ns, getattr(applier, "source_ns", 0))
        repl.meta.execute("UPDATE aim_targets SET applied_seq=?, applied_source_ns=? WHERE set_id=?",
                          applied, source_ns, t.set_id)
        repl.targets.track(t, create=fresh)
        rolled = storage.roll_back(vol, origin) if origin else None  # through the change map, like any write
        point_ns = _point_source_ns(repl, t, origin) if origin else source_ns
        now_ns = int(storage.clock().timestamp() * 1e9)
        promoted = {**promoted, "state": "promoted", "applied_seq": applied, "applied_source_time": iso_ns(source_ns),
                    "point": origin, "point_source_time": iso_ns(point_ns) if point_ns else None,
                    "rpo_seconds": round((now_ns - point_ns) / 1e9, 3) if point_ns else None,
                    "rollback_bytes": rolled["bytes"] if rolled else 0,
                    "seconds": round(time.monotonic() - started, 3)}
        _save(repl, t, promoted, generation)
        vol.replica_of = None
    log.warning("aim %s: failed over: %s is writable (generation %d, applied up to %d, point %s)", name, vol.name,
                generation, applied, origin or "live")
    return {**promoted, "aim_set": name, "volume": vol.name}


def _save(repl: Replication, t: Target, promoted: dict, generation: int) -> None:
    repl.meta.execute("UPDATE aim_targets SET promoted=?, generation=? WHERE set_id=?", json.dumps(promoted),
                      generation, t.set_id)


def latest(repl: Replication, t: Target) -> str:
    """The point the set's last applied marker made (not merely the snapshot's newest point: a
    rollback's own pre-restore point, or one made by hand, is not a marker's)."""
    named = [p for p in repl.targets.points(t, 10000) if p["snapshot"]]
    if not named:
        raise Conflict(f"no marker of {t.set_name!r} was applied here with a snapshot named: fail over with "
                       "--to-point SNAPSHOT@POINT, or to the live volume")
    p = named[0]
    rel = repl.storage.snapshots.get(p["snapshot"])
    if not isinstance(rel, Differential) or rel.find(p["point"]) < 0:
        raise NotFound(f"the last marker's point {p['snapshot']}@{p['point']} is gone (deleted, or pruned): fail over "
                       "with --to-point SNAPSHOT@POINT")
    return f"{p['snapshot']}@{p['point']}"


def _point_source_ns(repl: Replication, t: Target, origin: str) -> int:
    """The source's clock at the marker that made ``origin`` (0 if no marker did)."""
    _snap, _, point = origin.partition("@")
    for p in repl.targets.points(t, 10000):
        if p["point"] == point:
            return p["source_ns"]
    return 0


def failback(repl: Replication, name: str, source: str | None = None, tls_ca: str | None = None) -> dict:
    """This node becomes the source of ``name`` again, toward its old source, sending only what
    differs; over TLS when the old source's AIM certificate is known (``tls_ca``, PEM text, else
    the one it gave when the set was made), pinned to it."""
    started = time.monotonic()
    with repl.roles.lock:
        done = repl.sets.get(name)
        if done is not None and not _has_target(repl, name):
            return {**repl.info(name), "aim_set": name, "already": True}
        t = repl.targets.named(name)
        if not t.promoted or t.promoted["state"] != "promoted":
            raise Conflict(f"AIM set {name!r} was not failed over here: fail over first (aim failover {name})")
        token = repl.roles.secret(t.set_id)
        addr = source or t.source_addr
        if not addr:
            raise InvalidInput("the old source's AIM address is not known here: give --source HOST:AIMPORT")
        host, port = parse_address(addr)
        own_port = repl.local[0] if repl.local else 0
        change = repl.targets.changes.get(t.set_id)
        here = change.bitmap.count() if change else 0
        pem = tls_ca or repl.targets.source_cert(t.set_id)
        try:
            tls = client_tls(pem=pem) if pem else None
        except ssl.SSLError as e:
            raise InvalidInput(f"the old source's TLS certificate is not usable: {e}") from None
        try:
            with repl.connect(host, port, tls=tls) as sock:
                sock.settimeout(600)
                conn = wire.Connection(sock)
                answer = wire.client_handshake(sock, token, {
                    "op": "failback", "set_id": t.set_id, "set_name": name, "generation": t.generation,
                    "promoted_seq": t.promoted.get("applied_seq", t.applied_seq), "volume": t.volume,
                    "aim_port": own_port})
                bits = receive_bits(conn, answer)
        except wire.WireError as e:
            raise Conflict(f"the old source {host}:{port} refused the failback: {e}") from None
        except ssl.SSLCertVerificationError as e:
            raise Conflict(f"the old source's AIM port {host}:{port} presented a certificate that is not the one "
                           f"trusted ({e.verify_message}): give its certificate or CA with --tls-ca") from None
        except ssl.SSLError as e:
            raise EngineError(f"TLS to the old source's AIM port {host}:{port} failed: {e.reason or e}"
                              + (" (it serves no TLS: fail back with --tls-ca only to a TLS port)"
                                 if plaintext_peer(e) else "")) from None
        except OSError as e:
            raise EngineError(f"the old source's AIM port {host}:{port} is unreachable: {e.strerror or e}") from None
        vol = repl.storage.volume(t.volume)
        if len(bits) != (vol.nblocks + 7) // 8:
            raise Conflict("the old source's volume is not of this volume's size")
        aim = repl.roles.become_source(t, host, port, t.source or name, extra=bits, tls_pem=pem)
    result = {"aim_set": name, "volume": vol.name, "to": f"{host}:{port}/{t.source}",
              "generation": aim.record.generation, "divergent_point": answer.get("divergent_point"),
              "blocks_changed_here": here, "blocks_changed_at_source": count_bits(bits),
              "blocks_to_send": aim.dirty.count(), "block_size": vol.block_size,
              "seconds": round(time.monotonic() - started, 3)}
    log.warning("aim %s: failing back to %s: %d block(s) to send", name, result["to"], result["blocks_to_send"])
    return result


def _has_target(repl: Replication, name: str) -> bool:
    try:
        repl.targets.named(name)
        return True
    except NotFound:
        return False
