"""A browser-like client of the hub for tests and benchmarks: cookies, XSRF, REST API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urljoin

import requests
import yaml

from bioimage_gateway.devstack.demo import HubProcess
from bioimage_gateway.devstack.processes import free_port, run
from bioimage_gateway.devstack.stack import DEMO_USERS

PASSWORDS = {u["username"]: u["password"] for u in DEMO_USERS}


class HubClient:
    def __init__(self, base_url: str, username: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.http = requests.Session()

    def url(self, path: str) -> str:
        return urljoin(self.base_url + "/", path.lstrip("/"))

    @property
    def xsrf(self) -> str:
        return self.http.cookies.get("_xsrf", path="/hub/") or self.http.cookies.get("_xsrf") or ""

    def login(self) -> requests.Response:
        self.http.get(self.url("/hub/login"), timeout=30)
        response = self.http.post(
            self.url("/hub/login"),
            data={"username": self.username, "password": self.password, "_xsrf": self.xsrf},
            allow_redirects=False,
            timeout=30,
        )
        if response.status_code != 302:
            raise AssertionError(f"login of {self.username} failed: {response.status_code}")
        return response

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        headers.setdefault("X-XSRFToken", self.xsrf)
        kwargs.setdefault("timeout", 30)
        return self.http.request(method, self.url("/hub/api" + path), headers=headers, **kwargs)

    def new_token(self, note: str = "test") -> str:
        response = self.api("POST", f"/users/{self.username}/tokens", json={"note": note})
        response.raise_for_status()
        return response.json()["token"]

    def spawn_form(self) -> requests.Response:
        return self.http.get(self.url("/hub/spawn"), timeout=30)

    def submit_form(self, fields: dict | list) -> requests.Response:
        data = list(fields.items()) if isinstance(fields, dict) else list(fields)
        data.append(("_xsrf", self.xsrf))
        return self.http.post(self.url("/hub/spawn"), data=data, allow_redirects=False, timeout=60)

    def server(self) -> dict | None:
        response = self.api("GET", f"/users/{self.username}")
        response.raise_for_status()
        return response.json()["servers"].get("")

    def wait_ready(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server()
            if server and server["ready"]:
                return server
            if server is None:
                raise AssertionError(f"the session of {self.username} failed to start")
            time.sleep(0.5)
        raise AssertionError(f"the session of {self.username} was not ready after {timeout} s")

    def wait_stopped(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server() is None:
                return
            time.sleep(0.5)
        raise AssertionError(f"the session of {self.username} did not stop")

    def progress(self, timeout: float = 180) -> list[dict]:
        """Read the spawn's progress events until it ends."""
        events = []
        with self.api(
            "GET", f"/users/{self.username}/server/progress", stream=True, timeout=timeout
        ) as response:
            for line in response.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    events.append(event)
                    if event.get("ready") or event.get("failed"):
                        break
        return events

    def stop(self) -> None:
        response = self.api("DELETE", f"/users/{self.username}/server")
        if response.status_code not in (202, 204, 400):
            response.raise_for_status()
        self.wait_stopped()

    def open_lab(self) -> requests.Response:
        """Open the session's JupyterLab as a browser would, through the hub's OAuth."""
        return self.http.get(self.url(f"/user/{self.username}/lab"), timeout=60)


def logged_in(hub_url: str, username: str) -> HubClient:
    client = HubClient(hub_url, username, PASSWORDS[username])
    client.login()
    return client


def jobs_of(slurm, username: str) -> list[str]:
    """The user's jobs still in the queue (any state)."""
    result = run(["squeue", "-h", "-u", username, "-o", "%i"], env=slurm.env, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def job_records_of(slurm, username: str) -> list[str]:
    """Every job of the user the controller remembers, finished ones included."""
    result = run(["scontrol", "-o", "show", "jobs"], env=slurm.env, check=False)
    assert result.returncode == 0, result.stderr
    return [
        line.split()[0].split("=", 1)[1]
        for line in result.stdout.splitlines()
        if f" UserId={username}(" in line
    ]


def start_hub(devstack, name: str = "hub", **session_changes) -> HubProcess:
    """A hub on the devstack; a name other than "hub" gets its own ports and database."""
    record = devstack.record()
    settings_path = Path(record["gateway_yaml"])
    if name != "hub":
        settings = yaml.safe_load(settings_path.read_text())
        port = free_port()
        settings["hub"].update(
            port=port, public_url=f"http://127.0.0.1:{port}", api_port=free_port(),
            proxy_api_port=free_port(), data_dir=str(devstack.state_dir / name),
        )
        settings["session"].update(session_changes)
        settings_path = devstack.state_dir / f"{name}.yaml"
        settings_path.write_text(yaml.safe_dump(settings))
    process = HubProcess(settings_path, devstack.state_dir,
                         log_path=devstack.state_dir / f"{name}.log")
    process.start()
    return process
