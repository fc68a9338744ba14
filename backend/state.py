"""Per-project key/value state in SQLite (MODEL_DIR/cache.db), as label-studio-ml 2.x keeps it.

Label Studio sends a project's extra params only to /setup, so they are stored here and read back
when /predict comes. Values are strings; safe across threads and gunicorn workers. A database that
is damaged (or not SQLite at all) is moved aside to ``cache.db.corrupt-<time>`` and started afresh:
it holds only what Label Studio sends again (configs, extra params at the next /setup) and quality
counters, so losing it costs little and refusing to start would cost much.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class ProjectState:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._local = threading.local()
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
            log.error("state database %s is damaged (%s): moved to %s, starting a new one", path, exc, aside)
            self._local.db.close()
            self._local.db = None
            path.rename(aside)
            self._open()

    def _open(self) -> None:
        db = self._connect()
        with db:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections may not cross threads); a new one when the
        database file was deleted or replaced under us, which SQLite would otherwise keep using unseen."""
        db, inode = getattr(self._local, "db", None), getattr(self._local, "inode", None)
        try:
            current = self.path.stat().st_ino
        except FileNotFoundError:
            current = None
        if db is not None and current != inode:
            log.warning("state database %s was deleted or replaced: opening it anew", self.path)
            db.close()
            db = None
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=10)
            db.execute("CREATE TABLE IF NOT EXISTS state (project TEXT, key TEXT, value TEXT, PRIMARY KEY (project, key))")
            self._local.inode = self.path.stat().st_ino
        return db

    def get(self, project: str, key: str) -> str | None:
        with self._lock, self._connect() as db:
            row = db.execute("SELECT value FROM state WHERE project = ? AND key = ?", (project, key)).fetchone()
        return row[0] if row else None

    def set(self, project: str, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"state values are strings; got {type(value).__name__} for {key!r}")
        with self._lock, self._connect() as db:
            # Every request re-sets the label config and model version; skipping unchanged values
            # spares a write transaction (most of this class's cost) per request.
            row = db.execute("SELECT value FROM state WHERE project = ? AND key = ?", (project, key)).fetchone()
            if row is None or row[0] != value:
                db.execute("INSERT OR REPLACE INTO state (project, key, value) VALUES (?, ?, ?)", (project, key, value))

    def projects_with(self, key: str) -> dict[str, str]:
        """{project: value} of every project that has ``key``."""
        with self._lock, self._connect() as db:
            rows = db.execute("SELECT project, value FROM state WHERE key = ?", (key,)).fetchall()
        return dict(rows)
