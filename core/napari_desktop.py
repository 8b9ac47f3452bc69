"""The session's desktop, where napari opens images: find it, start it, and what napari reads.

The desktop is jupyter-remote-desktop-proxy's: the Jupyter server starts TigerVNC's
``vncserver`` (Xvnc plus the site's xstartup, openbox) through jupyter-server-proxy the
first time ``<server>/desktop-websockify/`` is asked for, which the "Desktop" launcher card
does in the browser and :func:`start_desktop` does from a kernel.  The VNC side listens on
a UNIX socket in a private (0700) directory only; X clients need the cookie vncserver put
in the user's ``~/.Xauthority``.

A kernel finds its desktop among the user's own processes: the Xvnc that descends from the
kernel's Jupyter server (``JPY_PARENT_PID``), so another session of the same user on the
same node, or a VNC server the user started by hand, is never taken for it.

This module needs neither Qt nor napari; ``bioimage_gateway.widgets.napari`` opens the
viewer.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

XVNC_NAMES = ("Xtigervnc", "Xvnc")
# jupyter-server-proxy's socket for a server started on demand: mkdtemp(prefix=...)/socket
PROXY_SOCKET_MARK = "/jupyter-server-proxy-"
DESKTOP_PROXY_PATH = "desktop-websockify/"
X11_SOCKET_DIR = "/tmp/.X11-unix"
START_TIMEOUT = 60.0

HOW_TO_START = ("open the Desktop from the JupyterLab launcher (\"Desktop\" card) and try again")


class DesktopError(RuntimeError):
    """No desktop to draw on; the message says what to do."""


class NotStaged(ValueError):
    """A catalog image with no complete local copy: napari reads local OME-Zarr."""


@dataclass(frozen=True)
class Desktop:
    """One running desktop: its X display (``:1``), cookie file and Xvnc process."""

    display: str
    xauthority: str | None
    pid: int
    vnc_socket: str | None = None

    @property
    def number(self) -> int:
        return int(self.display.lstrip(":").split(".")[0])

    def environ(self) -> dict[str, str]:
        """What an X client (Qt) needs to draw here."""
        env = {"DISPLAY": self.display}
        if self.xauthority:
            env["XAUTHORITY"] = self.xauthority
        return env

    def answers(self, socket_dir: str = X11_SOCKET_DIR) -> bool:
        """True once the X server accepts connections on its UNIX socket; a DesktopError
        when the socket there is not this user's (another user on the node made it)."""
        path = f"{socket_dir}/X{self.number}"
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid():
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else (
                "not a socket" if not stat.S_ISSOCK(info.st_mode) else f"{_user(info.st_uid)}'s")
            raise DesktopError(f"{path}, the socket of display {self.display}, is {what}, not "
                               f"{_user(os.geteuid())}'s desktop: nothing is drawn there; "
                               f"{HOW_TO_START}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            try:
                sock.connect(path)
            except OSError:
                return False
        return True


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# --- finding it ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    name: str
    argv: tuple[str, ...]


def _own_processes(uid: int) -> dict[int, _Proc]:
    """This user's processes, from /proc (others' are of no interest and may be hidden)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            stat = Path(entry.path, "stat").read_text()
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        # "pid (name) state ppid ...": the name may hold spaces and parentheses
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        out[int(entry.name)] = _Proc(int(entry.name), ppid, name,
                                     tuple(a.decode(errors="replace") for a in argv if a))
    return out


def _descends_from(proc: _Proc, ancestor: int, procs: dict[int, _Proc]) -> bool:
    seen = set()
    pid = proc.ppid
    while pid > 1 and pid not in seen:
        if pid == ancestor:
            return True
        seen.add(pid)
        parent = procs.get(pid)
        if parent is None:
            return False
        pid = parent.ppid
    return False


def _option(argv: tuple[str, ...], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def server_pid() -> int:
    """The Jupyter server this kernel belongs to (jupyter_client tells its kernels)."""
    return int(os.environ.get("JPY_PARENT_PID") or os.getppid())


def find_desktop(server: int | None = None, uid: int | None = None) -> Desktop | None:
    """The desktop of the Jupyter server ``server`` (default: this kernel's), or None.

    Among the user's Xvnc processes that descend from the server, the one the proxy
    started (its VNC socket in jupyter-server-proxy's directory) comes first.
    """
    server = server_pid() if server is None else server
    procs = _own_processes(os.getuid() if uid is None else uid)
    found = []
    for proc in procs.values():
        if proc.name not in XVNC_NAMES or not _descends_from(proc, server, procs):
            continue
        display = next((a for a in proc.argv[1:] if a.startswith(":") and a[1:].isdigit()), None)
        if display is None:
            continue
        unix = _option(proc.argv, "-rfbunixpath")
        found.append(Desktop(display, _option(proc.argv, "-auth"), proc.pid, unix))
    found.sort(key=lambda d: (PROXY_SOCKET_MARK not in (d.vnc_socket or ""), d.pid))
    return found[0] if found else None


# --- starting it ----------------------------------------------------------------------------

def server_url() -> tuple[str, str]:
    """(base URL, token) of this session's Jupyter server, as JupyterHub gave them to it."""
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        raise DesktopError("this kernel is not in a JupyterHub session, so it cannot start the "
                           "session's desktop; run it in a BioImage Gateway session, or set DISPLAY "
                           "to a desktop of your own")
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        # The server listens on the node's address, on a port it bound itself, and says
        # which here (bioimage_gateway.extensions.session_identity).
        raise DesktopError(f"this kernel's server did not say where it listens ({url}): is "
                           "bioimage-gateway's session_identity extension enabled in the session "
                           "environment?")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{parts.port}"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme or "http", netloc, path, "", "")), token


def start_desktop(timeout: float = START_TIMEOUT) -> None:
    """Ask the Jupyter server to start the desktop, as opening it in the browser would.

    jupyter-server-proxy starts the VNC server on any request to its path and answers a
    plain (non-websocket) request with 405 once the server accepts connections.
    """
    base, token = server_url()
    request = urllib.request.Request(base + DESKTOP_PROXY_PATH,
                                     headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 405:  # started; the path speaks websocket only
            return
        if exc.code == 404:
            raise DesktopError("this session has no desktop: jupyter-remote-desktop-proxy is not "
                               "installed in the session environment") from None
        detail = exc.read().decode(errors="replace")[-300:].strip()
        raise DesktopError(f"the session's desktop did not start ({exc.code} {exc.reason}"
                           f"{': ' + detail if detail else ''}); {HOW_TO_START}") from None
    except OSError as exc:
        raise DesktopError(f"could not reach this session's Jupyter server at {base} to start "
                           f"the desktop ({exc}); {HOW_TO_START}") from None


def session_desktop(start: bool = True, timeout: float = START_TIMEOUT) -> Desktop:
    """This kernel's desktop, started first if it is not running (``start=False``: an error)."""
    desktop = find_desktop()
    if desktop is None:
        if not start:
            raise DesktopError(f"the session's desktop is not running; {HOW_TO_START}")
        start_desktop(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        desktop = desktop or find_desktop()
        if desktop is not None and desktop.answers():
            return desktop
        if time.monotonic() > deadline:
            raise DesktopError(f"the session's desktop did not come up within {timeout:.0f} s; "
                               f"{HOW_TO_START}")
        time.sleep(0.2)
        desktop = None


# --- what napari opens ----------------------------------------------------------------------

def _is_ome_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in (".zattrs", "zarr.json"))


def napari_source(path_or_url: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> str:
    """What napari-ome-zarr is given for ``path_or_url``: a local path (a ``file://`` URL
    too), an http(s) URL as it is, and for a catalog address (``irods://``, ``omero://``)
    its complete staged copy on scratch."""
    text = os.fspath(path_or_url)
    parts = urlsplit(text) if "://" in text else None
    if parts is None or parts.scheme == "file":
        path = Path(unquote(parts.path) if parts else text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no OME-Zarr image at {path}")
        if not _is_ome_zarr(path):
            raise ValueError(f"{path} is not an OME-Zarr image (no .zattrs or zarr.json in it)")
        return str(path.absolute())
    if parts.scheme in ("http", "https"):
        return text
    from bioimage_gateway.staging import StagingError, status
    try:
        found = status(text, cache_dir=cache_dir)
    except StagingError:
        found = []
    found = found if isinstance(found, list) else [found]
    complete = [d for d in found if d.get("state") == "complete"]
    if not complete:
        states = ", ".join(sorted({d.get("state", "?") for d in found})) or "not staged"
        raise NotStaged(f"{text} has no complete copy on scratch ({states}); napari reads local "
                        f"OME-Zarr: stage it first, e.g. stage({text!r}), then open it again")
    return max(complete, key=lambda d: d.get("updated", 0))["path"]


def napari_snippet(path_or_url: str | os.PathLike) -> str:
    """The line that opens ``path_or_url`` in napari on the session's desktop."""
    return f"viewer = open_in_napari({os.fspath(path_or_url)!r})"


NAPARI_IMPORT = "from bioimage_gateway.widgets import open_in_napari"
