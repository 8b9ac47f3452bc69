"""The hub's database: no connection check transactions on SQLite, one commit per sign-in."""

from __future__ import annotations

import datetime

import pytest
from jupyterhub import orm
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from bioimage_gateway.hub_config import database


def statements(engine, action) -> list[str]:
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_):
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def transactions(session) -> None:
    for n in range(3):
        orm.User.find(session, "ada")
        session.commit()


@pytest.fixture
def unpatched():
    """JupyterHub's own connection check, put back after the test."""
    original = orm.register_ping_connection
    while hasattr(orm.register_ping_connection, "wrapped"):
        orm.register_ping_connection = orm.register_ping_connection.wrapped
    jupyterhub_check = orm.register_ping_connection
    yield jupyterhub_check
    orm.register_ping_connection = original


def new_session(tmp_path) -> Session:
    session = orm.new_session_factory(f"sqlite:///{tmp_path / 'hub.sqlite'}", reset=True)()
    session.add(orm.User(name="ada"))
    session.commit()
    return session


def test_a_sqlite_hub_runs_no_connection_check_per_transaction(tmp_path, unpatched):
    (tmp_path / "stock").mkdir()
    stock = new_session(tmp_path / "stock")
    seen_stock = statements(stock.get_bind(), lambda: transactions(stock))
    assert seen_stock.count("SELECT 1") == 3
    stock.close()

    database.skip_sqlite_connection_check()
    database.skip_sqlite_connection_check()  # configuring twice wraps once
    assert orm.register_ping_connection.wrapped is unpatched
    ours = new_session(tmp_path)
    seen = statements(ours.get_bind(), lambda: transactions(ours))
    assert "SELECT 1" not in seen
    assert seen == [s for s in seen_stock if s != "SELECT 1"]  # the lookups themselves run
    ours.close()


def test_a_postgresql_hub_keeps_jupyterhubs_connection_check(unpatched):
    database.skip_sqlite_connection_check()
    engine = create_engine("postgresql+psycopg://hub@127.0.0.1:9/jupyterhub")
    before = len(engine.dispatch.engine_connect)
    orm.register_ping_connection(engine)
    assert len(engine.dispatch.engine_connect) == before + 1


@pytest.fixture
def stamping():
    database.stamp_sign_in_activity()
    yield
    event.remove(Session, "before_flush", database._stamp_sign_in)


def test_a_sign_in_records_the_users_activity_in_the_same_commit(tmp_path, stamping):
    session = new_session(tmp_path)
    user = orm.User.find(session, "ada")
    user.last_activity = datetime.datetime(2026, 1, 1)
    session.commit()

    def sign_in():
        user.encrypted_auth_state = b"tokens of this sign-in"
        session.commit()

    before = datetime.datetime.utcnow()
    writes = [s for s in statements(session.get_bind(), sign_in) if s.startswith("UPDATE")]
    assert len(writes) == 1 and "last_activity" in writes[0]
    assert user.last_activity >= before
    # The next page within JupyterHub's activity resolution (30 s) then commits nothing.
    fresh = session.query(orm.User).filter_by(name="ada").one()
    assert (datetime.datetime.utcnow() - fresh.last_activity).total_seconds() < 30


def test_other_changes_to_a_user_are_not_activity(tmp_path, stamping):
    session = new_session(tmp_path)
    user = orm.User.find(session, "ada")
    user.last_activity = stamp = datetime.datetime(2026, 1, 1)
    session.commit()
    user.admin = True  # an admin's change, not the user's doing
    session.commit()
    assert session.query(orm.User).filter_by(name="ada").one().last_activity == stamp
