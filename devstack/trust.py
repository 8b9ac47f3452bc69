"""What the local stack may trust on a machine it shares with local users.

The stack runs as root, and the demo users are real Unix users of the same
machine.  A state directory that one of them could have made or written
(``/tmp/bioimage-gateway-demo`` created ahead of the demo, a symlink, a
``devstack.json`` naming PIDs for root to kill), or a file in their home that
root writes through (``~/.irods/.irodsA -> /etc/shadow``), would hand root to
that user.  So:

* a state directory is made fresh (``mkdtemp``, mode 0700) or, when given, is
  refused unless it and every folder above it are owned by root and not
  writable by others (a sticky folder such as ``/tmp`` excepted above it);
* the stack's own files are read only when they are regular files owned by
  root, not writable by others, opened without following a symlink;
* files in a user's home are written by a process running as that user, which
  can do nothing there that the user could not do anyway.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import tempfile
from pathlib import Path


class UntrustedPath(RuntimeError):
    """A path the stack would have to trust is not safe from local users; the message says why."""


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_root_dir(path: Path, *, sticky_ok: bool = False) -> Path:
    """``path`` (absolute, no symlink anywhere in it), owned by root and writable by root alone
    (or sticky, such as ``/tmp``, with ``sticky_ok``: a folder to create something in); every
    folder above it owned by root and writable by root alone or sticky.  Raises
    :class:`UntrustedPath` naming the first component that fails."""
    path = Path(os.path.abspath(path))
    current = Path("/")
    parts = path.parts[1:]
    for depth, part in enumerate(parts):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            raise UntrustedPath(f"{current} does not exist") from None
        last = depth == len(parts) - 1
        if stat.S_ISLNK(info.st_mode):
            raise UntrustedPath(f"{current} is a symbolic link; the stack uses real folders only")
        if not stat.S_ISDIR(info.st_mode):
            raise UntrustedPath(f"{current} is not a folder")
        if info.st_uid != 0:
            raise UntrustedPath(f"{current} belongs to {_owner(info.st_uid)}, not root: another user "
                                f"could change what the stack (running as root) reads there")
        writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable_by_others and ((last and not sticky_ok) or not info.st_mode & stat.S_ISVTX):
            raise UntrustedPath(f"{current} is writable by other users (mode {stat.filemode(info.st_mode)}); "
                                f"the stack's state directory must be writable by root alone")
    return path


def prepare_state_dir(path: Path | None, prefix: str = "bioimage-gateway-") -> Path:
    """The stack's state directory: a fresh private one (``mkdtemp``, 0700) when ``path`` is
    None; else ``path``, made 0700 if it does not exist (in a folder that passes
    :func:`check_root_dir`), refused with :class:`UntrustedPath` when it does exist but fails
    that check."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    path = Path(os.path.abspath(path))
    if not os.path.lexists(path):
        check_root_dir(path.parent, sticky_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # made between the two calls: checked below like any other
            pass
    return check_root_dir(path)


def read_trusted_json(path: Path):
    """The JSON document in ``path``, a regular file owned by root and writable by root alone,
    in a folder that passes :func:`check_root_dir`; None when there is no such file.  Anything
    else raises :class:`UntrustedPath`: the stack never acts on (for example, kills PIDs from)
    a file that a local user could have written."""
    path = Path(path)
    check_root_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise UntrustedPath(f"{path} cannot be opened without following a link ({exc.strerror}); "
                            f"the stack does not read it") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UntrustedPath(f"{path} is not a file written by the stack (owner {_owner(info.st_uid)}, "
                                f"mode {stat.filemode(info.st_mode)}); the stack does not read it")
        return json.loads(f.read())


# Runs as the user (``subprocess.run(user=...)``): reads {relative path: [text, mode]} on stdin and
# writes each file in the user's home under a temporary name, then renames it into place, so a
# symbolic link planted at the final name is replaced, never written through.
_WRITE_FILES = r"""
import json, os, sys
home = os.path.expanduser("~")
for rel, (text, mode) in json.load(sys.stdin).items():
    final = os.path.join(home, rel)
    folder = os.path.dirname(final)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = os.path.join(folder, "." + os.path.basename(final) + ".tmp-" + str(os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, final)
"""


def write_user_files(username: str, files: dict[str, tuple[str, int]]) -> None:
    """Write ``files`` (path relative to the user's home -> (text, mode)) as the user ``username``,
    so that whatever the user put in their home (a symlink to ``/etc/shadow``) gains them nothing."""
    account = pwd.getpwnam(username)
    for rel in files:
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise ValueError(f"{rel!r} is not a path inside a home folder")
    result = subprocess.run(
        [sys.executable, "-I", "-c", _WRITE_FILES],
        input=json.dumps({rel: [text, mode] for rel, (text, mode) in files.items()}),
        user=account.pw_uid, group=account.pw_gid, extra_groups=[], umask=0o077,
        env={"HOME": account.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd="/", text=True, capture_output=True, timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"writing {', '.join(files)} in the home of {username} (as {username}) failed: "
                           f"{result.stderr.strip()[-1000:]}")


__all__ = ["UntrustedPath", "check_root_dir", "prepare_state_dir", "read_trusted_json", "write_user_files"]
