from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import logged_in, start_hub  # noqa: E402

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
