"""The typed node interface: what a node offers, whether it is a local root (:class:`engine.Node`)
or a node's control API (:class:`engine.client.remote.RemoteNode`). Actions, ``apply`` and the
CLI are typed against :class:`NodeAPI`; the route table (:mod:`engine.routes`) maps each method
to one HTTP route, and the remote client is generated from the two.

Every method returns plain data (dicts, lists, bytes) and raises
:class:`~engine.errors.EngineError` subclasses with one line for the operator.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .storage.units import DEFAULT_BLOCK_SIZE


@runtime_checkable
class StorageAPI(Protocol):
    """Volumes, snapshot relationships, points in time and snapshot sets."""

    def node_info(self) -> dict: ...
    def create_volume(self, name: str, size: str | int, block_size: str | int = DEFAULT_BLOCK_SIZE) -> dict: ...
    def list_volumes(self) -> list[dict]: ...
    def volume_info(self, name: str) -> dict: ...
    def delete_volume(self, name: str) -> None: ...
    def read(self, name: str, offset: int, length: int) -> bytes: ...
    def write(self, name: str, offset: int, data: bytes) -> None:
        """Over the API the write is durable when answered; locally, after :meth:`flush`."""
    def flush(self, name: str) -> None: ...
    def create_snapshot(self, name: str, source: str, type: str) -> dict: ...
    def list_snapshots(self) -> list[dict]: ...
    def snapshot_info(self, name: str) -> dict: ...
    def delete_snapshot(self, name: str) -> None: ...
    def enable_snapshot(self, name: str, point: str | None = None) -> dict:
        """An increment (complete-image), or a new point in time named ``point`` (differential)."""
    def delete_point(self, name: str, point: str) -> None: ...
    def read_snapshot(self, name: str, point: str | None, offset: int, length: int) -> bytes: ...
    def create_snapshot_set(self, name: str, members: list[str]) -> dict: ...
    def list_snapshot_sets(self) -> list[dict]: ...
    def snapshot_set_info(self, name: str) -> dict: ...
    def enable_snapshot_set(self, name: str, point: str | None = None) -> dict:
        """Every member at one write-order point."""
    def delete_snapshot_set(self, name: str) -> None: ...
    def create_clone(self, name: str, origin: str) -> dict:
        """A writable clone of ``SNAPSHOT@POINT`` or of a complete-image ``SNAPSHOT``, exported over NBD as ``name``."""
    def list_clones(self) -> list[dict]: ...
    def clone_info(self, name: str) -> dict: ...
    def delete_clone(self, name: str, force: bool = False) -> None:
        """Refused while NBD clients have it open, unless ``force``."""
    def restore_volume(self, name: str, origin: str, force: bool = False) -> dict:
        """The volume's content becomes ``origin``'s; a ``pre-restore`` point is taken first on each
        of its differential snapshots. Refused while NBD clients have it open, unless ``force``."""
    def close(self) -> None: ...


@runtime_checkable
class ReplicationAPI(Protocol):
    """AIM sets, groups and markers (at the source), and role changes (failover and failback at
    the destination, switchover at the source)."""

    def create(self, name: str, source: str, to: str, token: str, journal_limit: str | int | None = None,
               tls_ca: str | None = None) -> dict:
        """Claims the destination volume; ``tls_ca`` is the PEM the destination's AIM port must present."""
    def list(self) -> list[dict]: ...
    def info(self, name: str) -> dict: ...
    def delete(self, name: str) -> None:
        """Releases the destination volume."""
    def pause(self, name: str) -> dict:
        """Stop shipping; the journal keeps growing."""
    def resume(self, name: str) -> dict: ...
    def verify(self, name: str, repair: bool = False) -> dict:
        """Start a block-exact comparison of source and destination at one write-order point;
        ``repair`` re-sends mismatched ranges. Answers at once: follow it with :meth:`verify_status`."""
    def verify_status(self, name: str) -> dict:
        """The verify running now, or the last one: ``state`` running | done | failed | none."""
    def points(self, name: str, limit: int = 100) -> list[dict]:
        """At the destination: the recovery points the set's markers made, newest first."""
    def failover(self, name: str, to_point: str | None = None, latest_point: bool = False,
                 force: bool = False) -> dict:
        """At the destination: promote it (the set is fenced from now on), optionally rolled back
        to ``to_point`` or the point the last applied marker made; the volume is writable."""
    def failback(self, name: str, source: str | None = None, tls_ca: str | None = None) -> dict:
        """At a failed-over destination: become the set's source toward the old source (at
        ``source``, HOST:AIMPORT, else where it last connected from), sending only what differs;
        over TLS pinned to ``tls_ca`` (PEM), or to the certificate the old source gave."""
    def switchover(self, name: str, timeout: float = 300.0, abort: bool = False) -> dict:
        """At the source: swap roles with nothing lost (fence, drain, verify, promote); ``abort``
        lifts the fence of one that did not reach the destination."""
    def switchover_group(self, group: str, timeout: float = 300.0, abort: bool = False) -> dict:
        """:meth:`switchover` of every member of ``group`` at one write-order point."""
    def issue_marker(self, aim_set: str, snapshot: str | None, label: str | None = None) -> dict: ...
    def issue_group_marker(self, group: str, snapshot_set: str, label: str | None = None) -> dict:
        """One marker across every member of ``group``, at one write-order point."""
    def markers(self, aim_set: str | None = None, limit: int = 100) -> list[dict]:
        """Newest first."""
    def show(self, ref: str) -> dict:
        """A marker by id, or a group marker by its id."""
    def wait(self, ref: str, timeout: float) -> dict:
        """:meth:`show` once the marker is no longer ``issued``, or after ``timeout`` seconds."""
    def create_group(self, name: str, members: list[str]) -> dict: ...
    def list_groups(self) -> list[dict]: ...
    def group_info(self, name: str) -> dict: ...
    def delete_group(self, name: str) -> None: ...


@runtime_checkable
class AccessAPI(Protocol):
    """API tokens with roles, and the audit trail of state-changing requests (:mod:`engine.access`)."""

    def create_token(self, name: str, role: str) -> dict:
        """``{"name", "role", "token"}``: the token is shown this once (it is kept hashed)."""
    def list_tokens(self) -> list[dict]: ...
    def revoke_token(self, name: str) -> None: ...
    def audit(self, since: str | None = None, limit: int = 1000) -> list[dict]:
        """State-changing requests at or after ``since`` (ISO time), oldest first."""


class NodeAPI(StorageAPI, Protocol):
    replication: ReplicationAPI
    access: AccessAPI
