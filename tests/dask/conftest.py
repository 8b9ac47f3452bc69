"""Dask clusters on the real local Slurm: the devstack of tests/conftest.py, a site
``dask:`` section, a small OME-Zarr image, and Python processes run as alice."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from support_dask import (  # noqa: E402
    DASK_SETTINGS,
    UserPython,
    jobs_named,
    wait_for,
    write_ome_zarr,
)


@pytest.fixture(scope="session")
def dask_site(devstack):
    """A gateway.yaml with a ``dask:`` section (kept apart from the hub's own file,
    which GatewaySettings validates without that section for now)."""
    record = devstack.record()
    settings = yaml.safe_load(Path(record["gateway_yaml"]).read_text())
    settings["dask"] = DASK_SETTINGS
    path = devstack.state_dir / "gateway-dask.yaml"
    path.write_text(yaml.safe_dump(settings))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="session")
def ome_zarr_image(devstack):
    return write_ome_zarr(devstack.state_dir / "data" / "sample.ome.zarr")


@pytest.fixture(scope="session")
def alice_env(devstack, dask_site):
    """The variables a session of alice's gives her kernel (outside a session job)."""
    return {
        "SLURM_CONF": str(devstack.slurm().conf),
        "BIOIMAGE_GATEWAY_CONFIG": str(dask_site),
        "BIOIMAGE_GATEWAY_GROUPS": "imaging",
        "BIOIMAGE_GATEWAY_PARTITION": "interactive",
        "BIOIMAGE_GATEWAY_PROFILE": "cpu",
    }


@pytest.fixture
def as_alice(alice_env):
    """A Python process of alice's (a stand-in for her kernel), closed after the test."""
    python = UserPython("alice", alice_env)
    yield python
    python.close()


@pytest.fixture(autouse=True)
def no_worker_jobs_left(request):
    """Every Dask test leaves no worker job of alice's behind."""
    yield
    if "devstack" not in request.fixturenames:
        return
    env = {"SLURM_CONF": str(request.getfixturevalue("devstack").slurm().conf)}
    wait_for(lambda: not jobs_named(env, "alice"), 60, "alice's Dask worker jobs to leave")
