"""Busy kernels and running staging transfers count as activity for the hub.

The hub's idle culler stops sessions whose last activity is older than the
site's timeout.  Jupyter counts requests and kernel messages; a kernel busy
for hours on one cell, or a long download to scratch, sends none, and would
look idle.  This server extension marks the server active while any kernel is
busy or any transfer is running, through jupyter_server's hook: every setting
whose name ends in ``_last_activity`` counts.

Transfers announce themselves by touching a file in :data:`ACTIVE_DIR`
(one per transfer) at least every ``BIOIMAGE_GATEWAY_ACTIVITY_INTERVAL``
seconds while they run.  The server makes that folder the user's alone
(mode 0700) when it starts; one that another user made or can change, or a
link, is refused (:mod:`.private_folder`) and its files do not count.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

from tornado.ioloop import PeriodicCallback

from .private_folder import UnsafeFolder, private_folder

SETTING = "bioimage_gateway_last_activity"
ACTIVE_DIR = Path(os.environ.get(
    "BIOIMAGE_GATEWAY_ACTIVE_DIR", Path.home() / ".local/state/bioimage-gateway/active"
))


def check_interval() -> float:
    return float(os.environ.get("BIOIMAGE_GATEWAY_ACTIVITY_INTERVAL", "60"))


def busy_kernels(kernel_manager) -> int:
    return sum(
        1 for kernel_id in kernel_manager.list_kernel_ids()
        if getattr(kernel_manager.get_kernel(kernel_id), "execution_state", "") == "busy"
    )


def running_transfers(directory: Path = ACTIVE_DIR, max_age: float | None = None) -> int:
    max_age = max_age or 2 * check_interval()
    now = time.time()
    try:
        return sum(1 for f in directory.iterdir() if now - f.stat().st_mtime < max_age)
    except FileNotFoundError:
        return 0


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.activity"}]


def _mark_if_active(serverapp, transfers_dir: Path | None) -> None:
    busy = busy_kernels(serverapp.kernel_manager)
    transfers = running_transfers(transfers_dir) if transfers_dir else 0
    if busy or transfers:
        serverapp.web_app.settings[SETTING] = datetime.now(timezone.utc)
        serverapp.log.debug("activity: %d busy kernel(s), %d transfer(s)", busy, transfers)


def _load_jupyter_server_extension(serverapp) -> None:
    try:
        transfers_dir = private_folder(ACTIVE_DIR, "activity folder")
    except (UnsafeFolder, OSError) as exc:
        serverapp.log.error("bioimage-gateway: transfers do not count as activity: %s", exc)
        transfers_dir = None
    callback = PeriodicCallback(lambda: _mark_if_active(serverapp, transfers_dir),
                                check_interval() * 1000)
    callback.start()
    serverapp.log.info("bioimage-gateway: busy kernels%s count as activity",
                       f" and transfers in {transfers_dir}" if transfers_dir else "")
