"""Finding one user or role by a unique column without asking the database again.

JupyterHub looks the user of every page up by cookie id, at each sign-in by name, and the
``user`` and ``admin`` roles by name: four queries per sign-in, each of them a few tenths
of a millisecond of SQLAlchemy's work, the largest part of what the hub does for a user
signing in. JupyterHub's one session never expires its objects and keeps every user it has
seen (its own user cache holds them), so the answer is already in the session.

Such a lookup (``SELECT`` of one mapped class ``WHERE <unique column> = value``, nothing
joined) is answered from the objects this session has loaded before, when

* the object is still in the session's identity map, persistent and not expired, and its
  column still holds that value as loaded or as changed here (a rename is seen at once);
* the session has no pending new or deleted objects, which only a flush would show.

Anything else runs the query, as before, and remembers what it found. A user or role the
session does not hold yet is loaded without its eager ("selectin") relationship loads, and
each relationship loads when first read: for a role, the eager load would read every user
who has it. Queries of many users (the admin page, the idle culler) keep their batched loads.
"""

from __future__ import annotations

import weakref

from jupyterhub import orm
from sqlalchemy import event, inspect
from sqlalchemy.orm import ORMExecuteState, Session, lazyload
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter

# The mapped classes answered from the session, and their unique columns.
UNIQUE_COLUMNS: dict[type, frozenset[str]] = {
    orm.User: frozenset({"id", "name", "cookie_id"}),
    orm.Role: frozenset({"id", "name"}),
}
# Parts of a SELECT that would make its answer differ from "the one row with that value".
_NARROWING = ("_setup_joins", "_from_obj", "_offset_clause", "_for_update_arg",
              "_group_by_clauses", "_having_criteria")
_ABSENT = object()


def single_lookup(statement) -> tuple[type, str, object] | None:
    """(class, column, value) for a SELECT of one mapped class in UNIQUE_COLUMNS whose
    WHERE is ``<unique column> = value`` and nothing else narrows; else None."""
    descriptions = getattr(statement, "column_descriptions", ())
    if len(descriptions) != 1:
        return None
    cls = descriptions[0].get("expr")  # the class itself, not one of its columns
    if not isinstance(cls, type) or cls not in UNIQUE_COLUMNS:
        return None
    where = getattr(statement, "whereclause", None)
    if not isinstance(where, BinaryExpression) or where.operator is not operators.eq:
        return None
    column, value = where.left, where.right
    if getattr(column, "table", None) is not cls.__table__ or column.key not in UNIQUE_COLUMNS[cls]:
        return None
    if not isinstance(value, BindParameter) or value.callable is not None:
        return None
    for part in _NARROWING:
        found = getattr(statement, part, _ABSENT)
        if not (found is None or (isinstance(found, tuple) and not found)):
            return None  # set, or an SQLAlchemy that names it otherwise: ask the database
    try:
        limit = statement._limit
    except Exception:  # noqa: BLE001 - not a plain number, or no such attribute
        return None
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        return None
    return cls, column.key, value.value


class SessionLookups:
    """What one session has found by unique column, and a result of the same shape to
    hand objects back in.

    It holds the objects themselves: the session's identity map holds them only weakly,
    and a role no user has (``admin``) would be gone by the next lookup.
    """

    def __init__(self) -> None:
        self._found: dict[tuple[type, str, object], object] = {}
        self._held_under: dict[int, set[tuple[type, str, object]]] = {}  # by id() of held
        self._result_shapes: dict[type, object] = {}

    def held(self, session: Session, lookup: tuple[type, str, object]):
        """The object the session holds for this lookup, or None to ask the database."""
        obj = self._found.get(lookup)
        if obj is None or lookup[0] not in self._result_shapes or session.new or session.deleted:
            return None
        state = inspect(obj)
        _cls, column, value = lookup
        # state.dict holds what is loaded (or changed here); reading it loads nothing.
        if state.session_id != session.hash_key or not state.persistent \
                or state.dict.get(column, _ABSENT) != value:
            del self._found[lookup]
            return None
        return obj

    def answer(self, cls: type, obj):
        return self._result_shapes[cls].with_new_rows([(obj,)])()

    def forget(self, obj) -> None:
        for lookup in self._held_under.pop(id(obj), ()):
            if self._found.get(lookup) is obj:
                del self._found[lookup]

    def remember(self, cls: type, frozen) -> None:
        self._result_shapes.setdefault(cls, frozen)
        for row in frozen.data:
            self.hold(row if isinstance(row, cls) else row[0])

    def hold(self, obj) -> None:
        cls, values = type(obj), inspect(obj).dict
        lookups = self._held_under.setdefault(id(obj), set())
        for column in UNIQUE_COLUMNS[cls]:
            value = values.get(column, _ABSENT)
            if value is not _ABSENT and value is not None:
                self._found[(cls, column, value)] = obj
                lookups.add((cls, column, value))


_sessions: weakref.WeakKeyDictionary[Session, SessionLookups] = weakref.WeakKeyDictionary()


def _lookups_of(session: Session) -> SessionLookups:
    lookups = _sessions.get(session)
    if lookups is None:
        lookups = _sessions[session] = SessionLookups()
    return lookups


def _answer_from_session(state: ORMExecuteState):
    mapper = state.bind_mapper
    if mapper is None or mapper.class_ not in UNIQUE_COLUMNS:
        return None
    if not state.is_select or state.is_column_load or state.is_relationship_load:
        return None
    if state.parameters or state.load_options._populate_existing \
            or state.execution_options.get("populate_existing"):
        return None
    lookup = single_lookup(state.statement)
    if lookup is None:
        return None
    cls = lookup[0]
    lookups = _lookups_of(state.session)
    obj = lookups.held(state.session, lookup)
    if obj is not None:
        return lookups.answer(cls, obj)
    frozen = state.invoke_statement(statement=state.statement.options(lazyload("*"))).freeze()
    lookups.remember(cls, frozen)
    return frozen()


def _hold_new(session: Session, instance) -> None:
    """A user or role this session has just inserted (a first sign-in) is held too."""
    if type(instance) in UNIQUE_COLUMNS:
        _lookups_of(session).hold(instance)


def _forget(session: Session, instance) -> None:
    """A deleted or detached user or role is not held for the session any more."""
    lookups = _sessions.get(session)
    if lookups is not None and type(instance) in UNIQUE_COLUMNS:
        lookups.forget(instance)


_LISTENERS = (("do_orm_execute", _answer_from_session), ("pending_to_persistent", _hold_new),
              ("persistent_to_deleted", _forget), ("persistent_to_detached", _forget))


def install() -> None:
    """For every session of this process (the hub has one)."""
    for name, listener in _LISTENERS:
        if not event.contains(Session, name, listener):
            event.listen(Session, name, listener)


def uninstall() -> None:
    for name, listener in _LISTENERS:
        if event.contains(Session, name, listener):
            event.remove(Session, name, listener)
    _sessions.clear()
