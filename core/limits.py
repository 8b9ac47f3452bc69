"""Per-group limits: a user gets the most generous limits among their groups."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from pydantic import BaseModel

Limits = TypeVar("Limits", bound=BaseModel)


def most_generous(by_group: Mapping[str, Limits], groups: Iterable[str], default: Limits) -> Limits:
    """Field by field, the largest value among the user's groups' limits; None means
    "no limit" and beats any number.  ``default`` when none of the groups is listed."""
    mine = [by_group[g] for g in sorted(set(groups)) if g in by_group]
    if not mine:
        return default

    def most(key: str):
        values = [getattr(limit, key) for limit in mine]
        return None if any(v is None for v in values) else max(values)

    return type(default)(**{key: most(key) for key in type(default).model_fields})
