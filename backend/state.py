"""Per-project key/value state in SQLite (MODEL_DIR/cache.db), as label-studio-ml 2.x keeps it.

Label Studio sends a project's extra params only to /setup, so they are stored here and read back
when /predict comes. Values are strings; safe across threads and gunicorn workers.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class ProjectState:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._local = threading.local()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS state (project TEXT, key TEXT, value TEXT, PRIMARY KEY (project, key))")

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection, opened once (sqlite3 connections may not cross threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=10)
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
