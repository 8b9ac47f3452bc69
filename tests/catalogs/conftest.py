"""Fixtures: an iRODS stand-in (a subprocess on 127.0.0.1, state in a temp dir, stopped by PID),
seeded through the real python-irodsclient where it matters and through the seeding API for bulk."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from irods_support import USERS, ZONE, seed, start_standin, stop_standin  # noqa: E402

from bioimage_gateway.catalogs import IrodsCatalog  # noqa: E402


@pytest.fixture(scope="session")
def irods():
    """One stand-in for the session, seeded; stopped by PID at the end."""
    standin = start_standin()
    try:
        seed(standin)
        yield standin
    finally:
        stop_standin(standin)


@pytest.fixture
def alice(irods):
    catalog = IrodsCatalog(irods.host, irods.port, "alice", ZONE, USERS["alice"])
    yield catalog
    catalog.close()


@pytest.fixture
def requests_made(irods):
    """A function giving the number of API requests the stand-in answered so far (all, or one API)."""
    def count(api: str | None = None) -> int:
        status = irods.status()
        return status["requests"] if api is None else status["by_api"].get(api, 0)
    return count
