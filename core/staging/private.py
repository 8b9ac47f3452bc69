"""The staging cache trusts only what this user made.

Scratch is often writable by everyone (``/scratch``, mode 1777): another user can make
``/scratch/alice/...`` before alice does, put an entry there whose manifest says complete, or a
symbolic link where her cache or a file in it will be. Hence:

* ``private_dir(path)`` checks every folder from ``/`` down to ``path`` (``create=True`` makes
  the missing ones, mode 0700, one at a time, each checked once made). Above the user's own
  part a folder must belong to root or the user and be writable by no one else unless it is
  sticky (as ``/tmp`` and ``/scratch`` are, where no one can remove or rename what another
  made). From the first folder the user owns down to ``path`` every folder must be the user's
  and writable by no one else. A symbolic link on the way must belong to root or the user (in
  the user's part: the user), in a folder where no one else could have made or replaced it
  (``~/scratch -> /scratch/alice``, ``/scratch -> /gpfs/scratch``), and its target is checked
  the same way from ``/``; ``path`` itself is never a link. Run as root, every folder is held to
  the rules for those above a user's part (root's own, writable by no one else unless sticky).
* ``own_dir(path)``: one folder (an entry, a destination) that must be the user's, not a link.
* ``open_own(path, flags)`` opens a file without following a symbolic link (``O_NOFOLLOW``) and
  checks what it opened (``fstat``): a regular file, the user's, writable by no one else.
* ``make_folders(root, rel)`` makes folders below a checked root, never through a link.

Refusals are ``UntrustedPath``, naming the path and its owner. The checks cost a few ``lstat``
calls per stage and one per folder made, never one per object.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import stat
from pathlib import Path

from .errors import UntrustedPath

MAX_LINKS = 40  # as the kernel's limit on symbolic links followed in one path


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _me() -> int:
    return os.geteuid()


def _refuse(path: str, info: os.stat_result, why: str) -> UntrustedPath:
    owner = owner_name(info.st_uid)
    return UntrustedPath(f"refused {path}: it {why} (owner {owner}, mode {stat.filemode(info.st_mode)}); the "
                         f"staging cache uses only folders and files that {owner_name(_me())} made and no one "
                         f"else can change; remove it, or stage elsewhere (cache_dir=, dest=)", path, owner)


def _writable_by_others(info: os.stat_result) -> bool:
    return bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _check_folder(path: str, info: os.stat_result, own: bool) -> None:
    me = _me()
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, info, "is not a folder")
    if own:
        if info.st_uid != me:
            raise _refuse(path, info, f"belongs to {owner_name(info.st_uid)}, in {owner_name(me)}'s own folders")
        if _writable_by_others(info):
            raise _refuse(path, info, "is writable by others")
        return
    if info.st_uid not in (0, me):
        raise _refuse(path, info, f"belongs to {owner_name(info.st_uid)}, neither root nor {owner_name(me)}")
    if _writable_by_others(info) and not info.st_mode & stat.S_ISVTX:
        raise _refuse(path, info, "is writable by others and not sticky")


def private_dir(path: str | os.PathLike, *, create: bool = False) -> Path:
    """``path`` (absolute) after checking every folder down to it (see the module's doc);
    ``create``: the missing ones are made (mode 0700), else the check stops at the first
    missing one (nothing there to trust yet)."""
    target = os.path.abspath(os.fspath(path))
    me = _me()
    todo = target.split("/")[1:]
    current, own, links = "/", False, 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":  # only from a link's target: the folder above the one reached
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        last = not todo
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            if not create:
                return Path(target)
            try:
                os.mkdir(candidate, 0o700)
            except FileExistsError:  # made meanwhile, by someone: checked below like any other
                pass
            info = os.lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            if last or info.st_uid not in (0, me) or (own and info.st_uid != me) or links >= MAX_LINKS:
                why = "is a symbolic link" if last or links < MAX_LINKS else "leads through too many links"
                raise _refuse(candidate, info, why)
            links += 1
            link = os.readlink(candidate)
            if link.startswith("/"):  # a new chain from the top: held to the rules from there
                current, own = "/", False
            todo = link.split("/") + todo
            continue
        if me != 0 and info.st_uid == me:
            own = True
        _check_folder(candidate, info, own)
        current = candidate
    return Path(target)


def own_dir(path: str | os.PathLike, *, create: bool = False, private: bool = False) -> Path:
    """One folder (an entry, a destination) that must be the user's and not a symbolic link; its
    parents are where the user chose (``dest=``). ``create``: made where missing (parents too)
    and set to mode 0700, after which no one else can change what is in it (and what someone
    else put there before is refused file by file: ``open_own``, ``make_folders``).
    ``private``: it must be writable by no one else already (a cache's entry, made 0700)."""
    path = Path(os.path.abspath(os.fspath(path)))
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(str(path), info, "is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(str(path), info, "is not a folder")
    if info.st_uid != _me():
        raise _refuse(str(path), info, f"belongs to {owner_name(info.st_uid)}")
    if private and _writable_by_others(info):
        raise _refuse(str(path), info, "is writable by others")
    if create and stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def open_own(path: str | os.PathLike, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symbolic link, of a regular file that is the user's and
    writable by no one else (checked on what was opened: ``fstat``)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last part is a symbolic link
            raise _refuse(os.fspath(path), os.lstat(path), "is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(os.fspath(path), info, "is not a regular file")
        if info.st_uid != _me():
            raise _refuse(os.fspath(path), info, f"belongs to {owner_name(info.st_uid)}")
        if _writable_by_others(info):
            raise _refuse(os.fspath(path), info, "is writable by others")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_own(path: str | os.PathLike) -> bytes | None:
    """The content of one of the user's files (``open_own``); None when there is none."""
    try:
        fd = open_own(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_own_json(path: str | os.PathLike) -> dict | None:
    """A JSON object from one of the user's files; None when there is none or it is not one
    (a torn write); ``UntrustedPath`` when someone else's."""
    try:
        data = read_own(path)
    except UntrustedPath:
        raise
    except OSError:
        return None
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def make_folders(root: str, rel: str, made: set[str] | None = None) -> str:
    """``root/rel`` made (with the folders between) where missing, each a real folder of the
    user's, never a symbolic link (``rel`` is a checked key's folder). ``made``: folders
    checked already (by this transfer), skipped."""
    path = root
    for part in rel.split("/") if rel else ():
        path = f"{path}/{part}"
        if made is not None and path in made:
            continue
        try:
            os.mkdir(path)
        except FileExistsError:
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != _me():
                raise _refuse(path, info, "is a symbolic link" if stat.S_ISLNK(info.st_mode) else
                              "is not a folder of the staged copy's") from None
        if made is not None:
            made.add(path)
    return path


__all__ = ["UntrustedPath", "private_dir", "own_dir", "open_own", "read_own", "read_own_json", "make_folders",
           "owner_name"]
