"""napari on the session's desktop: alice's real session (hub -> Slurm job), her kernel, her
desktop; the sample images of the devstack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import logged_in  # noqa: E402
from support_kernel import SessionKernel  # noqa: E402

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "2", "gpus": "0", "walltime_hours": "1"}


@pytest.fixture(scope="module")
def sample_image(devstack) -> Path:
    """A sample OME-Zarr of the devstack (readable by the demo users) with 2 channels."""
    path = next(Path(p) for p in devstack.record()["data_services"]["samples"]
                if p.endswith("hela-cells-timelapse.ome.zarr"))
    return path


@pytest.fixture(scope="module")
def sample_attrs(sample_image) -> dict:
    return json.loads((sample_image / ".zattrs").read_text())


@pytest.fixture(scope="module")
def alice_session(hub, devstack):
    """alice's running session, her JupyterLab opened (her cookie for her server)."""
    devstack.write_client_files()  # the demo users' ~/.irods point at this stack's iRODS
    client = logged_in(hub.url, "alice")
    assert client.submit_form(CPU).status_code == 302
    client.wait_ready()
    assert client.open_lab().status_code == 200
    yield client
    client.stop()


@pytest.fixture(scope="module")
def alice_kernel(alice_session):
    kernel = SessionKernel(alice_session, "alice")
    yield kernel
    if alice_session.server() is not None:  # a test may have stopped the session
        kernel.shutdown()
