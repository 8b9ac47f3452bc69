"""Idle sessions give their node back; a busy kernel is not idle."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from support import jobs_of, logged_in, start_hub
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "walltime_hours": "1"}


@pytest.fixture(scope="module")
def culler_hub(devstack):
    hub = start_hub(devstack, "culler-hub", culler={
        "timeout_seconds": 25, "every_seconds": 5, "activity_interval_seconds": 5})
    yield hub
    hub.stop()


def start_busy_cell(client, username: str, seconds: int) -> None:
    """Start a kernel in the user's JupyterLab and run a long cell, as the user would."""
    lab = client.open_lab()
    assert lab.status_code == 200
    xsrf = client.http.cookies.get("_xsrf", path=f"/user/{username}/")
    base = f"{client.base_url}/user/{username}/api"
    kernel = client.http.post(f"{base}/kernels", json={"name": "python3"},
                              headers={"X-XSRFToken": xsrf}, timeout=60).json()
    cookies = "; ".join(f"{c.name}={c.value}" for c in client.http.cookies)
    url = base.replace("http://", "ws://") + f"/kernels/{kernel['id']}/channels"

    async def execute() -> None:
        ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookies}))
        session = uuid.uuid4().hex
        ws.write_message(json.dumps({
            "header": {"msg_id": uuid.uuid4().hex, "username": username, "session": session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": f"import time; time.sleep({seconds})", "silent": False,
                        "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        # Wait until the kernel says it is busy with our cell.
        while True:
            msg = json.loads(await ws.read_message())
            if msg.get("msg_type") == "status" and msg["content"]["execution_state"] == "busy":
                break
        ws.close()

    asyncio.run(execute())


def test_idle_session_is_culled_and_a_busy_one_is_not(culler_hub, slurm):
    alice = logged_in(culler_hub.url, "alice")
    bob = logged_in(culler_hub.url, "bob")
    for client in (alice, bob):
        assert client.submit_form(CPU).status_code == 302
        assert client.progress()[-1].get("ready")
    start_busy_cell(bob, "bob", seconds=300)
    # The culler's timeout is 25 s: well past it, alice's idle session is gone...
    deadline = time.monotonic() + 90
    while alice.server() is not None and time.monotonic() < deadline:
        time.sleep(2)
    assert alice.server() is None, "the idle session was not culled"
    assert jobs_of(slurm, "alice") == []
    # ...while bob's, whose kernel has been busy the whole time, still runs.
    assert bob.server() and bob.server()["ready"]
    assert len(jobs_of(slurm, "bob")) == 1
    bob.stop()
