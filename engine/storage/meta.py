"""The node's metadata: one SQLite file under the root, every change one durable transaction.

Files (volume data, bitmaps, point stores) are created before the row that names them is
committed and removed after it is deleted, so a crash at any moment leaves at worst an
orphan file, which :meth:`Meta.known_files` lets the node sweep away at open.
"""

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_MIGRATIONS = [
    """
    CREATE TABLE volumes (
        name TEXT PRIMARY KEY, size INTEGER NOT NULL, block_size INTEGER NOT NULL,
        role TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE TABLE snapshots (
        name TEXT PRIMARY KEY, type TEXT NOT NULL, source TEXT NOT NULL REFERENCES volumes(name),
        state TEXT NOT NULL, enables INTEGER NOT NULL DEFAULT 0, last_enabled_at TEXT,
        created_at TEXT NOT NULL);
    CREATE TABLE points (
        snapshot TEXT NOT NULL REFERENCES snapshots(name), name TEXT NOT NULL,
        seq INTEGER NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (snapshot, name));
    CREATE TABLE snapshot_sets (name TEXT PRIMARY KEY, created_at TEXT NOT NULL,
        enables INTEGER NOT NULL DEFAULT 0, last_enabled_at TEXT);
    CREATE TABLE snapshot_set_members (
        set_name TEXT NOT NULL REFERENCES snapshot_sets(name),
        snapshot TEXT NOT NULL REFERENCES snapshots(name), position INTEGER NOT NULL,
        PRIMARY KEY (set_name, snapshot));
    """,
    """
    CREATE TABLE aim_sets (
        name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, source TEXT NOT NULL REFERENCES volumes(name),
        dest_host TEXT NOT NULL, dest_port INTEGER NOT NULL, dest_volume TEXT NOT NULL,
        journal_limit INTEGER NOT NULL, acked_seq INTEGER NOT NULL DEFAULT 0,
        checkpoint_seq INTEGER NOT NULL DEFAULT 0, overflowed INTEGER NOT NULL DEFAULT 0,
        resync_from INTEGER, paused INTEGER NOT NULL DEFAULT 0,
        bytes_written INTEGER NOT NULL DEFAULT 0, bytes_sent INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL);
    CREATE TABLE groups (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
    CREATE TABLE group_members (group_name TEXT NOT NULL REFERENCES groups(name),
        aim_set TEXT NOT NULL REFERENCES aim_sets(name), position INTEGER NOT NULL,
        PRIMARY KEY (group_name, aim_set));
    CREATE TABLE markers (
        id INTEGER PRIMARY KEY AUTOINCREMENT, aim_set TEXT NOT NULL, seq INTEGER,
        group_name TEXT, group_marker TEXT, snapshot TEXT, snapshot_set TEXT, label TEXT,
        state TEXT NOT NULL, issued_at TEXT NOT NULL, applied_at TEXT, point TEXT, error TEXT);
    CREATE INDEX markers_by_set ON markers (aim_set, id);
    CREATE INDEX markers_by_group ON markers (group_marker);
    CREATE TABLE aim_targets (
        set_id TEXT PRIMARY KEY, set_name TEXT NOT NULL, volume TEXT NOT NULL UNIQUE REFERENCES volumes(name),
        applied_seq INTEGER NOT NULL DEFAULT 0, consistent_from INTEGER NOT NULL DEFAULT 0,
        resyncing INTEGER NOT NULL DEFAULT 1, source TEXT, created_at TEXT NOT NULL);
    CREATE TABLE applied_markers (
        set_id TEXT NOT NULL, marker_id TEXT NOT NULL, result TEXT NOT NULL,
        PRIMARY KEY (set_id, marker_id));
    CREATE TABLE applied_group_markers (group_marker TEXT PRIMARY KEY, result TEXT NOT NULL);
    """,
    """
    ALTER TABLE aim_sets ADD COLUMN tls INTEGER NOT NULL DEFAULT 0;
    """,
    """
    CREATE TABLE clones (
        name TEXT PRIMARY KEY, snapshot TEXT NOT NULL REFERENCES snapshots(name), point TEXT,
        size INTEGER NOT NULL, block_size INTEGER NOT NULL, created_at TEXT NOT NULL,
        bytes_written INTEGER NOT NULL DEFAULT 0);
    """,
    """
    ALTER TABLE aim_sets ADD COLUMN last_verify TEXT;
    """,
    """
    ALTER TABLE aim_sets ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE aim_sets ADD COLUMN fenced TEXT;
    ALTER TABLE aim_sets ADD COLUMN switchover TEXT;
    ALTER TABLE aim_targets ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE aim_targets ADD COLUMN promoted TEXT;
    ALTER TABLE aim_targets ADD COLUMN source_addr TEXT;
    ALTER TABLE aim_targets ADD COLUMN applied_source_ns INTEGER NOT NULL DEFAULT 0;
    """,
]


class Meta:
    """A serialised connection to ``node.db`` (WAL, synchronous=FULL)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for i, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            with self.transaction() as db:
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={i}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, *args: object) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.db.execute(sql, args).fetchall()]

    def one(self, sql: str, *args: object) -> dict | None:
        rows = self.query(sql, *args)
        return rows[0] if rows else None

    def execute(self, sql: str, *args: object) -> None:
        with self.transaction() as db:
            db.execute(sql, args)

    def close(self) -> None:
        with self.lock:
            self.db.close()
