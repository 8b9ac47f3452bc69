"""The session's desktop: jupyter-remote-desktop-proxy's "Desktop", on the site's xstartup.

jupyter-remote-desktop-proxy serves noVNC at ``<server>/desktop/`` and has
jupyter-server-proxy run TigerVNC's ``vncserver`` on demand with the VNC side on a UNIX
socket in a private (0700) directory, no TCP port and no VNC password: only requests that
pass the Jupyter server's own authentication (the session's user, through the hub) reach
it.  Its session program is ``$JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP``, else
``~/.vnc/xstartup``, else its own, which starts xfce4 (not installed on the nodes).  This
extension points the variable at the site's xstartup (openbox) unless the user has an
xstartup of their own or the variable is already set, and tells the desktop which process
is its Jupyter server (``BIOIMAGE_GATEWAY_SERVER_PID``): the site xstartup stops the desktop
when that process is gone, however it ended.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from traitlets import Unicode, default
from traitlets.config import Configurable

XSTARTUP_VARIABLE = "JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP"
SERVER_PID_VARIABLE = "BIOIMAGE_GATEWAY_SERVER_PID"


class GatewayDesktop(Configurable):
    xstartup = Unicode(
        help="Program that starts the desktop's session (window manager) inside the VNC server."
    ).tag(config=True)

    @default("xstartup")
    def _default_xstartup(self):
        # installed there by `make venv` from images/session/desktop/
        return str(Path(sys.prefix) / "share" / "bioimage-gateway" / "desktop" / "xstartup")


def choose_xstartup(configured: str, environ=os.environ, home: Path | None = None) -> str | None:
    """The xstartup to hand jupyter-remote-desktop-proxy, or None to leave its choice alone."""
    if environ.get(XSTARTUP_VARIABLE):
        return None
    if ((home or Path.home()) / ".vnc" / "xstartup").exists():
        return None  # the user's own desktop session
    return configured if os.access(configured, os.X_OK) else None


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.desktop"}]


def _link_jupyter_server_extension(serverapp) -> None:
    # Linking happens before any extension loads; jupyter-server-proxy reads the variable
    # (through jupyter-remote-desktop-proxy's entry point) when it loads.
    os.environ[SERVER_PID_VARIABLE] = str(os.getpid())
    configured = GatewayDesktop(parent=serverapp).xstartup
    chosen = choose_xstartup(configured)
    if chosen:
        os.environ[XSTARTUP_VARIABLE] = chosen
        serverapp.log.info("bioimage-gateway: desktop session from %s", chosen)
    elif not os.access(configured, os.X_OK):
        serverapp.log.warning("bioimage-gateway: no desktop xstartup at %s", configured)


def _load_jupyter_server_extension(serverapp) -> None:
    pass
