"""Fixtures for the staging tests: one sample OME-Zarr on disk (also served by Debian's nginx) and
in iRODS stand-ins (one fast, one with latency added to every request), a private scratch
directory per test. Everything started here is stopped by PID."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from staging_support import IMAGE, IMAGE_DIR, seeded, stop_standin  # noqa: E402



@pytest.fixture(scope="session")
def site():
    """A folder with the image and a few plain files, readable by nginx's workers."""
    from bioimage_gateway.devstack.samples import write_sample_image

    root = Path(tempfile.mkdtemp(prefix="gw-staging-site-", dir="/tmp"))
    try:
        write_sample_image(root / IMAGE_DIR, **IMAGE)
        (root / "plain").mkdir()
        (root / "plain" / "notes.txt").write_text("run 3\n")
        (root / "plain" / "sub").mkdir()
        (root / "plain" / "sub" / "table.csv").write_bytes(os.urandom(5000))
        for folder, _, files in os.walk(root):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(Path(folder, name), 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def irods(site):
    standin = seeded(site)
    try:
        yield standin
    finally:
        stop_standin(standin)


@pytest.fixture(scope="session")
def slow_irods(site):
    """A stand-in that sleeps 25 ms before every reply: a remote zone, slow enough to interrupt."""
    standin = seeded(site, latency_ms=25)
    try:
        yield standin
    finally:
        stop_standin(standin)


@pytest.fixture(scope="session")
def nginx(site):
    """Debian's nginx serving ``site`` on loopback (JSON autoindex); stopped by PID at the end."""
    from zarr_support import nginx_serving

    with nginx_serving(site) as server:
        yield server


@pytest.fixture
def scratch(monkeypatch):
    """A private scratch directory (and activity directory) for one test."""
    root = Path(tempfile.mkdtemp(prefix="gw-scratch-", dir="/tmp"))
    monkeypatch.setenv("BIOIMAGE_GATEWAY_SCRATCH", str(root / "scratch"))
    monkeypatch.setenv("BIOIMAGE_GATEWAY_ACTIVE_DIR", str(root / "active"))
    monkeypatch.setenv("BIOIMAGE_GATEWAY_ACTIVITY_INTERVAL", "1")
    monkeypatch.delenv("BIOIMAGE_GATEWAY_STAGING_QUOTA", raising=False)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
