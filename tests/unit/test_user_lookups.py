"""One user looked up by name or cookie: one query for a user the hub holds, the same answers."""

from __future__ import annotations

import pytest
from jupyterhub import orm
from sqlalchemy import event
from sqlalchemy.orm import Session

from bioimage_gateway.hub_config import user_lookups


@pytest.fixture
def db(tmp_path):
    """JupyterHub's own schema and session factory, on a SQLite file."""
    session = orm.new_session_factory(f"sqlite:///{tmp_path / 'hub.sqlite'}", reset=True)()
    for n in range(30):
        user = orm.User(name=f"user{n}")
        session.add(user)
    group = orm.Group(name="imaging")
    session.add(group)
    session.commit()
    for user in session.query(orm.User):
        user.groups.append(group)
    session.commit()
    yield session
    session.close()


@pytest.fixture
def installed():
    user_lookups.install()
    yield
    event.remove(Session, "do_orm_execute", user_lookups._lazy_relationships)


def statements(session, action) -> list[str]:
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_):
        seen.append(" ".join(statement.split()))

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return [s for s in seen if s != "SELECT 1"]  # JupyterHub's connection ping


def test_a_held_user_costs_one_query_where_jupyterhub_alone_reloads_its_relationships(db):
    held = orm.User.find(db, "user3")  # held, as the hub holds every user it has seen
    assert held.groups
    before = statements(db, lambda: orm.User.find(db, "user3"))
    assert len(before) > 3  # the eager loads again (SQLAlchemy does not skip loaded ones)
    user_lookups.install()
    try:
        by_name = statements(db, lambda: orm.User.find(db, "user3"))
        cookie = orm.User.find(db, "user3").cookie_id
        by_cookie = statements(
            db, lambda: db.query(orm.User).filter(orm.User.cookie_id == cookie).first())
    finally:
        event.remove(Session, "do_orm_execute", user_lookups._lazy_relationships)
    assert len(by_name) == 1 and by_name[0].startswith("SELECT users.")
    assert len(by_cookie) == 1


def test_a_user_not_held_yet_still_reads_its_groups_and_roles(db, tmp_path, installed):
    role = orm.Role(name="user", scopes=["self"])
    db.add(role)
    user = orm.User.find(db, "user7")
    user.roles.append(role)
    db.commit()
    fresh = orm.new_session_factory(f"sqlite:///{tmp_path / 'hub.sqlite'}")()
    try:
        cold = orm.User.find(fresh, "user7")
        assert [g.name for g in cold.groups] == ["imaging"]
        assert [r.name for r in cold.roles] == ["user"]
        assert orm.User.find(fresh, "nobody") is None
    finally:
        fresh.close()


def test_a_change_made_by_the_hub_shows_in_the_next_lookup(db, installed):
    user = orm.User.find(db, "user1")
    assert [g.name for g in user.groups] == ["imaging"]
    db.add(orm.Group(name="trainers"))
    user.groups.append(orm.Group.find(db, "trainers"))
    db.commit()
    assert sorted(g.name for g in orm.User.find(db, "user1").groups) == ["imaging", "trainers"]


def test_listing_many_users_keeps_its_batched_loads(tmp_path, db, installed):
    fresh = orm.new_session_factory(f"sqlite:///{tmp_path / 'hub.sqlite'}")()
    try:
        def listing():
            users = fresh.query(orm.User).order_by(orm.User.id).all()
            assert all(u.groups[0].name == "imaging" for u in users)
        # One query for the users and a few batched ones for their relationships,
        # not one more per user.
        assert len(statements(fresh, listing)) < 10
    finally:
        fresh.close()


def test_only_single_user_lookups_by_a_unique_column_are_changed():
    assert user_lookups.is_single_user_lookup(
        orm.User.__table__.select().where(orm.User.name == "a")) is False  # not an ORM entity
    from sqlalchemy import select
    assert user_lookups.is_single_user_lookup(select(orm.User).where(orm.User.name == "a"))
    assert user_lookups.is_single_user_lookup(select(orm.User).where(orm.User.cookie_id == "c"))
    assert not user_lookups.is_single_user_lookup(select(orm.User).where(orm.User.admin == True))  # noqa: E712
    assert not user_lookups.is_single_user_lookup(select(orm.User).where(orm.User.name.in_(["a", "b"])))
    assert not user_lookups.is_single_user_lookup(select(orm.User))
    assert not user_lookups.is_single_user_lookup(select(orm.Group).where(orm.Group.name == "a"))
