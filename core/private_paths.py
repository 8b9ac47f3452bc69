"""Folders and files of one user that no one else can reach or swap (Dask's per-user paths).

Several users share a compute node and the shared file system.  A folder another user made
where ours will be (``/tmp/dask-alice``), or a symbolic link there, would let them read or
replace what we write.  Hence:

* ``private_directory(path)`` returns ``path`` as a folder of the user's own, mode 0700, made
  (0700) when missing (``create_parents``: the missing folders on the way too, each 0700 and
  checked once made).  Every folder on the way from ``/`` is checked first: above the user's
  own part a folder must belong to root or the user and be writable by no one else unless it is
  sticky (``/tmp``), where no one can rename or remove what another made; from the first folder
  the user owns, each must be the user's and writable by no one else.  A symbolic link on the
  way must belong to root or the user (the folder holding it was checked already), and its
  target is checked the same way; ``path`` itself is never a link.  An existing ``path`` of the
  user's is set to 0700; one of someone else's is refused.
* ``new_private_directory(parent, name)``: a folder that did not exist before (``mkdir`` fails
  on anything already there), 0700, in a checked parent.
* ``write_private_file(folder, name, data)``: a new file, 0600, never through a link.
* ``remove_private_directory(path)``: removes one of the user's folders, never through a link.

Refusals are ``PrivatePathError`` (a ``PermissionError``): what the folder is for, the path,
its owner and why.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from pathlib import Path

MAX_LINKS = 40  # as the kernel's limit on symbolic links followed in one path
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the terminating NUL included


class PrivatePathError(PermissionError):
    """A folder or file that must be the user's alone is not; ``path`` and ``owner`` say which."""

    def __init__(self, message: str, path: str, owner: str | None = None):
        super().__init__(message)
        self.path = path
        self.owner = owner

    def __str__(self) -> str:
        return self.args[0]


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _refuse(what: str, target: str, path: str, info: os.stat_result,
            why: str) -> PrivatePathError:
    """The refusal of ``target`` (``what``: what it is for) because of ``path`` (itself, or a
    folder on the way to it)."""
    me, owner = owner_name(os.geteuid()), owner_name(info.st_uid)
    where = "it" if path == target else f"{path}, on the way to it,"
    return PrivatePathError(
        f"{what} {target} refused: {where} {why} (owner {owner}, mode "
        f"{stat.filemode(info.st_mode)}); it must be a folder that {me} made, mode 0700, in "
        "folders no one else can change: remove it or have it removed", path, owner)


def _writable_by_others(info: os.stat_result) -> bool:
    return bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _check_on_the_way(what: str, target: str, path: str, info: os.stat_result,
                      own: bool) -> None:
    me = os.geteuid()
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(what, target, path, info, "is not a folder")
    if own:
        if info.st_uid != me:
            raise _refuse(what, target, path, info, f"belongs to {owner_name(info.st_uid)}, "
                                                    f"inside {owner_name(me)}'s own folders")
        if _writable_by_others(info):
            raise _refuse(what, target, path, info, "is writable by others")
    elif info.st_uid not in (0, me):
        raise _refuse(what, target, path, info, f"belongs to {owner_name(info.st_uid)}, "
                                                f"neither root nor {owner_name(me)}")
    elif _writable_by_others(info) and not info.st_mode & stat.S_ISVTX:
        raise _refuse(what, target, path, info, "is writable by others and not sticky")


def _check_leaf(what: str, path: str, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(what, path, path, info, f"is a symbolic link (to {os.readlink(path)}) "
                                              f"of {owner_name(info.st_uid)}'s")
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(what, path, path, info, "is not a folder")
    if info.st_uid != os.geteuid():
        raise _refuse(what, path, path, info, f"belongs to {owner_name(info.st_uid)}, "
                                              f"not to {owner_name(os.geteuid())}")


def _checked_parent(what: str, target: str, create: bool = False) -> str:
    """The folder ``target`` is in, after checking every folder from ``/`` down to it (the
    module's rules); ``create``: missing folders are made (0700) and checked like the others."""
    parent = os.path.dirname(target)
    me = os.geteuid()
    todo = parent.split("/")[1:]
    current, own, links = "/", False, 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":  # only from a link's target
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            if not create:
                raise PrivatePathError(f"{what} {target} refused: {candidate}, on the way to "
                                       "it, does not exist", candidate) from None
            try:
                os.mkdir(candidate, 0o700)
            except FileExistsError:  # made meanwhile, by someone: checked below like any other
                pass
            info = os.lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in (0, me) or (own and info.st_uid != me) or links >= MAX_LINKS:
                raise _refuse(what, target, candidate, info, "is a symbolic link of someone "
                              "else's" if links < MAX_LINKS else "leads through too many links")
            links += 1
            link = os.readlink(candidate)
            if link.startswith("/"):
                current, own = "/", False
            todo = link.split("/") + todo
            continue
        if me != 0 and info.st_uid == me:
            own = True
        _check_on_the_way(what, target, candidate, info, own)
        current = candidate
    return current


def private_directory(path: str | os.PathLike, what: str = "folder",
                      create_parents: bool = False) -> Path:
    """``path`` (absolute) as a folder of the user's alone, mode 0700; made when missing (its
    parent must exist, unless ``create_parents``).  ``what`` names it in a refusal (``Dask spill
    directory``)."""
    target = os.path.abspath(os.fspath(path))
    if target == "/":
        raise PrivatePathError(f"{what}: / cannot be a private folder", target)
    _checked_parent(what, target, create_parents)
    try:
        os.mkdir(target, 0o700)
    except FileExistsError:
        pass  # someone's, or ours from before: checked below like any other
    info = os.lstat(target)
    _check_leaf(what, target, info)
    if stat.S_IMODE(info.st_mode) != 0o700:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return Path(target)


def new_private_directory(parent: Path, name: str, what: str = "folder") -> Path:
    """``parent/name``, made now (0700) inside a private ``parent``; anything already there is
    refused."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a folder name")
    path = parent / name
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise _refuse(what, str(path), str(path), os.lstat(path), "exists already") from None
    _check_leaf(what, str(path), os.lstat(path))
    return path


def write_private_file(folder: Path, name: str, data: bytes) -> Path:
    """A new file ``folder/name`` (mode 0600) holding ``data``; never through a link, never over
    an existing file."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)
    return path


def read_private_file(path: Path, limit: int = 64 * 1024) -> bytes | None:
    """The start of a regular file of the user's (not a link); None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # none there, or a link
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def check_socket_path(path: str) -> None:
    """Refuse a Unix socket path longer than the kernel takes (it would be cut short)."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise PrivatePathError(
            f"the Unix socket {path} is longer than {MAX_SOCKET_PATH} bytes, the most a socket's "
            "path may have: choose a folder with a shorter path", path)


def remove_private_directory(path: str | os.PathLike) -> bool:
    """Remove one of the user's folders and what is in it, never through a link (a link or a
    folder of someone else's there is left alone).  True when it is gone."""
    path = os.fspath(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    # On Linux rmtree works from folder descriptors and never follows a link inside.
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


__all__ = ["PrivatePathError", "check_socket_path", "new_private_directory", "owner_name",
           "private_directory", "read_private_file", "remove_private_directory",
           "write_private_file"]
