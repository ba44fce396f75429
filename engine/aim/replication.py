"""A node's AIM sets and groups at the source: creating, loading, pausing and deleting them, and
placing markers (one set, or one write-order point across a group's members).

Each set is an :class:`~.aimset.AimSet`; markers are kept by :class:`~.markers.Markers`. What
this needs of the node's storage is :class:`~engine.storage.storage.Storage`; the destination
side (the AIM port) is :mod:`.receiver`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable

from ..errors import AlreadyExists, Conflict, EngineError, InvalidInput, NotFound
from ..net import tls as tlsctx
from ..net.reactor import Reactor
from ..storage.bitmap import BlockBitmap
from ..storage.fsutil import data_extents, make_dir, write_new
from ..storage.names import check_name, iso
from ..storage.storage import Storage
from ..storage.units import parse_size
from ..storage.volume import Volume, barrier
from . import failover, switchover, wire
from .aimset import AimSet
from .markers import Markers
from .roles import Roles
from .sender import STREAM_TIMEOUT
from .state import DEFAULT_JOURNAL_LIMIT, Record
from .targets import Targets
from .verify import Verification
from .wire import WireError

log = logging.getLogger("aimsnap.aim")
class Replication:
    """Every AIM set, group and marker of a node (source side)."""

    def __init__(self, storage: Storage, *, connect: wire.Connector = wire.connect,
                 delay: Callable[[float], float] | None = None, stream_timeout: float = STREAM_TIMEOUT) -> None:
        """``stream_timeout``: the peer's silence that ends a stream, at either end."""
        self.storage, self.meta = storage, storage.meta
        self.connect, self.delay, self.stream_timeout = connect, delay, stream_timeout
        self.reactor = Reactor("aim")  # every set's stream, sent or received, runs in turns on it
        self.sets: dict[str, AimSet] = {}  # guarded by the storage lock, like _creating
        self._creating: dict[str, str] = {}  # AIM sets being created (their claim in flight): name -> volume
        self.ledger = Markers(storage.meta, storage.clock)
        self.verifications: dict[str, Verification] = {}  # the running or last verify of each set
        self.serving = False
        self.targets = Targets(storage, self.reactor, stream_timeout)  # the AIM sets this node receives (destination side)
        self.roles = Roles(self)  # failover, switchover, failback
        self.local: tuple[int, str] | None = None  # this node's AIM port and token, once it serves one
        self.local_cert: str | None = None  # the PEM certificate of that port, when it serves TLS

    def load(self) -> None:
        """Attach every AIM set to its volume and replay what a crash may have cut short. Senders
        start only in a serving node (:meth:`start`): a CLI process on the root just journals."""
        for row in self.meta.query("SELECT * FROM aim_sets ORDER BY created_at"):
            aim = self._open(Record.from_row(row))
            if self.storage.unclean_machine_restart:  # the page cache was lost: trust nothing, resync
                aim.observer.track_all()
            aim.volume.observers.append(aim.observer)
            # beyond what the disk kept and what the destination acknowledged (an acknowledged
            # marker's result comes back in the handshake)
            aim.lost_markers = self.ledger.lost(aim.name, max(aim.journal_end, aim.record.acked_seq + 1))
            if aim.record.switchover:  # its host writes stay fenced until it completes or is aborted
                aim.volume.fence = (f"a switchover of AIM set {aim.name} was in progress when the node stopped: "
                                    f"run aim switchover {aim.name} again (or with --abort)")
            replayed = aim.observer.replay(self.ledger.sequenced)
            if replayed:
                log.info("aim %s: replayed %d journal entries into %s after an unclean stop",
                         aim.name, replayed, aim.volume.name)
        self.ledger.fail_unsequenced()
        self.targets.load()
        for name in os.listdir(self.storage.files.sub("aim")):
            if name not in self.sets:
                shutil.rmtree(self.storage.files.aim_set(name), ignore_errors=True)

    def _open(self, record: Record) -> AimSet:
        aim = AimSet(record, self.storage.volumes[record.source], self.storage.files.aim_set(record.name),
                     self.meta, self.ledger, connect=self.connect, reactor=self.reactor, delay=self.delay,
                     stream_timeout=self.stream_timeout)
        aim.local_port = self.local[0] if self.local else None
        self.sets[record.name] = aim
        return aim

    def start(self) -> None:
        self.serving = True
        for aim in self.sets.values():
            aim.start()

    def receiving(self, aim_port: int, token: str, cert_pem: str | None = None) -> None:
        """This node's AIM port is open: a reverse set made here uses this token, and its source
        announces this port (for a failback to find it). ``cert_pem``: the certificate it serves
        over TLS, which this node's sets hand their destination (what a reverse set pins)."""
        self.local = (aim_port, token)
        self.local_cert = cert_pem
        for aim in self.sets.values():
            aim.local_port = aim_port

    def by_id(self, set_id: str) -> AimSet | None:
        return next((a for a in list(self.sets.values()) if a.record.id == set_id), None)

    def secret_of(self, set_id: str) -> str | None:
        """The secret of a set this node is the source of (its destination's token)."""
        aim = self.by_id(set_id)
        return aim.token if aim else None

    def promoted_here(self, set_id: str, generation: int) -> dict | None:
        """A stream for a set this node is the source of: fenced if the stream's generation is
        not newer (a promoted destination meeting its old source); else None."""
        aim = self.by_id(set_id)
        if aim is None or generation > aim.record.generation:
            return None
        return {"state": "promoted", "generation": aim.record.generation, "promoted_at": aim.record.created_at,
                "reason": "this node is the AIM set's source now"}

    def close(self) -> None:
        self.targets.stop_all()  # the streams received end (their appliers run on the reactor)
        self.targets.close()
        for v in list(self.verifications.values()):
            v.cancel()
        for aim in self.sets.values():  # every session ends at once, then each is waited for
            aim.closing = True
            aim.sender.drop()
        for aim in self.sets.values():
            aim.stop()
            aim.volume.flush()
            aim.observer.checkpoint()
            with aim.volume.lock:
                aim.volume.observers.remove(aim.observer)
            aim.close()
        self.reactor.stop()

    def aim_set(self, name: str) -> AimSet:
        try:
            return self.sets[name]
        except KeyError:
            raise NotFound(f"AIM set {name!r} does not exist") from None

    # -- AIM sets ----------------------------------------------------------------------------------------
    def create(self, name: str, source: str, to: str, token: str, journal_limit: str | int | None = None,
               tls_ca: str | None = None) -> dict:
        """``tls_ca``: the PEM text of the certificate (or CA) the destination's AIM port must present."""
        check_name("AIM set", name)
        host, port, dest_volume = wire.parse_to(to)
        limit = parse_size(journal_limit if journal_limit is not None else DEFAULT_JOURNAL_LIMIT)
        if limit < 1 << 20:
            raise InvalidInput(f"invalid journal limit {journal_limit!r}: at least 1MiB")
        if not token or len(token) < 16:
            raise InvalidInput("the destination token is missing or too short (give --to-token-file)")
        with self.storage.lock:  # reserve the name and the volume; the network call comes after
            vol = self._check_new(name, source)
            self._creating[name] = source
        try:
            return self._create(name, vol, host, port, dest_volume, token, limit, tls_ca)
        finally:
            with self.storage.lock:
                del self._creating[name]

    def _check_new(self, name: str, source: str) -> Volume:
        """Caller holds the storage lock."""
        vol = self.storage.volume(source)
        if name in self.sets or name in self._creating:
            raise AlreadyExists(f"AIM set {name!r} already exists")
        if any(a.volume is vol for a in self.sets.values()) or source in self._creating.values():
            raise Conflict(f"volume {source!r} is already the source of an AIM set")
        if vol.replica_of:
            raise Conflict(f"volume {source!r} is itself an AIM destination")
        return vol

    def _create(self, name: str, vol: Volume, host: str, port: int, dest_volume: str, token: str, limit: int,
                tls_ca: str | None) -> dict:
        set_id = uuid.uuid4().hex
        d = self.storage.files.aim_set(name)
        shutil.rmtree(d, ignore_errors=True)
        make_dir(d)  # its files are durable before the row that makes the set exist
        tls = None
        if tls_ca:
            write_new(os.path.join(d, "dest-ca.pem"), tls_ca.encode())
            try:
                tls = tlsctx.client_tls(os.path.join(d, "dest-ca.pem"))
            except (OSError, ValueError) as e:
                shutil.rmtree(d, ignore_errors=True)
                raise InvalidInput(f"the destination TLS certificate is not usable: {e}") from None
        try:
            self._call_destination(host, port, token, {"op": "claim", "set_id": set_id, "set_name": name,
                                                       "volume": dest_volume, "size": vol.size,
                                                       "source": vol.name, "source_cert": self.local_cert}, tls)
        except EngineError:
            shutil.rmtree(d, ignore_errors=True)
            raise
        write_new(os.path.join(d, "dest.token"), token.encode())
        record = Record(name, set_id, vol.name, host, port, dest_volume, limit, tls is not None,
                        iso(self.storage.clock()))
        with self.storage.lock, vol.lock:  # the initial sync copies every block written so far
            if self.storage.volumes.get(vol.name) is not vol:  # deleted while the claim was in flight
                shutil.rmtree(d, ignore_errors=True)
                raise NotFound(f"volume {vol.name!r} does not exist")
            bs = vol.block_size
            BlockBitmap.create(os.path.join(d, "dirty.bm"), vol.nblocks,
                               ((s // bs, (e - 1) // bs) for s, e in data_extents(vol.fd, vol.size))).close()
            record.insert(self.meta)
            aim = self._open(record)
            vol.observers.append(aim.observer)
        if self.serving:
            aim.start()
        return self.info(name)

    def _call_destination(self, host: str, port: int, token: str, hello: dict, tls=None) -> dict:
        try:
            with self.connect(host, port, tls=tls) as sock:
                return wire.client_handshake(sock, token, hello)
        except WireError as e:
            raise Conflict(f"destination {host}:{port} refused: {e}") from None
        except OSError as e:
            raise EngineError(f"destination AIM port {host}:{port} is unreachable: {e.strerror or e}") from None

    def info(self, name: str) -> dict:
        """A set this node is the source of, or else one it receives (role ``destination``)."""
        if name not in self.sets:
            return self.targets.info(self.targets.named(name))
        aim = self.aim_set(name)
        groups = [r["group_name"] for r in self.meta.query(
            "SELECT group_name FROM group_members WHERE aim_set=? ORDER BY group_name", name)]
        return {**aim.status(), "id": aim.record.id, "paused": aim.record.paused, "groups": groups,
                "last_verify": self.last_verify(name)}

    def points(self, name: str, limit: int = 100) -> list[dict]:
        """At the destination: the set's recovery points (its applied markers), newest first."""
        return self.targets.points(self.targets.named(name), limit)

    # -- role changes (see .roles) ----------------------------------------------------------------------
    def failover(self, name: str, to_point: str | None = None, latest_point: bool = False,
                 force: bool = False) -> dict:
        return failover.failover(self, name, to_point, latest_point, force)

    def failback(self, name: str, source: str | None = None, tls_ca: str | None = None) -> dict:
        return failover.failback(self, name, source, tls_ca)

    def switchover(self, name: str, timeout: float = 300.0, abort: bool = False) -> dict:
        return switchover.switchover(self, name, None, timeout, abort)

    def switchover_group(self, group: str, timeout: float = 300.0, abort: bool = False) -> dict:
        return switchover.switchover(self, None, group, timeout, abort)

    # -- verification --------------------------------------------------------------------------------
    def verify(self, name: str, repair: bool = False) -> dict:
        """Start a block-exact verify of the set at one write-order point (see :mod:`.verify`)."""
        aim = self.aim_set(name)
        _markable(aim)  # a verify is a marker too
        with self.storage.lock:
            running = self.verifications.get(name)
            if running is not None and running.state == "running":
                raise Conflict(f"AIM set {name!r} is being verified ({running.id}): wait for it")
            if not self.serving:
                raise Conflict("verify needs a serving node (aimsnap node serve): it talks to the destination")

            def done(status: dict, name: str = name) -> None:
                self.meta.execute("UPDATE aim_sets SET last_verify=? WHERE name=?", json.dumps(status), name)
            v = self.verifications[name] = Verification(aim, self.storage, repair, done)
        v.thread.start()
        return v.status()

    def verify_status(self, name: str) -> dict:
        """The verify running now, or else the last one (``state`` ``none`` if there never was one)."""
        self.aim_set(name)
        v = self.verifications.get(name)
        return v.status() if v is not None else (self.last_verify(name) or {"aim_set": name, "state": "none"})

    def last_verify(self, name: str) -> dict | None:
        v = self.verifications.get(name)
        if v is not None and v.state != "running":
            return v.status()
        row = self.meta.one("SELECT last_verify FROM aim_sets WHERE name=?", name)
        return json.loads(row["last_verify"]) if row and row["last_verify"] else None

    def list(self) -> list[dict]:
        """Every set this node is the source of, then every one it receives."""
        return [self.info(n) for n in sorted(self.sets)] + [self.targets.info(t) for t in self.targets.all()]

    def delete(self, name: str) -> None:
        if name not in self.sets:  # a set received here: forgotten (a promoted one can no longer fail back)
            with self.roles.lock:
                t = self.targets.named(name)
                self.targets.stop_stream(t.set_id)
                self.targets.forget(t)
            return
        with self.storage.lock:  # forget it here; stopping and the network call come after
            aim = self.aim_set(name)
            groups = self.info(name)["groups"]
            if groups:
                raise Conflict(f"AIM set {name!r} is a member of group(s) {', '.join(groups)}: delete those first")
            with aim.volume.lock:
                aim.volume.observers.remove(aim.observer)
            self.meta.execute("DELETE FROM aim_sets WHERE name=?", name)
            del self.sets[name]
            gone = self.storage.files.aim_set(f".deleted-{aim.record.id}")  # a new set may take the name
            os.rename(self.storage.files.aim_set(name), gone)
        aim.close()  # stops the sender and joins its threads
        rec = aim.record
        try:
            self._call_destination(rec.dest_host, rec.dest_port, aim.token, {"op": "release", "set_id": rec.id,
                                                                             "generation": rec.generation},
                                   aim.tls)
        except EngineError as e:
            log.warning("aim %s: could not release the destination volume: %s", name, e)
        shutil.rmtree(gone, ignore_errors=True)

    def pause(self, name: str) -> dict:
        """Stop shipping; the journal keeps growing (up to its limit)."""
        self.aim_set(name).set_paused(True)
        return self.info(name)

    def resume(self, name: str) -> dict:
        self.aim_set(name).set_paused(False)
        return self.info(name)

    # -- groups --------------------------------------------------------------------------------------------
    def create_group(self, name: str, members: list[str]) -> dict:
        check_name("group", name)
        if len(members) < 1 or len(set(members)) != len(members):
            raise InvalidInput(f"group {name!r} needs distinct members")
        with self.storage.lock:
            for m in members:
                self.aim_set(m)
            if self.meta.one("SELECT name FROM groups WHERE name=?", name):
                raise AlreadyExists(f"group {name!r} already exists")
            with self.meta.transaction() as db:
                db.execute("INSERT INTO groups VALUES (?,?)", (name, iso(self.storage.clock())))
                for i, m in enumerate(members):
                    db.execute("INSERT INTO group_members VALUES (?,?,?)", (name, m, i))
        return self.group_info(name)

    def group_members(self, name: str) -> list[str]:
        if not self.meta.one("SELECT name FROM groups WHERE name=?", name):
            raise NotFound(f"group {name!r} does not exist")
        return [r["aim_set"] for r in self.meta.query(
            "SELECT aim_set FROM group_members WHERE group_name=? ORDER BY position", name)]

    def group_info(self, name: str) -> dict:
        return {"name": name, "members": self.group_members(name)}

    def list_groups(self) -> list[dict]:
        return [self.group_info(r["name"]) for r in self.meta.query("SELECT name FROM groups ORDER BY name")]

    def delete_group(self, name: str) -> None:
        self.group_members(name)
        with self.meta.transaction() as db:
            db.execute("DELETE FROM group_members WHERE group_name=?", (name,))
            db.execute("DELETE FROM groups WHERE name=?", (name,))

    # -- markers -------------------------------------------------------------------------------------------
    def issue_marker(self, aim_set: str, snapshot: str | None, label: str | None = None) -> dict:
        aim = self.aim_set(aim_set)
        _markable(aim)
        with aim.volume.lock:
            row = self.ledger.issue([aim], snapshot=snapshot, label=label)[0]
        aim.journal.sync()  # durable before it is answered: a power cut cannot take an issued marker back
        return row

    def issue_group_marker(self, group: str, snapshot_set: str, label: str | None = None) -> dict:
        """One write-order point across every member: all their source volumes are locked while
        the marker goes into each journal."""
        members = [self.aim_set(m) for m in self.group_members(group)]
        for a in members:
            _markable(a)
        if not snapshot_set:
            raise InvalidInput("a group marker names the destination snapshot set to enable (--snapshot-set)")
        with barrier(a.volume for a in members):
            rows = self.ledger.issue(members, group=group, snapshot_set=snapshot_set, label=label)
        for a in members:  # after the barrier: the members' writes go on meanwhile
            a.journal.sync()
        return self.ledger.group_marker(rows[0]["group_marker"])

    def markers(self, aim_set: str | None = None, limit: int = 100) -> list[dict]:
        if aim_set:
            self.aim_set(aim_set)
        return self.ledger.list(aim_set, limit)

    def show(self, ref: str) -> dict:
        return self.ledger.show(ref)

    def wait(self, ref: str, timeout: float) -> dict:
        return self.ledger.wait(ref, timeout)


def _markable(aim: AimSet) -> None:
    """A marker goes into a stream that will be applied: not a fenced one, nor one switching over."""
    if aim.record.fenced:
        raise Conflict(f"AIM set {aim.name!r} is fenced (its destination was promoted): a marker would never apply")
    if aim.record.switchover:
        raise Conflict(f"AIM set {aim.name!r} is switching over: place markers on the reverse set once it is done")
