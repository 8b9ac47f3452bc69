"""napari on the desktop of a real session (hub -> Slurm job as alice): the desktop page is
alice's alone, her kernel opens images in napari there (a local OME-Zarr, the DataBrowser's
button, a staged iRODS image) and ``nbscreenshot`` gives the picture; the VNC server is hers
and unreachable by bob on her node, directly or through her Jupyter server; stopping the
session leaves no desktop process behind."""

from __future__ import annotations

import base64
import io
import json
import os
import pwd
import re
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import logged_in
from support_kernel import KernelDied
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

PROBE = (Path(__file__).parent / "x11_probe.py").read_text()
SERVER_PROBE = (Path(__file__).parent / "server_probe.py").read_text()
IRODS_IMAGE = "irods://gwZone/home/alice/lightsheet/mouse-embryo-lightsheet.ome.zarr"


def session_log_tail(username: str = "alice", lines: int = 60) -> str:
    """The end of the user's newest session log (what the server and its kernels said)."""
    folder = Path(pwd.getpwnam(username).pw_dir) / ".bioimage-gateway"
    logs = sorted(folder.glob("**/jupyter-session-*.log"), key=lambda p: p.stat().st_mtime)
    return "\n".join(logs[-1].read_text().splitlines()[-lines:]) if logs else "(no session log)"


def kernel_json(kernel, code: str, timeout: float = 240) -> dict:
    """Run ``code`` in the kernel; it prints one JSON line last, which is returned."""
    try:
        reply = kernel.run(code, timeout=timeout)
    except (TimeoutError, KernelDied) as exc:
        raise AssertionError(f"{exc!r}; session log:\n{session_log_tail()}") from exc
    assert reply.status == "ok", (reply.error, reply.stderr[-3000:])
    return json.loads(reply.stdout.strip().splitlines()[-1])


def expected_layers(image: Path, attrs: dict, levels: list[str] | None = None) -> list[dict]:
    """What napari-ome-zarr should make of an image: one layer per omero channel, named after
    it, with the channel's display window as contrast limits and every level's shape less
    the channel axis."""
    multiscale = attrs["multiscales"][0]
    axes = [a["name"] for a in multiscale["axes"]]
    paths = levels or [d["path"] for d in multiscale["datasets"]]
    shapes = []
    for path in paths:
        shape = json.loads((image / path / ".zarray").read_text())["shape"]
        shapes.append([n for n, axis in zip(shape, axes) if axis != "c"])
    return [{"label": c["label"], "contrast": [c["window"]["start"], c["window"]["end"]],
             "shapes": shapes} for c in attrs["omero"]["channels"]]


def layers_of(viewer: str) -> str:
    """Python (for the kernel) listing the layers of ``viewer``: name, contrast, shapes."""
    return ("[{'name': l.name, 'contrast': [float(v) for v in l.contrast_limits], "
            "'shapes': [list(d.shape) for d in (l.data if l.multiscale else [l.data])]} "
            f"for l in {viewer}.layers]")


def assert_layers(layers: list[dict], expected: list[dict]) -> None:
    assert len(layers) == len(expected), layers
    for layer, want in zip(layers, expected):
        assert want["label"] in layer["name"], (layer, want)
        assert layer["contrast"] == want["contrast"], (layer, want)
        assert layer["shapes"] == want["shapes"], (layer, want)


def decode_screenshot(reply) -> np.ndarray:
    """The picture ``nbscreenshot(viewer)`` shows in the notebook, as RGB pixels."""
    html = reply.result.get("text/html", "")
    match = re.search(r'src="data:image/png;base64,([^"]+)"', html)
    assert match, reply.result.keys()
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(match.group(1)))).convert("RGB"))


def test_desktop_page_is_served_to_alice_only(alice_session, hub):
    page = alice_session.http.get(alice_session.url("/user/alice/desktop/"), timeout=60)
    assert page.status_code == 200 and "desktop/static/dist/viewer.js" in page.text

    bob = logged_in(hub.url, "bob")
    token = bob.new_token()
    for path in ("/user/alice/desktop/", "/user/alice/desktop-websockify/"):
        refused = bob.http.get(alice_session.url(path), timeout=60, allow_redirects=False,
                               headers={"Authorization": f"token {token}"})
        assert refused.status_code == 403, (path, refused.status_code)
        with_cookies = bob.http.get(alice_session.url(path), timeout=60)
        assert with_cookies.status_code == 403, (path, with_cookies.status_code, with_cookies.url)
        assert "viewer.js" not in with_cookies.text

    # the VNC stream itself: bob's websocket is refused before it reaches the VNC server
    ws_url = alice_session.url("/user/alice/desktop-websockify/").replace("http://", "ws://")

    async def bob_connects():
        await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))

    import asyncio
    with pytest.raises(HTTPClientError) as refused:
        asyncio.run(bob_connects())
    assert refused.value.code == 403


def test_open_in_napari_starts_the_desktop_and_shows_the_image(alice_kernel, sample_image,
                                                                 sample_attrs):
    result = kernel_json(alice_kernel, f"""
import json, os, time
from bioimage_gateway.napari_desktop import find_desktop
before = find_desktop()
start = time.monotonic()
from bioimage_gateway.widgets import open_in_napari
viewer = open_in_napari({str(sample_image)!r})
seconds = time.monotonic() - start
desktop = find_desktop()
print(json.dumps({{"before": before and before.display, "display": os.environ["DISPLAY"],
                  "desktop": desktop.display, "seconds": seconds,
                  "visible": viewer.window._qt_window.isVisible(),
                  "layers": {layers_of("viewer")}}}))
""")
    print(f"open_in_napari in alice's session, desktop started by it: {result['seconds']:.1f} s")
    assert result["before"] is None  # nobody had opened the desktop: open_in_napari started it
    assert result["display"] == result["desktop"]
    assert result["visible"]
    assert_layers(result["layers"], expected_layers(sample_image, sample_attrs))

    again = kernel_json(alice_kernel, f"""
start = time.monotonic()
second = open_in_napari({str(sample_image)!r})
print(json.dumps({{"seconds": time.monotonic() - start, "same_desktop": find_desktop() == desktop}}))
""")
    print(f"open_in_napari again (napari loaded, desktop running): {again['seconds']:.1f} s")
    assert again["same_desktop"]

    # the picture in the notebook: the image's two channels in their omero colours
    reply = alice_kernel.run("from napari.utils import nbscreenshot\n"
                             "nbscreenshot(viewer, canvas_only=True)")
    assert reply.status == "ok", reply.error
    pixels = decode_screenshot(reply).astype(int)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    green = (g > 120) & (r < 60) & (b < 60)           # nuclei-Hoechst: 00FF00
    magenta = (r > 120) & (b > 120) & (g < 60)        # tubulin-GFP: FF00FF
    assert green.sum() > 200 and magenta.sum() > 200, (green.sum(), magenta.sum())
    assert (pixels.max(axis=-1) > 40).mean() > 0.2    # an image, not a blank canvas


def test_data_browser_button_runs_the_line_it_shows(alice_kernel, sample_image, sample_attrs):
    folder = str(sample_image.parent)
    result = kernel_json(alice_kernel, f"""
import json
from bioimage_gateway.catalogs.posix import PosixCatalog
from bioimage_gateway.widgets import DataBrowser
browser = DataBrowser(catalogs={{"samples": (PosixCatalog({folder!r}), PosixCatalog.url({folder!r}))}})
browser.open_entry(0)
names = [e.name for e in browser.model.entries]
browser.select(names.index({sample_image.name!r}))
enabled = not browser.napari_button.disabled
browser.napari_button.click()
print(json.dumps({{"enabled": enabled, "line": browser.snippet.value, "error": browser.error.value,
                  "layers": {layers_of("browser.napari_viewer")}}}))
""")
    assert result["enabled"] and result["error"] == ""
    url = "file://" + str(sample_image)
    assert result["line"] == f"viewer = open_in_napari({url!r})"
    assert_layers(result["layers"], expected_layers(sample_image, sample_attrs))


def test_a_catalog_image_opens_once_staged(alice_kernel, devstack):
    devstack.write_client_files()
    cache = f"~/scratch/napari-test-{uuid.uuid4().hex[:8]}"
    result = kernel_json(alice_kernel, f"""
import json, os, shutil
from bioimage_gateway.napari_desktop import NotStaged
from bioimage_gateway.staging import stage
from bioimage_gateway.widgets import open_in_napari
cache = os.path.expanduser({cache!r})
try:
    open_in_napari({IRODS_IMAGE!r}, cache_dir=cache)
    refusal = None
except NotStaged as exc:
    refusal = str(exc)
try:
    staged = stage({IRODS_IMAGE!r}, levels=[1], cache_dir=cache)
    zattrs = json.loads((staged / ".zattrs").read_text())
    staged_viewer = open_in_napari({IRODS_IMAGE!r}, cache_dir=cache)
    layers = {layers_of("staged_viewer")}
    shapes = [json.loads((staged / "s1" / ".zarray").read_text())["shape"]]
finally:
    shutil.rmtree(cache, ignore_errors=True)
print(json.dumps({{"refusal": refusal, "layers": layers, "zattrs": zattrs, "shape": shapes[0]}}))
""")
    assert result["refusal"] and f"stage({IRODS_IMAGE!r})" in result["refusal"]
    labels = [c["label"] for c in result["zattrs"]["omero"]["channels"]]
    assert labels == ["H2B-GFP", "membrane-mCherry", "brightfield"]
    t, _c, z, y, x = result["shape"]
    assert [layer["shapes"] for layer in result["layers"]] == [[[t, z, y, x]]] * 3
    assert all(label in layer["name"] for label, layer in zip(labels, result["layers"]))


def alice_desktop_processes(api_url: str) -> dict[int, str]:
    """alice's processes of this hub's session (by the hub address in their environment)."""
    uid = pwd.getpwnam("alice").pw_uid
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            environ = Path(entry.path, "environ").read_bytes().split(b"\0")
            name = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue
        if f"JUPYTERHUB_API_URL={api_url}".encode() in environ:
            found[int(entry.name)] = name
    return found


def probe_as(username: str, node, *args: str) -> dict:
    """The probe run by ``username`` on ``node`` (another user sharing alice's node)."""
    result = subprocess.run(node.argv(["sudo", "-n", "-u", username, "/usr/bin/python3", "-c", PROBE, *args]),
                            capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_desktop_is_alices_alone_and_ends_with_the_session(alice_kernel, alice_session, devstack):
    info = kernel_json(alice_kernel, """
import json, os
from bioimage_gateway.napari_desktop import session_desktop
d = session_desktop()
print(json.dumps({"pid": d.pid, "display": d.display, "socket": d.vnc_socket,
                  "server": int(os.environ["JPY_PARENT_PID"]),
                  "api": os.environ["JUPYTERHUB_API_URL"], "job": os.environ["SLURM_JOB_ID"]}))
""")
    node = devstack.node_of_job(info["job"])  # where alice's session runs, and bob probes
    alice = pwd.getpwnam("alice")
    xvnc = info["pid"]
    assert Path(f"/proc/{xvnc}").stat().st_uid == alice.pw_uid  # runs as alice
    # ...under her session's Jupyter server, in her Slurm job
    pid, chain = xvnc, []
    while pid > 1:
        chain.append(pid)
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert info["server"] in chain

    # no TCP port at all: the VNC side is a UNIX socket in a directory only alice may enter
    tcp = subprocess.run(node.argv(["ss", "-H", "-ltnup"]), capture_output=True, text=True, check=True)
    assert f"pid={xvnc}," not in tcp.stdout
    unix = subprocess.run(node.argv(["ss", "-H", "-lxp"]), capture_output=True, text=True, check=True)
    assert info["socket"] in unix.stdout
    folder = Path(info["socket"]).parent
    assert folder.stat().st_uid == alice.pw_uid and folder.stat().st_mode & 0o777 == 0o700

    # nor does bob reach the desktop through alice's Jupyter server, which listens on the
    # node's address alone (nothing on loopback) and lets no one in without her credentials
    server_tcp = subprocess.run(node.argv(["ss", "-H", "-ltnp"]), capture_output=True, text=True, check=True)
    listening = [line.split()[3] for line in server_tcp.stdout.splitlines() if f"pid={info['server']}," in line]
    assert len(listening) == 1 and listening[0].startswith(f"{node.address}:"), listening
    port = listening[0].rsplit(":", 1)[1]
    direct = subprocess.run(node.argv(["sudo", "-n", "-u", "bob", "/usr/bin/python3", "-c", SERVER_PROBE,
                                       node.address, port, "/user/alice/desktop-websockify/"]),
                            capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert direct.returncode == 0, direct.stderr
    direct = json.loads(direct.stdout)
    assert direct["loopback"] == "ConnectionRefusedError", direct
    assert direct["desktop"].split()[1] in ("302", "403") and not direct["greeting"], direct

    display = info["display"].lstrip(":")
    x11 = f"/tmp/.X11-unix/X{display}"
    bob = probe_as("bob", node, x11, info["socket"], os.path.join(alice.pw_dir, ".Xauthority"), display)
    assert bob["vnc"] == "PermissionError"       # the VNC socket: not even a connection
    assert bob["x11"] == "refused"               # the X display: no cookie, no entry
    assert bob["cookie"] == "PermissionError"    # and alice's cookie file is hers
    # the same probes as alice (a cookie from her file) get in: the refusals above are real
    mine = probe_as("alice", node, x11, info["socket"], os.path.join(alice.pw_dir, ".Xauthority"), display)
    assert mine["vnc"].startswith("RFB ") and mine["x11"] == "accepted", mine

    # stopping the session ends the desktop: VNC server, openbox, its D-Bus, nothing left
    running = alice_desktop_processes(info["api"])
    assert {"Xtigervnc", "openbox", "dbus-daemon"} <= set(running.values()), running
    alice_session.stop()
    deadline = time.monotonic() + 30
    while alice_desktop_processes(info["api"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alice_desktop_processes(info["api"]) == {}
