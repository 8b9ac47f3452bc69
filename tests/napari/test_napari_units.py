"""The napari pieces without a session: what napari is given for each kind of address, which
xstartup the desktop gets, finding a real TigerVNC desktop among processes, and what the
widgets' "Open in napari" buttons show when there is no desktop to open on."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bioimage_gateway.catalogs.posix import PosixCatalog
from bioimage_gateway.devstack.samples import write_sample_image
from bioimage_gateway.extensions.desktop import XSTARTUP_VARIABLE, choose_xstartup
from bioimage_gateway.napari_desktop import (
    Desktop,
    DesktopError,
    NotStaged,
    find_desktop,
    napari_snippet,
    napari_source,
    server_url,
    session_desktop,
)

REPO = Path(__file__).parents[2]
XSTARTUP = REPO / "images" / "session" / "desktop" / "xstartup"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("napari-images")
    return write_sample_image(folder / "cells.ome.zarr", name="cells", shape_tczyx=(1, 2, 1, 64, 64),
                              levels=2, channel_names=["nuclei", "membrane"])


@pytest.fixture
def outside_a_session(monkeypatch):
    for name in ("JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_API_TOKEN", "DISPLAY", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)


# --- what napari-ome-zarr is given -------------------------------------------------------------

def test_local_paths_and_file_urls_give_the_image_directory(image):
    assert napari_source(image) == str(image)
    assert napari_source(PosixCatalog.url(str(image))) == str(image)
    assert napari_source("https://example.org/images/cells.ome.zarr") == \
        "https://example.org/images/cells.ome.zarr"


def test_bad_local_input_is_named(image, tmp_path):
    with pytest.raises(FileNotFoundError, match="no OME-Zarr image at .*missing.ome.zarr"):
        napari_source(tmp_path / "missing.ome.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="plain is not an OME-Zarr image"):
        napari_source(tmp_path / "plain")


def test_a_catalog_address_needs_a_complete_staged_copy(tmp_path):
    url = "irods://gwZone/home/alice/lightsheet/never-staged.ome.zarr"
    with pytest.raises(NotStaged) as refused:
        napari_source(url, cache_dir=tmp_path / "cache")
    assert f"stage({url!r})" in str(refused.value) and "not staged" in str(refused.value)


def test_the_line_is_the_call(image):
    assert napari_snippet(image) == f"viewer = open_in_napari({str(image)!r})"


# --- the desktop's xstartup ------------------------------------------------------------------

def test_the_site_xstartup_unless_the_user_or_site_chose_one(tmp_path):
    home = tmp_path / "home"
    (home / ".vnc").mkdir(parents=True)
    site = str(XSTARTUP)
    assert os.access(site, os.X_OK)
    assert choose_xstartup(site, environ={}, home=home) == site
    assert choose_xstartup(site, environ={XSTARTUP_VARIABLE: "/opt/mine"}, home=home) is None
    (home / ".vnc" / "xstartup").write_text("#!/bin/sh\nexec xterm\n")
    assert choose_xstartup(site, environ={}, home=home) is None  # the user's own
    assert choose_xstartup(str(tmp_path / "absent"), environ={}, home=tmp_path) is None


# --- finding a desktop among processes -----------------------------------------------------------

def _descendants_named(name: str, ancestor: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if Path(entry.path, "comm").read_text().strip() != name:
                continue
            pid = int(entry.name)
            while pid > 1:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == ancestor:
                    out.append(int(entry.name))
                    break
        except OSError:
            continue
    return out


def test_find_desktop_takes_the_vnc_server_of_the_given_jupyter_server(tmp_path):
    """A real vncserver (TigerVNC, the site xstartup) as a child of this process, started
    with jupyter-remote-desktop-proxy's options: found, answering, with its cookie file;
    not found for another process."""
    home = tmp_path / "home"
    home.mkdir()
    sockets = tmp_path / "jupyter-server-proxy-test"
    sockets.mkdir(mode=0o700)
    env = {"HOME": str(home), "USER": "root", "PATH": "/usr/bin:/bin"}
    vnc = subprocess.Popen(
        ["vncserver", "-rfbunixpath", str(sockets / "socket"), "-rfbport", "-1",
         "-xstartup", str(XSTARTUP), "-fg", "-geometry", "640x480", "-SecurityTypes", "None"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        deadline = time.monotonic() + 30
        desktop = None
        while time.monotonic() < deadline:
            desktop = find_desktop(server=os.getpid(), uid=os.getuid())
            if desktop and desktop.answers() and _descendants_named("openbox", vnc.pid):
                break
            time.sleep(0.2)
        assert desktop is not None and desktop.answers()
        assert desktop.vnc_socket == str(sockets / "socket")
        assert desktop.xauthority == str(home / ".Xauthority")
        assert desktop.environ() == {"DISPLAY": desktop.display,
                                     "XAUTHORITY": str(home / ".Xauthority")}
        assert _descendants_named("openbox", vnc.pid)  # the site xstartup's window manager
        assert find_desktop(server=bystander.pid, uid=os.getuid()) is None
    finally:
        bystander.kill()
        vnc.terminate()
        vnc.wait(timeout=30)
        bystander.wait()


def test_the_desktop_ends_when_its_jupyter_server_is_gone(tmp_path):
    """The site xstartup watches the server process it is given: when that process ends
    (here killed, as a crashed or killed server would), the VNC server and its session stop,
    though nobody stopped them."""
    home = tmp_path / "home"
    home.mkdir()
    sockets = tmp_path / "jupyter-server-proxy-test"
    sockets.mkdir(mode=0o700)
    server = subprocess.Popen(["sleep", "300"])  # stands in for the Jupyter server
    env = {"HOME": str(home), "USER": "root", "PATH": "/usr/bin:/bin",
           "BIOIMAGE_GATEWAY_SERVER_PID": str(server.pid)}
    vnc = subprocess.Popen(
        ["vncserver", "-rfbunixpath", str(sockets / "socket"), "-rfbport", "-1",
         "-xstartup", str(XSTARTUP), "-fg", "-geometry", "640x480", "-SecurityTypes", "None"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _descendants_named("openbox", vnc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        xvnc = _descendants_named("Xtigervnc", vnc.pid)
        assert xvnc and _descendants_named("openbox", vnc.pid)
        time.sleep(3)
        assert vnc.poll() is None  # running while its server runs
        server.kill()
        server.wait()
        assert vnc.wait(timeout=20) is not None  # vncserver ended, and Xvnc with it
        assert not Path(f"/proc/{xvnc[0]}").exists()
    finally:
        server.kill()
        if vnc.poll() is None:
            vnc.terminate()
            vnc.wait(timeout=30)


def test_outside_a_session_the_error_says_what_to_do(outside_a_session):
    with pytest.raises(DesktopError, match="not in a JupyterHub session"):
        session_desktop()


def test_a_display_socket_another_user_made_is_not_the_desktop(tmp_path):
    """An X socket of bob's (or a link) where the desktop's display should be: refused, never
    connected to (an X client would hand it the display's cookie)."""
    sockets = tmp_path / "x11"
    sockets.mkdir()
    desktop = Desktop(":7", None, 1)
    assert not desktop.answers(socket_dir=str(sockets))  # not up yet
    made = subprocess.run(["sudo", "-n", "-u", "bob", "/usr/bin/python3", "-c",
                           "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
                           "/tmp/bob-x7-" + tmp_path.name], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    bobs = Path("/tmp/bob-x7-" + tmp_path.name)
    try:
        os.rename(bobs, sockets / "X7")  # bob's socket, where display :7's would be
        with pytest.raises(DesktopError, match=rf"{sockets}/X7, the socket of display :7, is "
                                               r"bob's, not root's desktop"):
            desktop.answers(socket_dir=str(sockets))
        (sockets / "X7").unlink()
        with socket.socket(socket.AF_UNIX) as mine:
            mine.bind(str(tmp_path / "mine"))
            mine.listen()
            (sockets / "X7").symlink_to(tmp_path / "mine")
            with pytest.raises(DesktopError, match="is a symbolic link, not root's desktop"):
                desktop.answers(socket_dir=str(sockets))
            (sockets / "X7").unlink()
            os.rename(tmp_path / "mine", sockets / "X7")
            assert desktop.answers(socket_dir=str(sockets))
    finally:
        bobs.unlink(missing_ok=True)


def test_a_server_that_did_not_say_its_port_is_named(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://10.1.0.7:0/user/alice/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "t")
    with pytest.raises(DesktopError, match="did not say where it listens .*session_identity"):
        server_url()
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://10.1.0.7:40001/user/alice")
    assert server_url() == ("http://10.1.0.7:40001/user/alice/", "t")


# --- the buttons ---------------------------------------------------------------------------------

def test_data_browser_button_shows_the_line_and_why_it_cannot_open(image, outside_a_session):
    from bioimage_gateway.widgets import DataBrowser

    folder = str(image.parent)
    browser = DataBrowser(catalogs={"images": (PosixCatalog(folder), PosixCatalog.url(folder))})
    browser.open_entry(0)
    assert browser.napari_button.disabled  # nothing selected
    browser.select([e.name for e in browser.model.entries].index("cells.ome.zarr"))
    assert not browser.napari_button.disabled
    url = PosixCatalog.url(str(image))
    assert browser.model.snippets()["napari"] == f"viewer = open_in_napari({url!r})"
    browser.napari_button.click()
    assert browser.snippet.value == f"viewer = open_in_napari({url!r})"
    assert "not in a JupyterHub session" in browser.error.value
    assert browser.napari_viewer is None


def test_viewer_button_shows_the_line_and_the_error(image, outside_a_session):
    from bioimage_gateway.widgets import Viewer

    url = PosixCatalog.url(str(image))
    viewer = Viewer(url, catalog=PosixCatalog(str(image.parent)), size=64)
    viewer.napari_button.click()
    line = viewer.napari_line.value
    assert f"viewer = open_in_napari({url!r})".replace("'", "&#x27;") in line
    assert "not in a JupyterHub session" in line
