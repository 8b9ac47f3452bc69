"""The hub's SQLite database: in write-ahead-log mode unless the site switches it off."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from configured_hub import configured_hub
from jupyterhub import orm


def hub_database(tmp_path: Path, **hub) -> tuple[Path, int]:
    """The hub's database file once JupyterHub has opened it with the gateway's
    configuration and stored a user, and the synchronous level of the hub's connection."""
    c = configured_hub(tmp_path, **hub)
    # What JupyterHub does with the configuration when it starts (JupyterHub.init_db).
    session = orm.new_session_factory(c.JupyterHub.db_url, **c.JupyterHub.get("db_kwargs", {}))()
    try:
        session.add(orm.User(name="ada"))
        session.commit()
        synchronous = session.execute(orm.text("PRAGMA synchronous")).scalar()
    finally:
        session.close()
        session.get_bind().dispose()
    return tmp_path / "hub" / "jupyterhub.sqlite", synchronous


def journal_mode(database: Path) -> str:
    """The mode recorded in the file, as any other program opening it finds it."""
    with sqlite3.connect(database) as reader:
        return reader.execute("PRAGMA journal_mode").fetchone()[0]


def test_the_hubs_database_is_in_wal_mode_synced_at_checkpoints(tmp_path):
    database, synchronous = hub_database(tmp_path)
    assert journal_mode(database) == "wal"
    assert synchronous == 1  # NORMAL: a commit is a write to the log, no fsync
    with sqlite3.connect(database) as reader:  # what the hub committed is there
        assert reader.execute("SELECT name FROM users").fetchall() == [("ada",)]


def test_a_site_can_keep_sqlites_rollback_journal(tmp_path):
    database, synchronous = hub_database(tmp_path, sqlite_wal=False)
    assert journal_mode(database) == "delete"
    assert synchronous == 2  # SQLite's default, FULL
