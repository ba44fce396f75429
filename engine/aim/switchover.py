"""Switchover, run at the source: the planned swap of an AIM set's roles (or of every member of a
group, at one write-order point), with nothing lost and nothing to copy.

1. Host writes on the source volume(s) are fenced (NBD writes fail with EPERM, API writes get a
   409 with the reason), under the volume lock, so the last write is exact; the fence is durable
   (the record says a switchover is in progress, and a restart fences again).
2. The journal drains, and a final verify marker goes in: both sides freeze that point and their
   digests are compared (only digests cross the wire). Any failure so far lifts the fence and
   changes nothing.
3. The destination is asked to promote: it checks it applied everything up to the final marker,
   becomes the source (generation + 1) toward this node, and answers.
4. This node becomes the destination. The reverse set starts with nothing to copy.

From step 3 on the fence is not lifted on a failure: the destination may have promoted and the
answer been lost. Running the switchover again completes it (the destination answers a repeated
request as the first), or says why it cannot.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from ..errors import Conflict, EngineError, InvalidInput
from ..storage.names import iso
from ..storage.volume import barrier
from . import wire
from .roles import SNAPSHOT_SOURCE
from .verify import Verification

if TYPE_CHECKING:
    from .aimset import AimSet
    from .replication import Replication

log = logging.getLogger("aimsnap.aim")


def switchover(repl: Replication, name: str | None = None, group: str | None = None, timeout: float = 300.0,
               abort: bool = False) -> dict:
    started = time.monotonic()
    if bool(name) == bool(group):
        raise InvalidInput("give an AIM set, or a group, not both")
    with repl.roles.lock:
        names = _members(repl, group) if group else [name]
        done = [n for n in names if n not in repl.sets]
        if done and len(done) == len(names):  # every member switched over already (a retry)
            return {"aim_sets": [repl.info(n) for n in names], "already": True}
        aims = [repl.aim_set(n) for n in names if n in repl.sets]
        if abort:
            return _abort(repl, aims)
        pending = [a for a in aims if _state(a) == "promoting"]
        if not pending:
            _check(repl, aims, group)
            _fence(repl, aims, f"switching over to {', '.join(a.record.dest_host for a in aims)}", group, names)
            try:
                finals = {a.name: _final_point(repl, a, started + timeout) for a in aims}
            except BaseException:
                _lift(repl, aims)
                raise
            for a in aims:
                _record(repl, a, "promoting", final_seq=finals[a.name]["final_seq"], proof=finals[a.name],
                        group=group, members=names)
        results = []
        for a in aims:  # from here no lifting: the destination may promote before its answer is lost
            results.append(_promote(repl, a, group, names))
    return {"aim_sets": results, "group": group, "seconds": round(time.monotonic() - started, 3)}


def _state(aim: AimSet) -> str | None:
    return (aim.record.pending_switchover or {}).get("state")


def _members(repl: Replication, group: str) -> list[str]:
    """The group's members as they were when its switchover fenced them (a retry after some of them
    switched finds the group here shrunk), else as the group is now."""
    for a in repl.sets.values():
        pending = a.record.pending_switchover or {}
        if pending.get("group") == group:
            return list(pending["members"])
    return repl.group_members(group)


def _check(repl: Replication, aims: list[AimSet], group: str | None) -> None:
    if repl.local is None:
        raise Conflict("switchover needs a serving node (aimsnap node serve): it talks to the destination")
    for a in aims:
        groups = [r["group_name"] for r in repl.meta.query("SELECT group_name FROM group_members WHERE aim_set=?",
                                                           a.name)]
        if group is None and groups:
            raise Conflict(f"AIM set {a.name!r} is a member of group {groups[0]!r}: switch the group over "
                           f"(--group {groups[0]}), so that its members keep one write-order point")
        if a.record.tls and not repl.local_cert:
            raise Conflict(f"AIM set {a.name!r} replicates over TLS, and this node's AIM port serves none: the "
                           "reverse set would go back in plaintext. Serve it with --aim-tls-cert/--aim-tls-key. "
                           "Not switched over")
        running = repl.verifications.get(a.name)
        if running is not None and running.state == "running":
            raise Conflict(f"AIM set {a.name!r} is being verified ({running.id}): switch over when it is done")
        if a.volume.role != "volume":
            raise Conflict(SNAPSHOT_SOURCE.format(a.name, a.volume.name))
        if a.record.fenced:
            raise Conflict(f"AIM set {a.name!r} is fenced (its destination was failed over): fail back from there")
        if a.record.paused:
            raise Conflict(f"AIM set {a.name!r} is paused: resume it first")
        if a.record.overflowed or a.record.resync_from is not None:
            raise Conflict(f"AIM set {a.name!r} is resynchronising: switch over once it replicates")


def _fence(repl: Replication, aims: list[AimSet], reason: str, group: str | None, members: list[str]) -> None:
    """One write-order point across every member: their fences go up under all their locks."""
    with barrier(a.volume for a in aims):
        for a in aims:
            a.volume.fence = reason
    for a in aims:
        _record(repl, a, "draining", group=group, members=members)


def _lift(repl: Replication, aims: list[AimSet]) -> None:
    for a in aims:
        with a.volume.lock:
            a.volume.fence = None
        a.record.switchover = None
        a.record.save(repl.meta)


def _abort(repl: Replication, aims: list[AimSet]) -> dict:
    promoting = [a.name for a in aims if _state(a) == "promoting"]
    if promoting:
        raise Conflict(f"the destination of {', '.join(promoting)} may have promoted already: run the switchover "
                       "again to complete it")
    _lift(repl, aims)
    return {"aim_sets": [repl.info(a.name) for a in aims], "aborted": True}


def _record(repl: Replication, aim: AimSet, state: str, **extra: object) -> None:
    aim.record.switchover = json.dumps({"state": state, "at": iso(repl.storage.clock()), **extra})
    aim.record.save(repl.meta)


def _final_point(repl: Replication, aim: AimSet, deadline: float) -> dict:
    """Drain, then a final verify: the destination applied everything, and both sides are equal."""
    while aim.record.acked_seq < aim.journal.next_seq - 1:
        if time.monotonic() > deadline:
            raise EngineError(f"AIM set {aim.name!r} did not drain in time ({aim.state.value}, "
                              f"{aim.journal.next_seq - 1 - aim.record.acked_seq} entries queued): nothing changed")
        time.sleep(0.02)
    v = Verification(aim, repl.storage, False, lambda status: None, max(1.0, deadline - time.monotonic()))
    v.run()  # a verify marker, then digests of both sides' frozen views at it
    if v.state != "done":
        raise EngineError(f"the final verify of {aim.name!r} failed: {v.error}: nothing changed")
    st = v.status()
    if st["mismatched_ranges"]:
        raise Conflict(f"{st['mismatched_ranges']} range(s) of {aim.name!r} differ between source and destination at "
                       "the final point: nothing changed (aim verify --repair, then switch over again)")
    return {"final_seq": aim.journal.next_seq - 1, "verify": v.id, "bytes_compared": st["bytes_compared"],
            "digest_bytes": st["digest_bytes"], "source_digest": st["digest"],
            "destination_digest": st["destination_digest"], "digests_equal": st["digest"] == st["destination_digest"]}


def _promote(repl: Replication, aim: AimSet, group: str | None, members: list[str]) -> dict:
    rec = aim.record
    pending = rec.pending_switchover
    own_port, _token = repl.local or (0, "")
    hello = {"op": "promote", "set_id": rec.id, "set_name": aim.name, "generation": rec.generation,
             "final_seq": pending["final_seq"], "aim_port": own_port, "volume": aim.volume.name,
             "journal_limit": rec.journal_limit, "group": {"name": group, "members": members} if group else None,
             "source_cert": repl.local_cert}
    try:
        with repl.connect(rec.dest_host, rec.dest_port, tls=aim.tls) as sock:
            sock.settimeout(120)
            answer = wire.client_handshake(sock, aim.token, hello)
    except wire.WireError as e:
        raise Conflict(f"the destination refused to promote {aim.name!r}: {e} (host writes stay fenced: run the "
                       "switchover again, or --abort if the destination did not promote)") from None
    except OSError as e:
        raise EngineError(f"the destination of {aim.name!r} is unreachable: {e.strerror or e} (host writes stay "
                          "fenced: run the switchover again to complete it)") from None
    dest = f"{rec.dest_host}:{rec.dest_port}"
    repl.roles.become_destination(aim, int(answer["generation"]), rec.dest_volume, dest)
    log.warning("aim %s: switched over: %s:%s is the source now", aim.name, rec.dest_host, rec.dest_volume)
    return {"aim_set": aim.name, "new_source": f"{dest}/{rec.dest_volume}", "generation": answer["generation"],
            "promoted_at": answer.get("promoted_at"), **pending.get("proof", {}),
            "final_seq": pending["final_seq"]}
