"""Role changes of an AIM set: the two conversions every one is made of, and this node's half of
the requests its peer sends to drive them.

- A destination **becomes the source** of its set: the target row turns into a source record (same
  name and id, the promotion's generation) streaming back to the old source, and what must be
  copied first is only what differs: nothing after a switchover, the union of both sides' changes
  after a failback.
- A source **becomes the destination** of its set: the record turns into a target row, the
  volume read-only to hosts. The set's secret (its destination's token) is kept, so the reverse
  stream and later role changes authenticate with it.

Each conversion is one metadata transaction, with its files made before it; a request that finds
its conversion done answers as if it had just made it, so every step may be retried after a crash
or a cut link. :mod:`.failover` (unplanned; failback after it) and :mod:`.switchover` (planned)
drive them. One role change at a time on a node: ``Roles.lock``, before every other lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import ssl
import threading
import time
import zlib
from typing import TYPE_CHECKING

from ..access import audit
from ..errors import Conflict, EngineError
from ..storage.bitmap import count_bits, union
from ..storage.fsutil import atomic_write, make_dir, write_new
from ..storage.names import iso, point_stamp
from . import frames, wire
from .state import DEFAULT_JOURNAL_LIMIT, Record
from .targets import DIVERGENT, Target

if TYPE_CHECKING:
    from .aimset import AimSet
    from .replication import Replication

log = logging.getLogger("aimsnap.aim")
LOCK_WAIT = 20.0  # a peer's request waits this long for this node's own role change, then is refused
BITS_CHUNK = 8 << 20  # compressed bitmap bytes per frame of a failback's answer
DIVERGENT_INFO = "divergent.json"
# the 15-minute mode: reversing it would replicate into the snapshot volume, not the production volume
SNAPSHOT_SOURCE = ("AIM set {0!r} replicates complete-image snapshot {1!r}, not a volume: reversing it would write "
                   "into the snapshot, not into its production volume. Make an AIM set from the other side's "
                   "volume to a new volume there instead")


class Roles:
    def __init__(self, repl: Replication) -> None:
        self.repl = repl
        self.lock = threading.RLock()

    def secret(self, set_id: str) -> str:
        """What this node, as the destination of ``set_id``, authenticates to its peer with: the
        secret kept when it was the set's source before, else its own token (the set was made
        toward this node: its token is the secret)."""
        if self.repl.local is None:
            raise Conflict("a role change needs a serving node (aimsnap node serve): it talks to the peer")
        return self.repl.targets.secret(set_id) or self.repl.local[1]

    # -- the two conversions --------------------------------------------------------------------------
    def become_source(self, t: Target, host: str, port: int, dest_volume: str, *, extra: bytes | None = None,
                      journal_limit: int | None = None, tls_pem: str | None = None) -> AimSet:
        """This destination's target ``t`` becomes the source of the set, to ``host:port/dest_volume``.
        The blocks to send first: the promoted volume's change map, with ``extra`` (the other
        side's divergent blocks); none at all if neither exists. With ``tls_pem`` (the old
        source's AIM certificate) the reverse set replicates over TLS, pinned to it."""
        repl, storage = self.repl, self.repl.storage
        if repl.local is None:
            raise Conflict("a role change needs a serving node (aimsnap node serve): it talks to the peer")
        token = self.secret(t.set_id)
        vol = storage.volume(t.volume)
        d = storage.files.aim_set(t.set_name)
        with storage.lock:
            existing = repl.sets.get(t.set_name)
            if existing is not None:
                if existing.record.id == t.set_id:
                    return existing
                raise Conflict(f"an AIM set named {t.set_name!r} already replicates {existing.volume.name!r} here")
            if any(a.volume is vol for a in repl.sets.values()):
                raise Conflict(f"volume {vol.name!r} is already the source of an AIM set")
            shutil.rmtree(d, ignore_errors=True)
            make_dir(d)
            write_new(os.path.join(d, "dest.token"), token.encode())
            if tls_pem:
                write_new(os.path.join(d, "dest-ca.pem"), tls_pem.encode())
            record = Record(t.set_name, t.set_id, vol.name, host, port, dest_volume,
                            journal_limit or DEFAULT_JOURNAL_LIMIT, bool(tls_pem), iso(storage.clock()),
                            generation=t.generation)
            with vol.lock:  # no write lands between the change map's last bit and the journal's first entry
                change = repl.targets.changes.get(t.set_id)
                maps = [m for m in (change.bitmap.bits if change else None, extra) if m is not None]
                bits = union(*maps) if maps else bytearray((vol.nblocks + 7) // 8)
                atomic_write(os.path.join(d, "dirty.bm"), bytes(bits))
                # a failback resyncs (the old source is marked resyncing), even with nothing to send:
                # a resync of no block, not the full copy a destination resyncing on its own gets
                record.overflowed = extra is not None or count_bits(bits) > 0
                with repl.meta.transaction() as db:
                    record.insert_into(db)
                    db.execute("DELETE FROM aim_targets WHERE set_id=?", (t.set_id,))
                repl.targets.untrack(t)
                vol.replica_of = None
                aim = repl._open(record)
                vol.observers.append(aim.observer)
        shutil.rmtree(repl.targets.dir(t.set_id), ignore_errors=True)
        log.warning("aim %s: this node is the source now (generation %d): %s -> %s:%d/%s, %d block(s) to send",
                    t.set_name, t.generation, vol.name, host, port, dest_volume, count_bits(bits))
        if repl.serving:
            aim.start()
        return aim

    def become_destination(self, aim: AimSet, generation: int, source_volume: str, source_addr: str, *,
                           divergent_after: int | None = None) -> bytearray | None:
        """This source's set becomes the destination of ``source_volume`` at ``source_addr``, of
        ``generation``. With ``divergent_after`` (the sequence number the promoted destination had
        applied), the blocks written here that it never applied are kept (a file, for a retry)
        and returned: the journal after it, and the dirty bitmap."""
        repl, storage, rec, vol = self.repl, self.repl.storage, aim.record, aim.volume
        tdir = repl.targets.dir(rec.id)
        make_dir(tdir)
        repl.targets.keep_secret(rec.id, aim.token)
        pinned = os.path.join(storage.files.aim_set(aim.name), "dest-ca.pem")
        if rec.tls and os.path.exists(pinned):  # the new source's certificate: what replicating back trusts
            with open(pinned) as f:
                repl.targets.keep_source_cert(rec.id, f.read())  # a leaf already (see keep_source_cert)
        aim.stop()  # no more shipping (its thread joined, outside the locks)
        running = repl.verifications.pop(aim.name, None)
        if running is not None:
            running.cancel()  # its set is going: it must not read a closed journal
        bits = None
        with storage.lock, vol.lock:
            if divergent_after is not None:
                bits = self._divergent(aim, divergent_after)
                atomic_write(os.path.join(tdir, DIVERGENT), bytes(bits))
            vol.observers.remove(aim.observer)
            with repl.meta.transaction() as db:
                db.execute("DELETE FROM group_members WHERE aim_set=?", (aim.name,))
                db.execute("DELETE FROM groups WHERE name NOT IN (SELECT group_name FROM group_members)")
                db.execute("DELETE FROM aim_sets WHERE name=?", (aim.name,))
                db.execute("INSERT INTO aim_targets (set_id, set_name, volume, source, generation, resyncing, "
                           "source_addr, created_at) VALUES (?,?,?,?,?,?,?,?)",
                           (rec.id, aim.name, vol.name, source_volume, generation, int(bits is not None), source_addr,
                            iso(storage.clock())))
            vol.replica_of, vol.fence = aim.name, None
            del repl.sets[aim.name]
        repl.ledger.fail_outstanding(aim.name, "the AIM set changed direction before the marker reached the "
                                     "destination")
        aim.close()
        shutil.rmtree(storage.files.aim_set(aim.name), ignore_errors=True)
        log.warning("aim %s: this node is the destination now (generation %d), from %s/%s", aim.name, generation,
                    source_addr, source_volume)
        return bits

    @staticmethod
    def _divergent(aim: AimSet, applied: int) -> bytearray:
        """Blocks written here that a destination at ``applied`` does not have (caller holds the
        volume lock): the dirty bits, and every journal entry after ``applied``."""
        bs = aim.volume.block_size
        for frame, _raw in aim.journal.read_from(max(applied, 0) + 1):
            if frame.type in (frames.WRITE, frames.ZERO):
                aim.dirty.mark(frame.offset // bs, (frame.offset + max(frame.size, 1) - 1) // bs)
        return bytearray(aim.dirty.bits)

    # -- requests from the peer ---------------------------------------------------------------------
    def serve(self, op: str, conn: wire.Connection, hello: dict, hs: wire.Handshake, host: str) -> None:
        """A peer's request; refused with the reason (a one-line answer) whatever goes wrong here."""
        if not self.lock.acquire(timeout=LOCK_WAIT):
            return hs.refuse("another role change is in progress on this node: retry")
        try:
            try:
                if self.repl.local is None:
                    raise Conflict("this node serves no AIM port of its own: a role change needs `aimsnap node serve`")
                if op == "promote":
                    self._promote(hello, hs, host)
                else:
                    self._give_back(conn, hello, hs, host)
            except (EngineError, OSError) as e:  # the reason, to the peer and the log (the link may be gone)
                reason = str(e) if isinstance(e, EngineError) else f"{e.strerror or e} on this node"
                log.warning("aim %s: refused a %s request from %s: %s", hello.get("set_name"), op, host, reason)
                with contextlib.suppress(OSError):
                    hs.refuse(reason)
        finally:
            self.lock.release()
            self._audit(op, hello, hs, host)

    def _audit(self, op: str, hello: dict, hs: wire.Handshake, host: str) -> None:
        """A peer's role request is a state change like an API one: in the node's audit trail."""
        access = getattr(self.repl.storage, "access", None)
        if access is None:
            return
        answer = hs.answer or {}
        line = audit.entry(iso(self.repl.storage.clock()), "aim-peer", "peer", host, "AIM", op, f"aim.{op}",
                           "accepted" if answer.get("ok") else "refused",
                           {"name": hello.get("set_name"), "generation": hello.get("generation")},
                           None if answer.get("ok") else answer.get("error", "no answer"))
        with contextlib.suppress(OSError):
            access.log.record(line)

    def _promote(self, hello: dict, hs: wire.Handshake, host: str) -> None:
        """A switchover's destination half: everything up to the final marker is applied here, so
        this node becomes the source and the old source the destination, with nothing to copy."""
        repl, set_id = self.repl, str(hello.get("set_id", ""))
        generation, final = _int(hello.get("generation")), _int(hello.get("final_seq"))
        done = repl.by_id(set_id)
        if done is not None and done.record.generation == generation + 1:  # a retry: answered as before
            hs.accept(generation=done.record.generation, promoted_at=done.record.created_at)
            return
        t = repl.targets.get(set_id)
        if t is None:
            return hs.refuse("this AIM set has no destination volume here")
        if t.promoted:
            return hs.refuse(f"this destination was failed over (generation {t.generation}): fail back instead")
        if t.generation != generation:
            return hs.refuse(f"the destination is at generation {t.generation}, the source at {generation}")
        applier = repl.targets.stop_stream(set_id)
        repl.storage.volume(t.volume).flush()
        t = repl.targets.get(set_id)
        applied = max(t.applied_seq, getattr(applier, "applied", 0))
        if applied != final:
            return hs.refuse(f"the destination applied up to {applied}, not the final {final}: nothing changed")
        t.generation = generation + 1  # written with the new source record, in one transaction
        repl.targets.keep_source_cert(set_id, hello.get("source_cert"))
        aim = self.become_source(t, host, _int(hello.get("aim_port")), str(hello.get("volume", "")),
                                 journal_limit=_int(hello.get("journal_limit")) or None,
                                 tls_pem=repl.targets.source_cert(set_id))
        self._regroup(hello.get("group"))
        hs.accept(generation=aim.record.generation, promoted_at=aim.record.created_at)

    def _regroup(self, group: object) -> None:
        """A group's switchover: once every member is a source here, the group is made here too
        (its markers then place one write-order point across the reverse sets)."""
        if not isinstance(group, dict) or not isinstance(group.get("members"), list):
            return
        name, members = str(group.get("name", "")), [str(m) for m in group["members"]]
        if all(m in self.repl.sets for m in members):
            try:
                self.repl.create_group(name, members)
            except EngineError as e:  # exists already (a retry), or a name taken here: said, not fatal
                log.info("aim: group %s not made here: %s", name, e)

    def _give_back(self, conn: wire.Connection, hello: dict, hs: wire.Handshake, host: str) -> None:
        """A failback's old-source half: keep what this node wrote that the promoted destination
        never applied (as a point of a differential snapshot made for it), become the
        destination, and answer with those blocks, for the reverse set to overwrite."""
        repl, set_id = self.repl, str(hello.get("set_id", ""))
        generation, applied = _int(hello.get("generation")), _int(hello.get("promoted_seq"))
        source_addr = f"{host}:{_int(hello.get('aim_port'))}"
        aim = repl.by_id(set_id)
        if aim is None:
            t = repl.targets.get(set_id)
            if t is None or t.generation != generation:
                return hs.refuse("this node is not the AIM set's old source")
            bits, info = self._kept(t)  # a retry: this node converted already
        else:
            if aim.volume.role != "volume":
                return hs.refuse(SNAPSHOT_SOURCE.format(aim.name, aim.volume.name))
            if aim.record.tls and not isinstance(conn.sock, ssl.SSLSocket):
                return hs.refuse(f"AIM set {aim.name!r} replicated over TLS, and this failback came in plaintext: the "
                                 "reverse set would too. Serve this node's AIM port with --aim-tls-cert/--aim-tls-key "
                                 "and fail back with --tls-ca (its certificate or CA)")
            if aim.record.generation >= generation:
                return hs.refuse(f"this source is at generation {aim.record.generation}, not older than {generation}")
            info = self._keep_divergent(aim)
            make_dir(repl.targets.dir(set_id))  # what a retry answers with, kept before the conversion
            atomic_write(os.path.join(repl.targets.dir(set_id), DIVERGENT_INFO), json.dumps(info).encode())
            bits = self.become_destination(aim, generation, str(hello.get("volume", "")), source_addr,
                                           divergent_after=applied)
        packed = zlib.compress(bytes(bits), 6)
        hs.accept(**info, divergent_blocks=count_bits(bits), bitmap_bytes=len(bits), packed_bytes=len(packed))
        for pos in range(0, max(len(packed), 1), BITS_CHUNK):
            conn.send(frames.Frame(frames.RESYNC_BLOCK, 0, pos, time.time_ns(), packed[pos:pos + BITS_CHUNK]))

    def _keep_divergent(self, aim: AimSet) -> dict:
        """Fence host writes, then a point of ``VOLUME.divergent`` (a differential snapshot made
        for it): what the reverse resync overwrites stays readable there."""
        storage, vol = self.repl.storage, aim.volume
        with vol.lock:
            vol.fence = "a failback is making it the destination of its AIM set"
        snap = f"{vol.name}.divergent"[:64]
        if snap not in storage.snapshots:
            storage.create_snapshot(snap, vol.name, "differential")
        point = storage.enable_snapshot(snap, f"divergent.{point_stamp(storage.clock())}")["point"]
        return {"divergent_point": f"{snap}@{point}"}

    def _kept(self, t: Target) -> tuple[bytearray, dict]:
        tdir = self.repl.targets.dir(t.set_id)
        try:
            with open(os.path.join(tdir, DIVERGENT), "rb") as f:
                bits = bytearray(f.read())
            with open(os.path.join(tdir, DIVERGENT_INFO)) as f:
                return bits, json.load(f)
        except (OSError, ValueError):
            raise Conflict("this node converted already but lost what diverged: fail back again after "
                           "`aim delete` of the set here") from None


def receive_bits(conn: wire.Connection, answer: dict) -> bytearray:
    """The old source's divergent blocks, after its answer to a failback."""
    packed, want = bytearray(), int(answer.get("packed_bytes", 0))
    while True:  # one frame at least (zlib's output is never empty)
        f = conn.recv()
        if f.type != frames.RESYNC_BLOCK or f.offset != len(packed):
            raise wire.WireError("a failback answer whose bitmap does not add up")
        packed += f.payload
        if len(packed) >= want:
            break
    try:
        bits = bytearray(zlib.decompress(bytes(packed)))
    except zlib.error:
        raise wire.WireError("a failback answer whose bitmap does not decompress") from None
    if len(bits) != int(answer.get("bitmap_bytes", -1)):
        raise wire.WireError("a failback answer whose bitmap is not of the volume's size")
    return bits


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
