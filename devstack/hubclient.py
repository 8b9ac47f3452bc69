"""A browser-like client of the hub, for tests and benchmarks: cookies, XSRF, REST API."""

from __future__ import annotations

import html
import json
import re
import time
from urllib.parse import urljoin

import requests


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
        page = self.http.get(self.url("/hub/login"), timeout=30)
        if "oauth_login" in page.text:
            return self.login_oidc()
        return self.login_password()

    def login_oidc(self, check: bool = True) -> requests.Response:
        """Sign in at the identity provider's login form, as a browser would."""
        page = self.http.get(self.url("/hub/oauth_login"), timeout=30)
        if page.url.startswith(self.base_url + "/") and page.status_code == 200:
            return page  # still signed in at the IdP: single sign-on, no form
        match = re.search(r'<form[^>]*id="login-form"[^>]*action="([^"]+)"', page.text)
        if not match:
            raise AssertionError(f"no login form at {page.url}: {page.status_code}")
        response = self.http.post(
            urljoin(page.url, html.unescape(match.group(1))),
            data={"username": self.username, "password": self.password},
            timeout=30,
        )
        if check and (not response.url.startswith(self.base_url) or response.status_code != 200):
            raise AssertionError(
                f"login of {self.username} failed at {response.url}: {response.status_code}"
            )
        return response

    def login_password(self) -> requests.Response:
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
