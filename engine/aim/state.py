"""What an AIM set is and where it stands: the persisted record (one row of ``aim_sets``, saved by
one statement) and the sender's state, an :class:`enum.Enum` shown in ``aim status``."""

import enum
import json
import sqlite3
from dataclasses import astuple, dataclass, fields

from ..storage.meta import Meta

DEFAULT_JOURNAL_LIMIT = 1 << 30


class State(str, enum.Enum):
    """The sender's state. A ``str`` so that JSON, metrics and tables print the value."""

    REPLICATING = "replicating"  # streaming the journal
    RESYNCING = "resyncing"      # copying dirty blocks before the journal takes over
    DISCONNECTED = "disconnected"  # between connections (the supervisor's backoff)
    ERROR = "error"              # the destination refused to go on (out of space, IO error): last_error says why
    PAUSED = "paused"            # by an operator: the journal keeps growing
    FENCED = "fenced"            # the destination was promoted: never applied again (fenced says when, why)


@dataclass
class Record:
    """The persisted part of an AIM set. Fields after ``created_at`` change while it runs; every
    change is written by :meth:`save`, so the row never mixes values of two moments of one thread."""

    name: str
    id: str
    source: str
    dest_host: str
    dest_port: int
    dest_volume: str
    journal_limit: int
    tls: bool
    created_at: str
    acked_seq: int = 0         # the destination has applied and made durable every entry up to here
    checkpoint_seq: int = 0    # every entry up to here is in the source volume and durable
    overflowed: bool = True    # writes are tracked as dirty blocks (initial sync, or over the journal limit)
    resync_from: int | None = None  # a resync in progress: the journal takes over from this entry
    paused: bool = False
    bytes_written: int = 0
    bytes_sent: int = 0
    generation: int = 1        # bumped by each promotion of the set's destination (see roles)
    fenced: str | None = None  # JSON: the destination's authenticated refusal (promoted at generation N)
    switchover: str | None = None  # JSON: a planned switchover in progress (its host writes are fenced)

    @property
    def pending_switchover(self) -> dict | None:
        """The switchover in progress (state, final_seq, group, members...), parsed."""
        return json.loads(self.switchover) if self.switchover else None

    @property
    def fence(self) -> dict | None:
        """The destination's refusal that fenced this source (generation, promoted_at, message)."""
        return json.loads(self.fenced) if self.fenced else None

    @classmethod
    def from_row(cls, row: dict) -> "Record":
        r = cls(**{f.name: row[f.name] for f in fields(cls)})
        r.tls, r.overflowed, r.paused = bool(r.tls), bool(r.overflowed), bool(r.paused)
        return r

    def insert(self, meta: Meta) -> None:
        with meta.transaction() as db:
            self.insert_into(db)

    def insert_into(self, db: sqlite3.Connection) -> None:
        """The row, inside a transaction the caller holds (a role change swaps rows in one)."""
        names = [f.name for f in fields(self)]
        db.execute(f"INSERT INTO aim_sets ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", astuple(self))

    def save(self, meta: Meta) -> None:
        meta.execute("UPDATE aim_sets SET acked_seq=?, checkpoint_seq=?, overflowed=?, resync_from=?, paused=?, "
                     "bytes_written=?, bytes_sent=?, generation=?, fenced=?, switchover=? WHERE name=?",
                     self.acked_seq, self.checkpoint_seq, int(self.overflowed), self.resync_from, int(self.paused),
                     self.bytes_written, self.bytes_sent, self.generation, self.fenced, self.switchover, self.name)
