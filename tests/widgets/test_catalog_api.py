"""The session's REST endpoints for the UI, on a real Jupyter server with the extension enabled
the way a session enables it (the JSON of images/session/jupyter_server_config.d/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bioimage_gateway.catalogs.posix import PosixCatalog
from bioimage_gateway.devstack.processes import free_port, stop_pid
from bioimage_gateway.devstack.samples import write_sample_image

CONFIG = Path(__file__).parents[2] / "images/session/jupyter_server_config.d/bioimage_gateway_catalog_api.json"
TOKEN = "owner-token-0123456789"
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_sample_image(root / "cells.ome.zarr", name="cells", shape_tczyx=(1, 1, 2, 32, 32), levels=2,
                       channel_names=("nuclei",), rembi={"rembi:biosample.organism": "Mus musculus"})
    for i in range(25):
        (root / f"file{i:02d}.txt").write_text(str(i))
    (root / HOSTILE).write_text("x")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, data):
    home = tmp_path_factory.mktemp("home")
    (home / "jupyter_server_config.d").mkdir()
    (home / "jupyter_server_config.d" / CONFIG.name).write_text(CONFIG.read_text())
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home), "JUPYTER_CONFIG_PATH": str(home),
           "BIOIMAGE_GATEWAY_SCRATCH": str(home / "scratch"), "HOME": str(home)}
    log = open(home / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={home}",
         "--ServerApp.base_url=/user/alice/", "--allow-root"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/user/alice/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "api/status", headers=auth(), timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.2)
        yield base
    finally:
        stop_pid(process.pid)
        process.wait(timeout=30)
        log.close()


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"token {token}"}


def get(server, path, token=TOKEN, **params):
    return requests.get(server + "bioimage-gateway/" + path, params=params, headers=auth(token), timeout=30)


def test_listing_pages(server, data):
    url = PosixCatalog.url(str(data))
    first = get(server, "catalog", url=url, limit=10)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["more"] is True and len(body["entries"]) == 10
    assert body["entries"][0] == {**body["entries"][0], "name": "cells.ome.zarr", "kind": "image"}
    rest = get(server, "catalog", url=url, offset=10, limit=100).json()
    names = [e["name"] for e in body["entries"] + rest["entries"]]
    assert rest["more"] is False and len(names) == 27 and HOSTILE in names
    assert get(server, "catalog", url=url, limit=0).status_code == 400


def test_metadata_and_errors(server, data):
    image = PosixCatalog.url(str(data / "cells.ome.zarr"))
    body = get(server, "catalog/metadata", url=image).json()
    assert body["entry"]["kind"] == "image"
    assert body["rembi"]["biosample"]["organism"] == "Mus musculus"
    assert body["metadata"]["rembi:biosample.organism"] == [["Mus musculus", ""]]
    assert get(server, "catalog", url=PosixCatalog.url(str(data / "missing"))).status_code == 404
    assert get(server, "catalog", url="file:///a/../b").status_code == 400
    assert get(server, "catalog", url="gopher://x/").status_code == 400


def test_staging_jobs(server, data):
    body = get(server, "staging").json()
    assert body == {"jobs": []}


def test_other_tokens_and_no_token_are_refused(server, data):
    url = PosixCatalog.url(str(data))
    for path in ("catalog", "catalog/metadata", "staging"):
        assert get(server, path, token="someone-elses-token", url=url).status_code == 403
        reply = requests.get(server + "bioimage-gateway/" + path, params={"url": url}, timeout=30,
                             allow_redirects=False)
        assert reply.status_code in (302, 403)


def test_search_by_metadata(server, data):
    url = PosixCatalog.url(str(data))
    found = get(server, "catalog/search", url=url, where="rembi:biosample.organism=Mus%")
    assert found.status_code == 200, found.text
    assert [e["name"] for e in found.json()["entries"]] == ["cells.ome.zarr"]
    none = get(server, "catalog/search", url=url, where="rembi:biosample.organism=Danio rerio")
    assert none.status_code == 200 and none.json()["entries"] == []
    missing_condition = get(server, "catalog/search", url=url)
    assert missing_condition.status_code == 400 and "where=KEY=VALUE" in missing_condition.json()["message"]
    assert get(server, "catalog/search", url=url, where="no-equals-sign").status_code == 400


def read_multiscales(image: Path) -> dict:
    if (image / "zarr.json").exists():
        return json.loads((image / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    return json.loads((image / ".zattrs").read_text())["multiscales"][0]


def post_stage(server, body, token=TOKEN):
    return requests.post(server + "bioimage-gateway/staging", json=body, headers=auth(token), timeout=30)


def test_stage_through_the_api(server, data):
    image = PosixCatalog.url(str(data / "cells.ome.zarr"))
    hostile = [
        ({"url": image, "levels": [1], "script": "rm -rf ~"}, "unknown fields: script"),
        ({"url": "cells.ome.zarr"}, "url must be a catalog address"),
        ({"url": image + "\n#SBATCH"}, "url must be a catalog address"),
        ({"url": image, "levels": ["1; ls"]}, "levels must be"),
        ({"url": image, "levels": [True]}, "levels must be"),
        ({"url": image, "channels": [{"$ne": 1}]}, "channels must be"),
        ({"url": image, "timepoints": {"start": 3, "stop": 1}}, "timepoints must be"),
        ({"url": image, "bbox": {"x": [0, 10], "w": [0, 1]}}, "bbox must map"),
        (["not", "an", "object"], "JSON object"),
    ]
    for body, message in hostile:
        refused = post_stage(server, body)
        assert refused.status_code == 400, (body, refused.status_code)
        assert message in refused.json()["message"], (body, refused.text)
    assert get(server, "staging").json() == {"jobs": []}  # nothing was started by a refused request
    assert post_stage(server, {"url": image, "levels": [1]}, token="someone-elses-token").status_code == 403
    assert get(server, "staging").json() == {"jobs": []}

    started = post_stage(server, {"url": image, "levels": [1], "channels": ["nuclei"]})
    assert started.status_code == 202, started.text
    path = Path(started.json()["path"])
    deadline = time.monotonic() + 60
    while True:
        jobs = get(server, "staging").json()["jobs"]
        assert len(jobs) == 1 and jobs[0]["path"] == str(path)
        if jobs[0]["state"] == "complete":
            break
        assert jobs[0]["state"] in ("queued", "running"), jobs[0]
        assert time.monotonic() < deadline, jobs[0]
        time.sleep(0.2)
    # the staged copy holds exactly level 1 of the image, as an OME-Zarr of one level
    source = read_multiscales(data / "cells.ome.zarr")
    assert [d["path"] for d in read_multiscales(path)["datasets"]] == [source["datasets"][1]["path"]]
    again = post_stage(server, {"url": image, "levels": [1], "channels": ["nuclei"]})
    assert again.status_code == 202 and again.json()["state"] == "complete"
