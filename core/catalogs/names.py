"""Names that come from a catalog, checked before they name anything on disk.

A listing, a redirect, a query's answer or an image's metadata is the server's word, and a
server can be hostile or broken. A name such as ``..``, ``../../.bashrc`` (also when it arrived
percent- or JSON-encoded, ``..%2F``, ``..\\u002f``, and was decoded on the way) or ``/etc/x``
would put a staged file outside the folder meant for it. So every name that becomes part of a
local path goes through ``check_name`` (one file or folder name) or ``check_key`` (a relative
path of such names) first, after any decoding. The refusal, ``UnsafeName``, says what is wrong,
shows the name and the address it came from.
"""

from __future__ import annotations

from .base import InvalidPath

_DOTS = (".", "..")


class UnsafeName(InvalidPath):
    """A catalog gave a name that cannot be a file name where it would go: empty, ``.``/``..``,
    with a ``/`` (or absolute) where one name was expected, or with a NUL byte. ``name`` is the
    name, ``path`` the address it came from."""

    def __init__(self, message: str, path: str | None, name):
        super().__init__(message, path)
        self.name = name


def name_problem(name) -> str | None:
    """What makes ``name`` unusable as one file or folder name, or None when it is fine."""
    if not isinstance(name, str):
        return f"is not text ({type(name).__name__})"
    if not name:
        return "is empty"
    if "\0" in name:
        return "contains a NUL byte"
    if "/" in name:
        return "is absolute" if name.startswith("/") else "contains '/'"
    if name in _DOTS:
        return f"is {name!r}"
    return None


def check_name(name, came_from: str | None, what: str = "name") -> str:
    """``name`` when it is one usable file or folder name, else ``UnsafeName``."""
    problem = name_problem(name)
    if problem is not None:
        raise UnsafeName(f"refused the {what} {name!r} from {came_from}: it {problem}; a {what} must "
                         f"be one file or folder name (not empty, not '.' or '..', no '/' or NUL byte)",
                         came_from, name)
    return name


def safe_key(key) -> bool:
    """Whether ``key`` is a relative path of usable names (``a/b/c``); a few string operations,
    as a plan checks ten thousand keys."""
    if (isinstance(key, str) and key and key[0] != "/" and key[-1] != "/" and "\0" not in key
            and "//" not in key and key not in _DOTS and not key.startswith(("./", "../"))):
        # "/." is mostly a name starting with a dot (".zattrs"): only then look closer
        return "/." not in key or not any(s in _DOTS for s in key.split("/"))
    return False


def check_key(key, came_from: str | None, what: str = "path") -> str:
    """``key`` when it is a relative path of usable names (``a/b/c``), else ``UnsafeName``
    naming the part at fault."""
    if safe_key(key):
        return key
    if not isinstance(key, str) or not key or "\0" in key:
        check_name(key, came_from, what)  # says why
    if key.startswith("/"):
        raise UnsafeName(f"refused the {what} {key!r} from {came_from}: it is absolute; it must be "
                         f"relative, inside the folder it goes to", came_from, key)
    for segment in key.split("/"):
        problem = name_problem(segment)
        if problem is not None:
            raise UnsafeName(f"refused the {what} {key!r} from {came_from}: its part {segment!r} {problem}; "
                             f"each part must be one file or folder name (not empty, not '.' or '..')",
                             came_from, key)
    raise AssertionError(f"safe_key and check_key disagree on {key!r}")


__all__ = ["UnsafeName", "check_name", "check_key", "name_problem", "safe_key"]
