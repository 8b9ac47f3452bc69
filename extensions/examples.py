"""Example notebooks, copied into the user's home at server start (never overwritten).

The JupyterLab extension's launcher card opens ``bioimage-gateway/getting-started.ipynb``.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

EXAMPLES_DIR = "bioimage-gateway"


def install_examples(root: Path) -> list[Path]:
    """Copy the shipped notebooks into ``root/bioimage-gateway/`` where missing."""
    target = root / EXAMPLES_DIR
    target.mkdir(exist_ok=True)
    copied = []
    for source in resources.files(__package__).joinpath("notebooks").iterdir():
        if source.name.endswith(".ipynb") and not (target / source.name).exists():
            with resources.as_file(source) as path:
                shutil.copyfile(path, target / source.name)
            copied.append(target / source.name)
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
