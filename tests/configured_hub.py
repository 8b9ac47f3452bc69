"""The JupyterHub configuration the gateway makes from the shipped example settings (with
local accounts), for tests of what one hub setting changes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from traitlets.config import Config

from bioimage_gateway.hub_config.configure import configure_hub
from bioimage_gateway.settings import parse_settings

EXAMPLE = Path(str(resources.files("bioimage_gateway").joinpath("examples", "gateway.example.yaml")))


def configured_hub(tmp_path: Path, **hub) -> Config:
    """``hub`` changes the example's ``hub:`` section; the data folder is in ``tmp_path``.

    Configuring a hub tunes the collector of the process it runs in: this test process's
    is left alone unless a test asks for ``gc_freeze``."""
    settings = yaml.safe_load(EXAMPLE.read_text())
    hub.setdefault("gc_freeze", False)
    settings["hub"].update(data_dir=str(tmp_path / "hub"), **hub)
    users = tmp_path / "users.json"
    users.write_text('[{"username": "ada", "password": "ada-demo", "groups": []}]')
    settings["auth"] = {"provider": "dummy", "users_file": str(users)}
    c = Config()
    configure_hub(c, parse_settings(settings))
    return c
