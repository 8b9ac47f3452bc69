"""The hub's SQLite database in write-ahead-log mode.

A sign-in burst is a few thousand short transactions on the hub's one event loop; SQLite's
default rollback journal makes every commit wait for two or more fsyncs.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import event
from sqlalchemy.engine import Engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def use_sqlite_wal() -> None:
    """The hub's SQLite database in write-ahead-log mode, synced at checkpoints.

    With WAL and synchronous=NORMAL a commit is a write to the log; a power cut can
    lose the last commits (a login, an activity stamp), never the database.
    """
    if not event.contains(Engine, "connect", _sqlite_pragmas):
        event.listen(Engine, "connect", _sqlite_pragmas)
