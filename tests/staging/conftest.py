"""Fixtures for the staging tests: one sample OME-Zarr on disk (also served by Debian's nginx) and
in iRODS stand-ins (one fast, one with latency added to every request), a private scratch
directory per test. Everything started here is stopped by PID."""

from __future__ import annotations

import os
import shutil
import subprocess
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
        # The test nginx lists /html/ (an alias of study1/) as HTML, not JSON; /html itself (a
        # stage's address, without its slash) is redirected there because html/ exists.
        (root / "study1").mkdir()
        (root / "study1" / "cells.txt").write_text("cells\n")
        (root / "html").mkdir()
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
    monkeypatch.delenv("BIOIMAGE_GATEWAY_STAGING", raising=False)  # the site's defaults, no quota
    monkeypatch.delenv("BIOIMAGE_GATEWAY_CONFIG", raising=False)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def small_scratch(scratch, monkeypatch):
    """Scratch on a real, small file system: ``small_scratch("256k")`` mounts a tmpfs of that size
    (as root) and makes it the test's scratch; unmounted after the test. The returned object's
    ``fill()`` takes every byte left (another user's job filling the disk), ``release()`` gives
    them back."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the tests run as root in make test)")
    mounted = []

    def mount(size: str) -> SmallFileSystem:
        mount_point = scratch / f"small-{len(mounted)}"
        mount_point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "gw-small-scratch",
                        str(mount_point)], check=True, capture_output=True, text=True)
        mounted.append(mount_point)
        monkeypatch.setenv("BIOIMAGE_GATEWAY_SCRATCH", str(mount_point / "scratch"))
        return SmallFileSystem(mount_point)

    try:
        yield mount
    finally:
        for mount_point in mounted:
            done = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
            if done.returncode != 0:  # still busy (a process the test could not stop): detach it
                subprocess.run(["umount", "-l", str(mount_point)], check=True)


class SmallFileSystem:
    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler"

    def free(self) -> int:
        return shutil.disk_usage(self.root).free

    def listing(self) -> dict[str, int]:
        """Every file and folder under the mount, with file sizes."""
        out = {}
        for folder, dirs, files in os.walk(self.root):
            for name in dirs:
                out[os.path.relpath(os.path.join(folder, name), self.root) + "/"] = 0
            for name in files:
                path = os.path.join(folder, name)
                out[os.path.relpath(path, self.root)] = os.lstat(path).st_size
        return out

    def fill(self) -> None:
        with open(self.filler, "ab", buffering=0) as f:
            for block in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        f.write(b"\0" * block)
                except OSError:
                    continue

    def release(self) -> None:
        self.filler.unlink()


@pytest.fixture(scope="session")
def hostile_web():
    """Debian's nginx as a hostile server (``zarr_support.HostileNginx``: redirects to encoded
    ``..`` paths, listings with bad names, an https side redirecting to http); stopped by PID."""
    from zarr_support import HostileNginx, nginx_serving

    root = Path(tempfile.mkdtemp(prefix="gw-hostile-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        with nginx_serving(root, HostileNginx) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)
