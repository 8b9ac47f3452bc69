"""Code run in a kernel of a real session, as the browser runs it: REST to start a kernel,
then Jupyter's messaging protocol over one websocket to the kernel, kept open like
JupyterLab's (through the hub's proxy, with the user's cookies)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from dataclasses import dataclass, field

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


class KernelDied(RuntimeError):
    pass


@dataclass
class Reply:
    status: str
    stdout: str = ""
    stderr: str = ""
    result: dict = field(default_factory=dict)      # execute_result data by MIME type
    displays: list[dict] = field(default_factory=list)  # display_data data by MIME type
    error: str = ""


def _decode(raw: str | bytes) -> dict:
    """A message from the kernel websocket; one with binary buffers (widget comms) comes as
    jupyter_server's binary frame: count, offsets (big-endian uint32), JSON, buffers."""
    if isinstance(raw, str):
        return json.loads(raw)
    count = int.from_bytes(raw[:4], "big")
    offsets = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(count)]
    return json.loads(raw[offsets[0]:offsets[1] if count > 1 else len(raw)])


class SessionKernel:
    """A kernel in the user's running session; ``run(code)`` executes one cell."""

    def __init__(self, client, username: str):
        self.client = client
        self.username = username
        self.base = f"{client.base_url}/user/{username}/api"
        self.xsrf = client.http.cookies.get("_xsrf", path=f"/user/{username}/")
        response = client.http.post(f"{self.base}/kernels", json={"name": "python3"},
                                    headers={"X-XSRFToken": self.xsrf}, timeout=60)
        response.raise_for_status()
        self.id = response.json()["id"]
        self.session = uuid.uuid4().hex
        # An event loop in a thread of its own (the caller may be inside Playwright's loop)
        # holding the one websocket.
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._ws = None

    def run(self, code: str, timeout: float = 180) -> Reply:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(self._run(code), timeout), self._loop)
        return future.result()

    async def _connect(self):
        if self._ws is None:
            cookies = "; ".join(f"{c.name}={c.value}" for c in self.client.http.cookies)
            url = self.base.replace("http://", "ws://") + f"/kernels/{self.id}/channels"
            self._ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookies}))
        return self._ws

    async def _run(self, code: str) -> Reply:
        ws = await self._connect()
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": self.username, "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        reply = Reply(status="")
        idle = False
        try:
            while not (idle and reply.status):
                raw = await ws.read_message()
                if raw is None:
                    raise ConnectionError("the kernel websocket closed")
                msg = _decode(raw)
                if msg["msg_type"] == "status" and \
                        msg["content"]["execution_state"] in ("restarting", "dead"):
                    raise KernelDied(f"the kernel died ({msg['content']['execution_state']}) "
                                     f"running {code[:200]!r}")
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    if content["name"] == "stdout":
                        reply.stdout += content["text"]
                    else:
                        reply.stderr += content["text"]
                elif kind == "execute_result":
                    reply.result = content["data"]
                elif kind == "display_data":
                    reply.displays.append(content["data"])
                elif kind == "error":
                    reply.error = f"{content['ename']}: {content['evalue']}"
                elif kind == "execute_reply":
                    reply.status = content["status"]
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
        except BaseException:
            ws.close()  # a broken exchange: the next cell connects afresh
            self._ws = None
            raise
        return reply

    def shutdown(self) -> None:
        if self._ws is not None:
            self._loop.call_soon_threadsafe(self._ws.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        # no redirects: a stopped session sends the request on to the hub
        self.client.http.delete(f"{self.base}/kernels/{self.id}", allow_redirects=False,
                                headers={"X-XSRFToken": self.xsrf}, timeout=60)
