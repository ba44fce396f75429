"""The outcome store: every run, marker and event in SQLite, through sqlite-utils.

WAL mode and a busy timeout so that `history` and `status` read while `run` writes; one
connection per thread; versioned migrations (``PRAGMA user_version``). Times are ISO-8601 UTC
strings, so they sort and compare as text.
"""

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlite_utils

from engine import InvalidInput

RUN_STATUSES = ("running", "ok", "failed", "skipped", "missed", "interrupted", "timeout")

MIGRATIONS = [
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY, policy TEXT NOT NULL, kind TEXT NOT NULL, trigger TEXT NOT NULL,
        scheduled_for TEXT, started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1, error TEXT, details TEXT NOT NULL DEFAULT '{}');
    CREATE INDEX runs_by_policy ON runs (policy, started_at);
    CREATE INDEX runs_by_status ON runs (status, started_at);
    CREATE INDEX runs_by_time ON runs (started_at);
    CREATE TABLE markers (
        id INTEGER PRIMARY KEY, run_id INTEGER REFERENCES runs(id), policy TEXT NOT NULL, node TEXT NOT NULL,
        aim_set TEXT, group_name TEXT, node_marker TEXT, issued_at TEXT NOT NULL, applied_at TEXT,
        snapshot TEXT, snapshot_set TEXT, point TEXT, status TEXT NOT NULL, error TEXT);
    CREATE INDEX markers_by_policy ON markers (policy, applied_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, policy TEXT, message TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}');
    CREATE INDEX events_by_time ON events (at);
    """,
    """
    CREATE TABLE schedule (policy TEXT PRIMARY KEY, kind TEXT NOT NULL, trigger TEXT NOT NULL, next_fire TEXT,
        updated_at TEXT NOT NULL);
    CREATE TABLE service (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE requests (id INTEGER PRIMARY KEY, policy TEXT NOT NULL, at TEXT NOT NULL, taken_at TEXT);
    """,
    """
    CREATE TABLE alerts (key TEXT PRIMARY KEY, rule TEXT NOT NULL, fired_at TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}', sent TEXT NOT NULL DEFAULT '{}');
    """,
    """
    ALTER TABLE schedule ADD COLUMN rpo_objective REAL;
    """,
]


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(s: str) -> datetime:
    """A time as the store (or a node) writes it: ISO 8601 UTC with a ``Z``."""
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@dataclass
class RunRow:
    """One row of ``runs`` before it is written: a run starting, or one that never started."""

    policy: str
    kind: str
    trigger: str
    status: str
    started_at: datetime
    scheduled_for: datetime | None = None
    attempt: int = 1
    error: str | None = None
    details: dict | None = None

    def values(self) -> tuple:
        finished = None if self.status == "running" else iso(self.started_at)
        return (self.policy, self.kind, self.trigger, self.scheduled_for and iso(self.scheduled_for),
                iso(self.started_at), finished, self.status, self.attempt, self.error,
                json.dumps(self.details or {}, default=str))


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self.write_lock = threading.Lock()
        try:
            self._migrate()
        except sqlite3.DatabaseError as e:  # not a file SQLite can use (a device, a foreign file, no space)
            raise InvalidInput(f"{path} cannot be the outcome store (--db): {e}") from None

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA busy_timeout=30000")
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            # WAL + NORMAL: a commit is atomic and survives a crash of the process; a power loss may
            # lose the last commits but never corrupts the store (the outcome record, not the data)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _migrate(self) -> None:
        db = self.db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction() as conn:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={i}")

    def _write(self, sql: str, args: Iterable = ()) -> int:
        with self.write_lock:
            cur = self.db.execute(sql, list(args))
            return cur.lastrowid

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Serialised writes in one commit (a batch of runs costs one fsync, not one each)."""
        with self.write_lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- runs ------------------------------------------------------------------------------------------
    def start_run(self, policy: str, kind: str, trigger: str, now: datetime, scheduled_for: datetime | None = None,
                  attempt: int = 1) -> int:
        return self.insert_runs([RunRow(policy, kind, trigger, "running", now, scheduled_for, attempt)])[0]

    def insert_runs(self, rows: list[RunRow], schedule: Iterable[tuple[str, str | None]] = (),
                    now: datetime | None = None) -> list[int]:
        """Write ``rows`` (and the policies' next fire times) in one transaction; their ids."""
        with self.transaction() as conn:
            ids = [conn.execute("INSERT INTO runs (policy, kind, trigger, scheduled_for, started_at, finished_at, "
                                "status, attempt, error, details) VALUES (?,?,?,?,?,?,?,?,?,?)", r.values()).lastrowid
                   for r in rows]
            conn.executemany("UPDATE schedule SET next_fire=?, updated_at=? WHERE policy=?",
                             [(nxt, now and iso(now), policy) for policy, nxt in schedule])
        return ids

    def finish_run(self, run_id: int, status: str, now: datetime, error: str | None = None,
                   details: dict | None = None) -> None:
        assert status in RUN_STATUSES and status != "running"
        self._write("UPDATE runs SET status=?, finished_at=?, error=?, details=? WHERE id=?",
                    (status, iso(now), error, json.dumps(details or {}, default=str), run_id))

    def record_run(self, policy: str, kind: str, trigger: str, status: str, now: datetime,
                   scheduled_for: datetime | None = None, error: str | None = None, details: dict | None = None) -> int:
        """A run that never started (skipped, missed): one row, already finished."""
        return self.insert_runs([RunRow(policy, kind, trigger, status, now, scheduled_for, 1, error,
                                        details or {})])[0]

    def interrupt_running(self, now: datetime) -> int:
        """Runs left `running` by an orchestrator that was killed: mark them `interrupted`."""
        with self.write_lock:
            cur = self.db.execute("UPDATE runs SET status='interrupted', finished_at=?, "
                                  "error='the orchestrator stopped during the run' WHERE status='running'", [iso(now)])
            return cur.rowcount

    # -- markers and events -------------------------------------------------------------------------------
    def record_marker(self, run_id: int | None, policy: str, node: str, marker: dict) -> int:
        return self._write(
            "INSERT INTO markers (run_id, policy, node, aim_set, group_name, node_marker, issued_at, applied_at, "
            "snapshot, snapshot_set, point, status, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, policy, node, marker.get("aim_set"), marker.get("group"), str(marker.get("id")),
             marker.get("issued_at") or iso(datetime.now(timezone.utc)), marker.get("applied_at"),
             marker.get("snapshot"), marker.get("snapshot_set"),
             marker.get("point"), marker.get("state"), marker.get("error")))

    def event(self, now: datetime, kind: str, message: str, policy: str | None = None,
              details: dict | None = None) -> None:
        self._write("INSERT INTO events (at, kind, policy, message, details) VALUES (?,?,?,?,?)",
                    (iso(now), kind, policy, message, json.dumps(details or {}, default=str)))

    # -- reading ---------------------------------------------------------------------------------------------
    def events(self, since: datetime | None = None, limit: int = 1000) -> list[dict]:
        """Orchestrator events (stalled and recovered AIM sets, reloads, interrupted runs), newest first."""
        rows = self.db.query("SELECT * FROM events WHERE at >= ? ORDER BY id DESC LIMIT ?",
                             [iso(since) if since else "", limit])
        return [{**r, "details": json.loads(r["details"] or "{}")} for r in rows]

    def history(self, policy: str | None = None, since: datetime | None = None, status: str | None = None,
                limit: int = 1000) -> list[dict]:
        where, args = [], []
        if policy:
            where.append("policy = ?")
            args.append(policy)
        if since:
            where.append("started_at >= ?")
            args.append(iso(since))
        if status:
            where.append("status = ?")
            args.append(status)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + \
              " ORDER BY started_at DESC, id DESC LIMIT ?"
        rows = list(self.db.query(sql, args + [limit]))
        for r in rows:
            r["details"] = json.loads(r["details"] or "{}")
        return rows

    def last_run(self, policy: str) -> dict | None:
        rows = self.history(policy=policy, limit=1)
        return rows[0] if rows else None

    def consecutive_failures(self, policy: str) -> int:
        n = 0
        for r in self.db.query("SELECT status FROM runs WHERE policy=? AND status NOT IN ('running','skipped') "
                               "ORDER BY started_at DESC, id DESC LIMIT 1000", [policy]):
            if r["status"] == "ok":
                break
            n += 1
        return n

    def last_scheduled(self, policy: str) -> str | None:
        row = self.db.execute("SELECT MAX(scheduled_for) FROM runs WHERE policy=?", [policy]).fetchone()
        return row[0] if row else None

    def set_schedule(self, rows: list[dict], now: datetime) -> None:
        """The running orchestrator's jobs and their next fire times (what `status` shows)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM schedule")
            conn.executemany("INSERT INTO schedule VALUES (?,?,?,?,?,?)",
                             [(r["policy"], r["kind"], r["trigger"], r["next_fire"], iso(now), r.get("rpo_objective"))
                              for r in rows])

    def schedule(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM schedule ORDER BY policy"))

    def set_service(self, **values: str) -> None:
        for k, v in values.items():
            self._write("INSERT OR REPLACE INTO service VALUES (?,?)", (k, v))

    def service(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self.db.query("SELECT key, value FROM service")}

    def request_run(self, policy: str, now: datetime) -> int:
        return self._write("INSERT INTO requests (policy, at) VALUES (?,?)", (policy, iso(now)))

    def take_requests(self, now: datetime) -> list[str]:
        with self.write_lock:
            rows = list(self.db.query("SELECT id, policy FROM requests WHERE taken_at IS NULL ORDER BY id"))
            for r in rows:
                self.db.execute("UPDATE requests SET taken_at=? WHERE id=?", [iso(now), r["id"]])
        return [r["policy"] for r in rows]

    def newest_recovery_point(self, policy: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM markers WHERE policy=? AND status='applied' "
                                  "ORDER BY issued_at DESC LIMIT 1", [policy]))
        return rows[0] if rows else None

    # -- open alerts (orchestrator.alerts) --------------------------------------------------------------
    def open_alerts(self) -> dict[str, dict]:
        """Alerts firing now, by key: rule, fired_at, details, and when each receiver was last told."""
        return {r["key"]: {**r, "details": json.loads(r["details"]), "sent": json.loads(r["sent"])}
                for r in self.db.query("SELECT * FROM alerts")}

    def save_alert(self, key: str, rule: str, fired_at: str, details: dict, sent: dict) -> None:
        self._write("INSERT OR REPLACE INTO alerts (key, rule, fired_at, details, sent) VALUES (?,?,?,?,?)",
                    (key, rule, fired_at, json.dumps(details, default=str), json.dumps(sent)))

    def close_alert(self, key: str) -> None:
        self._write("DELETE FROM alerts WHERE key=?", (key,))

    # -- summaries (status, metrics, the report and the demo read these) ------------------------------
    def run_counts(self) -> list[dict]:
        """Runs by policy and status: ``{"policy", "status", "n"}``."""
        return list(self.db.query("SELECT policy, status, COUNT(*) AS n FROM runs GROUP BY policy, status"))

    def last_finished_run(self, policy: str) -> dict | None:
        rows = list(self.db.query("SELECT id, status, error, started_at, finished_at FROM runs WHERE policy=? AND "
                                  "finished_at IS NOT "
                                  "NULL AND status IN ('ok','failed','timeout') ORDER BY id DESC LIMIT 1", [policy]))
        return rows[0] if rows else None

    def last_success_at(self, policy: str) -> str | None:
        return self.db.execute("SELECT MAX(finished_at) FROM runs WHERE policy=? AND status='ok'",
                               [policy]).fetchone()[0]

    def finished_since(self, policy: str, after: datetime) -> bool:
        """Whether a run of ``policy`` that started after ``after`` has finished."""
        return bool(list(self.db.query("SELECT id FROM runs WHERE policy=? AND status!='running' AND started_at > ?",
                                       [policy, iso(after)])))

    def markers(self) -> list[dict]:
        """Every recorded marker, oldest first."""
        return list(self.db.query("SELECT * FROM markers ORDER BY issued_at"))

    def applied_markers(self, policy: str | None = None) -> list[dict]:
        if policy is None:
            return list(self.db.query("SELECT policy, issued_at FROM markers WHERE status='applied' "
                                      "ORDER BY issued_at"))
        return list(self.db.query("SELECT policy, issued_at FROM markers WHERE policy=? AND status='applied' "
                                  "ORDER BY issued_at", [policy]))

    def recovery_points(self, policy: str) -> list[dict]:
        """One row per run that made a recovery point (a group's members count once): the first
        marker's issue and the last one's arrival."""
        return list(self.db.query("SELECT MIN(issued_at) AS issued_at, MAX(applied_at) AS applied_at FROM markers "
                                  "WHERE policy=? AND status='applied' GROUP BY run_id", [policy]))

    def aim_problems(self) -> list[dict]:
        """AIM sets whose latest watchdog report is a stall, an error or a fence: ``{"kind", "message"}``."""
        return [e for e in self.db.query(
            "SELECT kind, message FROM events WHERE id IN (SELECT MAX(id) FROM events WHERE kind IN "
            "('stalled','aim_error','aim_fenced','recovered') GROUP BY json_extract(details, '$.aim_set')) ORDER BY id")
            if e["kind"] != "recovered"]
