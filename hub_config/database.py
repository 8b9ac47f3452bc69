"""How the hub uses its database: what each commit and each transaction costs.

A sign-in burst is a few thousand short transactions on the hub's one event loop, so
per-transaction costs that buy nothing add up:

- SQLite's default rollback journal makes every commit wait for two or more fsyncs;
- JupyterHub checks every connection it takes from the pool with ``SELECT 1`` in a
  transaction of its own, to find a database server that dropped the connection;
  a SQLite file has no server (two of these per sign-in);
- a sign-in commits the user's new auth state, and the first page after it commits
  the user's activity again (JupyterHub records activity once per 30 s).

The first two are SQLite's (PostgreSQL, the production option, keeps JupyterHub's
connection check); the sign-in's activity is written with its auth state on either.
"""

from __future__ import annotations

import sqlite3

from jupyterhub import orm
from jupyterhub.utils import utcnow
from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session


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


def skip_sqlite_connection_check() -> None:
    """No ``SELECT 1`` transaction per pooled connection when the database is a SQLite file."""
    register = orm.register_ping_connection
    if hasattr(register, "wrapped"):
        return

    def register_ping_connection(engine) -> None:
        if engine.dialect.name != "sqlite":
            register(engine)

    register_ping_connection.wrapped = register
    # new_session_factory looks the function up in its module when the hub opens its database.
    orm.register_ping_connection = register_ping_connection


def _stamp_sign_in(session: Session, _context, _instances) -> None:
    for obj in session.dirty:
        if isinstance(obj, orm.User) and \
                inspect(obj).attrs.encrypted_auth_state.history.has_changes():
            obj.last_activity = utcnow(with_tz=False)


def stamp_sign_in_activity() -> None:
    """A sign-in (a new auth state) is the user's activity, written in the same commit."""
    if not event.contains(Session, "before_flush", _stamp_sign_in):
        event.listen(Session, "before_flush", _stamp_sign_in)


def tune_sqlite() -> None:
    use_sqlite_wal()
    skip_sqlite_connection_check()
