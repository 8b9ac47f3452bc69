"""Example notebooks, copied into the user's home at server start.

The JupyterLab extension's launcher card opens ``bioimage-gateway/getting-started.ipynb``.
A copy the user has changed is never overwritten; one they have not (its hash is still the
one recorded when it was copied) follows the gateway's updates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

EXAMPLES_DIR = "bioimage-gateway"
COPIED = ".copied.json"  # name -> sha256 of what was copied, to tell the user's edits apart


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install_examples(root: Path) -> list[Path]:
    """Copy the shipped notebooks into ``root/bioimage-gateway/`` where missing, or where the
    copy there is unchanged since it was copied and the shipped one is newer."""
    target = root / EXAMPLES_DIR
    target.mkdir(exist_ok=True)
    try:
        copied_hashes = json.loads((target / COPIED).read_text())
    except (OSError, ValueError):
        copied_hashes = {}
    copied = []
    for source in resources.files(__package__).joinpath("notebooks").iterdir():
        if not source.name.endswith(".ipynb"):
            continue
        mine = target / source.name
        with resources.as_file(source) as path:
            shipped = _sha256(path)
            if mine.exists() and (_sha256(mine) == shipped or _sha256(mine) != copied_hashes.get(source.name)):
                continue  # up to date, or the user's own version now
            shutil.copyfile(path, mine)
        copied_hashes[source.name] = shipped
        copied.append(mine)
    if copied:
        (target / COPIED).write_text(json.dumps(copied_hashes, indent=1) + "\n")
    return copied


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.examples"}]


def _load_jupyter_server_extension(serverapp) -> None:
    root = Path(serverapp.root_dir).expanduser()
    try:
        for path in install_examples(root):
            serverapp.log.info("bioimage-gateway: example notebook %s", path)
    except OSError as exc:  # a read-only home must not stop the session
        serverapp.log.warning("bioimage-gateway: no example notebooks (%s)", exc)
