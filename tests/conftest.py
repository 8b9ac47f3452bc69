from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from support import logged_in  # noqa: E402

from bioimage_gateway.devstack.demo import HubProcess  # noqa: E402
from bioimage_gateway.devstack.processes import free_port  # noqa: E402
from bioimage_gateway.devstack.stack import Devstack  # noqa: E402


@pytest.fixture(scope="session")
def devstack():
    """The real local Slurm stack, in a state directory the demo users can read."""
    state_dir = Path(tempfile.mkdtemp(prefix="gw-test-", dir="/tmp"))
    stack = Devstack(state_dir)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        if not os.environ.get("KEEP_STATE"):
            shutil.rmtree(state_dir, ignore_errors=True)


def start_hub(devstack, name: str = "hub", **session_changes) -> HubProcess:
    """A hub on the devstack; a name other than "hub" gets its own ports and database."""
    record = devstack.record()
    settings_path = Path(record["gateway_yaml"])
    if name != "hub":
        settings = yaml.safe_load(settings_path.read_text())
        port = free_port()
        settings["hub"].update(
            port=port, public_url=f"http://127.0.0.1:{port}", api_port=free_port(),
            proxy_api_port=free_port(), data_dir=str(devstack.state_dir / name),
        )
        settings["session"].update(session_changes)
        settings_path = devstack.state_dir / f"{name}.yaml"
        settings_path.write_text(yaml.safe_dump(settings))
    process = HubProcess(settings_path, devstack.state_dir,
                         log_path=devstack.state_dir / f"{name}.log")
    process.start()
    return process


@pytest.fixture(scope="session")
def hub(devstack):
    process = start_hub(devstack)
    yield process
    process.stop()


@pytest.fixture
def slurm(devstack):
    return devstack.slurm()


@pytest.fixture
def alice(hub):
    c = logged_in(hub.url, "alice")
    yield c
    c.stop()


@pytest.fixture
def bob(hub):
    c = logged_in(hub.url, "bob")
    yield c
    c.stop()
