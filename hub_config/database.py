"""The hub's SQLite database in write-ahead-log mode.

A sign-in burst is a few thousand short transactions on the hub's one event loop, and
SQLite's default rollback journal makes every commit wait for two or more fsyncs.  In WAL
mode with synchronous=NORMAL a commit is a write to the log, synced at checkpoints: a power
cut can lose the last commits (a sign-in, an activity stamp), never the database.
"""

from __future__ import annotations

import sqlite3


class WalConnection(sqlite3.Connection):
    """A connection to a database file in WAL mode, synced at checkpoints."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")


def sqlite_wal_kwargs() -> dict:
    """JupyterHub's ``db_kwargs`` for its SQLite engine: connections in WAL mode (and
    JupyterHub's own default for SQLite, which setting ``connect_args`` replaces)."""
    return {"connect_args": {"check_same_thread": False, "factory": WalConnection}}
