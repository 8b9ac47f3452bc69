"""Folders a session keeps per user on a shared node: its user's alone, or refused.

A compute node is shared: in ``/tmp`` (or ``$TMPDIR``) any user can make the folder another
user's session will use by its well-known name (``bioimage-gateway-alice``) before that
session starts, or a symbolic link there to a folder of their own, and read or plant what
the session keeps there.  :func:`private_folder` makes such a folder (mode 0700, as the
session's user) or checks the one that is there: a real folder (not a link), the user's,
writable by no one else, in a parent folder no one else can swap it out of (the user's or
root's, and if others may write there, sticky as ``/tmp`` is).  Anything else is refused
with :class:`UnsafeFolder`, which names the path, its owner and what to do.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path


class UnsafeFolder(RuntimeError):
    """A folder the session was to keep its own that someone else made or can change."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _writable_by_others(info: os.stat_result) -> bool:
    return bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _refuse(path: Path, info: os.stat_result, why: str, what: str) -> UnsafeFolder:
    me = user_name(os.geteuid())
    return UnsafeFolder(
        f"refused {path} as the session's {what}: it {why} (owner {user_name(info.st_uid)}, "
        f"mode {stat.filemode(info.st_mode)}); a session keeps its {what} only in a folder that "
        f"{me} made and no one else can change: have it removed (its owner or an administrator "
        f"can), then start the session again")


def _check_parent(path: Path, what: str) -> None:
    info = os.stat(path.parent)  # the parent may be reached through a link (/tmp -> /var/tmp)
    if info.st_uid not in (0, os.geteuid()):
        raise _refuse(path.parent, info, f"belongs to {user_name(info.st_uid)}", what)
    if _writable_by_others(info) and not info.st_mode & stat.S_ISVTX:
        raise _refuse(path.parent, info, "is writable by others and not sticky", what)


def private_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder of this user's alone, made where missing (mode 0700; missing
    parents too, as the user's); ``what`` names it in a refusal ("runtime folder")."""
    path = Path(os.path.abspath(os.fspath(path)))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_parent(path, what)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # someone's: checked below like any other
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(path, info, "is a symbolic link", what)
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, info, "is not a folder", what)
    if info.st_uid != os.geteuid():
        raise _refuse(path, info, f"belongs to {user_name(info.st_uid)}", what)
    if _writable_by_others(info):
        raise _refuse(path, info, "is writable by others", what)
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)  # ours, and no one can swap it: readable by no one else either
    return path
