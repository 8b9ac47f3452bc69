"""One user or role looked up by a unique column: answered from the hub's session when it
holds the object, the same answers as the database gives, no stale ones."""

from __future__ import annotations

import gc

import pytest
from jupyterhub import orm
from jupyterhub.roles import assign_default_roles
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from bioimage_gateway.hub_config import user_lookups


@pytest.fixture
def db(tmp_path):
    """JupyterHub's own schema and session factory, on a SQLite file."""
    session = orm.new_session_factory(f"sqlite:///{tmp_path / 'hub.sqlite'}", reset=True)()
    group = orm.Group(name="imaging")
    session.add(group)
    for name in ("user", "admin"):
        session.add(orm.Role(name=name, scopes=["self"]))
    for n in range(30):
        session.add(orm.User(name=f"user{n}", groups=[group]))
    session.commit()
    yield session
    session.close()


@pytest.fixture
def installed():
    user_lookups.install()
    yield
    user_lookups.uninstall()


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


def by_cookie(db, cookie_id):
    # JupyterHub's lookup of the user of a page (handlers/base.py, _user_for_cookie)
    return db.query(orm.User).filter(orm.User.cookie_id == cookie_id).first()


def test_a_returning_users_sign_in_asks_the_database_only_to_store_it(db, installed):
    user = orm.User.find(db, "user3")
    cookie = user.cookie_id
    assign_default_roles(db, user)  # JupyterHub, at every sign-in
    db.commit()

    def sign_in():
        # what JupyterHub looks up when the user signs in again and opens the spawn page
        assert orm.User.find(db, "user3") is user
        assign_default_roles(db, user)
        user.encrypted_auth_state = b"new tokens"
        db.commit()
        assert by_cookie(db, cookie) is user

    seen = statements(db, sign_in)
    assert len(seen) == 1 and seen[0].startswith("UPDATE users SET encrypted_auth_state")


def test_without_it_jupyterhub_reloads_the_user_and_its_relationships(db):
    user = orm.User.find(db, "user3")
    assert user.groups
    seen = statements(db, lambda: orm.User.find(db, "user3"))
    assert len(seen) > 3  # the user, then the eager loads of what the session already has


def test_a_role_no_one_holds_is_still_answered_after_garbage_collection(db, installed):
    assert orm.Role.find(db, "admin").name == "admin"
    gc.collect()  # the session's identity map holds objects weakly
    assert statements(db, lambda: orm.Role.find(db, "admin")) == []


def test_a_role_lookup_does_not_load_every_user_who_has_it(db, installed):
    role = orm.Role.find(db, "user")
    for user in db.query(orm.User):
        user.roles.append(role)
    db.commit()
    db.expunge_all()
    seen = statements(db, lambda: orm.Role.find(db, "user"))
    assert len(seen) == 1 and seen[0].startswith("SELECT roles.")
    assert len(orm.Role.find(db, "user").users) == 30  # loaded when read


def test_the_answers_match_a_fresh_session_reading_the_database(db, tmp_path, installed):
    held = {n: orm.User.find(db, f"user{n}") for n in range(30)}
    fresh = orm.new_session_factory(f"sqlite:///{tmp_path / 'hub.sqlite'}")()
    try:
        for n, user in held.items():
            stored = orm.User.find(fresh, f"user{n}")
            assert (user.id, user.name, user.cookie_id) == (stored.id, stored.name, stored.cookie_id)
            assert by_cookie(db, stored.cookie_id) is user
            assert db.query(orm.User).filter(orm.User.id == stored.id).one() is user
        assert orm.User.find(db, "nobody") is None
        assert by_cookie(db, "no-such-cookie") is None
    finally:
        fresh.close()


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_a_renamed_user_is_found_by_the_name_it_has_now(db, installed, ending):
    user = orm.User.find(db, "user5")
    user.name = "renamed"  # not flushed yet: the lookup must still see it
    assert orm.User.find(db, "user5") is None
    assert orm.User.find(db, "renamed") is user
    getattr(db, ending)()
    now, before = ("renamed", "user5") if ending == "commit" else ("user5", "renamed")
    assert orm.User.find(db, before) is None
    assert orm.User.find(db, now) is user


def test_a_deleted_user_is_not_found_before_or_after_the_commit(db, installed):
    user = orm.User.find(db, "user7")
    cookie = user.cookie_id
    db.delete(user)
    assert orm.User.find(db, "user7") is None  # pending: the query's flush shows it
    db.commit()
    assert orm.User.find(db, "user7") is None
    assert by_cookie(db, cookie) is None
    assert all(held is not user for held in user_lookups._sessions[db]._found.values())


def test_a_user_created_in_this_session_is_found_before_and_after_the_flush(db, installed):
    db.add(orm.User(name="newcomer"))
    newcomer = orm.User.find(db, "newcomer")  # pending: the query flushes it
    assert newcomer is not None
    db.commit()
    assert statements(db, lambda: orm.User.find(db, "newcomer")) == []
    assert statements(db, lambda: by_cookie(db, newcomer.cookie_id)) == []


def test_a_user_not_held_yet_still_reads_its_groups_and_roles(db, tmp_path, installed):
    user = orm.User.find(db, "user8")
    user.roles.append(orm.Role.find(db, "user"))
    db.commit()
    fresh = orm.new_session_factory(f"sqlite:///{tmp_path / 'hub.sqlite'}")()
    try:
        cold = orm.User.find(fresh, "user8")
        assert [g.name for g in cold.groups] == ["imaging"]
        assert [r.name for r in cold.roles] == ["user"]
    finally:
        fresh.close()


def test_a_change_made_by_the_hub_shows_in_the_next_lookup(db, installed):
    user = orm.User.find(db, "user1")
    db.add(orm.Group(name="trainers"))
    user.groups.append(orm.Group.find(db, "trainers"))
    user.admin = True
    db.commit()
    again = orm.User.find(db, "user1")
    assert sorted(g.name for g in again.groups) == ["imaging", "trainers"] and again.admin


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


def test_queries_that_are_not_one_row_by_a_unique_column_ask_the_database(db, installed):
    user = orm.User.find(db, "user2")
    asks = [
        lambda: db.query(orm.User.id).filter(orm.User.name == "user2").first(),  # a column
        lambda: db.query(orm.User).filter(orm.User.admin == False).first(),  # noqa: E712
        lambda: db.query(orm.User).filter(orm.User.name.in_(["user2"])).first(),
        lambda: db.query(orm.User).filter(orm.User.name == "user2").offset(1).first(),
        lambda: db.query(orm.User).join(orm.User.groups).filter(orm.User.name == "user2").first(),
        lambda: db.query(orm.User).filter(orm.User.name == "user2").populate_existing().first(),
        lambda: db.execute(select(orm.User).where(orm.User.name == "user2")
                           .execution_options(populate_existing=True)).scalar_one(),
    ]
    for ask in asks:
        assert statements(db, ask), ask
    assert db.query(orm.User.id).filter(orm.User.name == "user2").first() == (user.id,)
    assert db.query(orm.User).filter(orm.User.name == "user2").offset(1).first() is None
    assert db.execute(select(orm.User).where(orm.User.name == "user2")).scalar_one() is user


def test_only_lookups_of_one_row_by_a_unique_column_are_recognised():
    assert user_lookups.single_lookup(orm.User.__table__.select().where(orm.User.name == "a")) is None
    assert user_lookups.single_lookup(select(orm.User).where(orm.User.name == "a")) == (
        orm.User, "name", "a")
    assert user_lookups.single_lookup(select(orm.User).where(orm.User.cookie_id == "c")) == (
        orm.User, "cookie_id", "c")
    assert user_lookups.single_lookup(select(orm.Role).where(orm.Role.name == "user")) == (
        orm.Role, "name", "user")
    assert user_lookups.single_lookup(select(orm.User).where(orm.User.admin == True)) is None  # noqa: E712
    assert user_lookups.single_lookup(select(orm.User)) is None
    assert user_lookups.single_lookup(select(orm.Group).where(orm.Group.name == "a")) is None
    assert user_lookups.single_lookup(select(orm.User).where(orm.User.name == "a").limit(0)) is None


def test_installing_twice_listens_once():
    user_lookups.install()
    user_lookups.install()
    # One removal leaves nothing behind, so the second install added nothing.
    event.remove(Session, "do_orm_execute", user_lookups._answer_from_session)
    try:
        assert not event.contains(Session, "do_orm_execute", user_lookups._answer_from_session)
    finally:
        user_lookups.uninstall()
