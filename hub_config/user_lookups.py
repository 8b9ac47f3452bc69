"""Finding one user by name, cookie or id without reloading what the hub already holds.

JupyterHub looks the user of every page up by cookie id (and, at sign-in, by name). The
user's relationships (roles, groups, shares and those of the groups) are "selectin" eager
loads, and SQLAlchemy runs them again for a user already in the session, although it does
not replace a collection that is loaded: five more queries per request that change nothing.
JupyterHub's session never expires its objects and it keeps every user it has seen, so
those loads only cost time (a fifth of the hub's CPU in a burst of sign-ins).

For a query of one user by a unique column the eager loads become lazy ones: a user the hub
holds needs the one query, a user it does not hold yet loads each relationship when it is
first read, as before. Queries of many users (the admin page, the idle culler) keep their
batched eager loads.
"""

from __future__ import annotations

from jupyterhub import orm
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, lazyload
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression

UNIQUE_COLUMNS = frozenset({"id", "name", "cookie_id"})


def is_single_user_lookup(statement) -> bool:
    """A SELECT of users whose WHERE is ``users.<unique column> = value``."""
    entities = [d.get("entity") for d in getattr(statement, "column_descriptions", ())]
    if entities != [orm.User]:
        return False
    where = getattr(statement, "whereclause", None)
    if not isinstance(where, BinaryExpression) or where.operator is not operators.eq:
        return False
    column = where.left
    return getattr(column, "table", None) is orm.User.__table__ and column.key in UNIQUE_COLUMNS


def _lazy_relationships(state: ORMExecuteState) -> None:
    if state.is_select and not state.is_column_load and not state.is_relationship_load \
            and is_single_user_lookup(state.statement):
        state.statement = state.statement.options(lazyload("*"))


def install() -> None:
    """For every session of this process (the hub has one)."""
    if not event.contains(Session, "do_orm_execute", _lazy_relationships):
        event.listen(Session, "do_orm_execute", _lazy_relationships)
