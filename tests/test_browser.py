"""End to end in a real browser: Debian's chromium driven by Playwright.

Screenshots of each step go to artifacts/browser/ (ARTIFACTS_DIR to move them).
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from support import PASSWORDS, job_names_of, jobs_of, logged_in, start_hub

ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", Path(__file__).parents[1] / "artifacts")) / "browser"
CHROMIUM = "/usr/bin/chromium"
# No network but loopback here: keep chromium from reaching out at start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def sign_in_at_idp(page, hub, username: str) -> None:
    """From the hub's login page through the identity provider's form, as a user would."""
    page.goto(f"{hub.url}/hub/login")
    page.get_by_text("Sign in with Authentik").click()
    page.fill("#username", username)
    page.fill("#password", PASSWORDS[username])
    page.click("#login-submit")


class Steps:
    def __init__(self, page, name: str):
        self.page = page
        self.dir = ARTIFACTS / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def shot(self, label: str) -> None:
        self.count += 1
        self.page.screenshot(path=str(self.dir / f"{self.count:02d}-{label}.png"))


def test_sign_in_start_lab_and_sign_out(browser, hub, devstack, slurm):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    visited: list[str] = []
    # Every request, redirects included: logout passes through the IdP in 302s.
    page.on("request", lambda request: visited.append(request.url))
    steps = Steps(page, "login-spawn-logout")
    try:
        page.goto(hub.url)
        expect(page).to_have_url(re.compile(r".*/hub/login.*"))
        steps.shot("hub-login")

        page.get_by_text("Sign in with Authentik").click()
        expect(page.locator("#login-form")).to_be_visible()
        steps.shot("idp-login")
        page.fill("#username", "alice")
        page.fill("#password", "alice-demo")
        page.click("#login-submit")

        expect(page).to_have_url(re.compile(re.escape(hub.url) + r"/hub/spawn.*"))
        expect(page.locator("label[for=profile-cpu]")).to_contain_text("CPU")
        expect(page.locator("label[for=profile-large-memory]")).to_contain_text("Large memory")
        expect(page.locator("#profile-workshop")).to_have_count(0)  # trainers only
        steps.shot("spawn-form")

        page.fill("#field-walltime_hours", "1")
        page.locator("form input[type=submit], form button[type=submit]").first.click()
        expect(page.locator("#progress-message")).to_contain_text(re.compile(r"Slurm job \d+"), timeout=60_000)
        steps.shot("spawn-pending")

        # JupyterLab itself, not just a status code: its shell and launcher render.
        expect(page.locator(".jp-LabShell")).to_be_visible(timeout=180_000)
        expect(page.locator(".jp-Launcher")).to_be_visible(timeout=60_000)
        assert "/user/alice/lab" in page.url
        steps.shot("jupyterlab")
        assert len(jobs_of(slurm, "alice")) == 1

        page.goto(f"{hub.url}/hub/logout")
        expect(page).to_have_url(re.compile(re.escape(hub.url) + r"/hub/login.*"))
        end_session = devstack.record()["idp"]["end_session_url"]
        assert any(url.startswith(end_session) for url in visited), visited
        steps.shot("signed-out")
    finally:
        context.close()
        logged_in(hub.url, "alice").stop()
    assert jobs_of(slurm, "alice") == []


def test_user_in_no_allowed_group_sees_why_in_the_browser(browser, hub):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    steps = Steps(page, "not-authorised")
    try:
        sign_in_at_idp(page, hub, "eve")
        expect(page.get_by_role("heading")).to_contain_text("Not authorised")
        expect(page.get_by_text("not a member of any group that may use this gateway")).to_be_visible()
        expect(page.get_by_text("gateway-admins, imaging, trainers")).to_be_visible()
        steps.shot("not-authorised")
    finally:
        context.close()


def test_lab_warns_before_the_walltime_ends(browser, devstack, slurm):
    """A 1-hour session on a site that warns 2 hours ahead: the warning is there at once."""
    hub = start_hub(devstack, "warning-hub", walltime_warning_minutes=120)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    steps = Steps(page, "walltime-warning")
    try:
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", "bob")
        page.fill("#password_input", "bob-demo")
        page.click("#login_submit")
        expect(page.locator("#profile-cpu")).to_be_visible()
        page.fill("#field-walltime_hours", "1")
        page.locator("form input[type=submit], form button[type=submit]").first.click()
        expect(page.locator(".jp-LabShell")).to_be_visible(timeout=180_000)
        warning = page.get_by_text(re.compile(r"Your session \(Slurm job \d+\) ends in \d+ minutes"))
        expect(warning.first).to_be_visible(timeout=30_000)
        steps.shot("walltime-warning")
    finally:
        context.close()
        logged_in(hub.url, "bob").stop()
        hub.stop()
    assert jobs_of(slurm, "bob") == []


def test_launcher_card_opens_the_example_that_browses_and_views_data(browser, hub, slurm):
    """From the launcher to a running example: the data browser and an image in view."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    steps = Steps(page, "example-notebook")
    # As for a new user: no copy of the example from an earlier run in bob's home.
    examples = Path(pwd.getpwnam("bob").pw_dir) / "bioimage-gateway"
    for name in ("getting-started.ipynb", ".copied.json"):
        (examples / name).unlink(missing_ok=True)
    try:
        sign_in_at_idp(page, hub, "bob")
        expect(page.locator("#profile-cpu")).to_be_visible()
        page.locator("form input[type=submit], form button[type=submit]").first.click()
        expect(page.locator(".jp-LabShell")).to_be_visible(timeout=180_000)
        # A fresh workspace (JupyterLab restores the last one, notebooks open included).
        page.goto(f"{hub.url}/user/bob/lab?reset")
        expect(page.locator(".jp-LabShell")).to_be_visible(timeout=60_000)
        card = page.locator(".jp-LauncherCard", has_text="BioImage Gateway: getting started")
        expect(card).to_be_visible(timeout=30_000)
        steps.shot("launcher-card")
        card.click()
        expect(page.get_by_role("tab", name=re.compile("getting-started.ipynb"))).to_be_visible(
            timeout=60_000)
        expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
        # The data browser lists bob's iRODS home; the viewer shows his image.
        expect(page.get_by_text("timelapse").first).to_be_visible(timeout=120_000)
        steps.shot("data-browser")
        status = page.get_by_text(re.compile(r"^level \d, region y"))
        expect(status).to_be_visible(timeout=120_000)
        status.scroll_into_view_if_needed()
        steps.shot("viewer")

        # Back in the data browser: into the collection, the image, "Stage..." and "Stage".
        data_browser = page.locator(".jp-CodeCell").first.locator(".jp-OutputArea-output")
        listing = data_browser.locator("select").first
        listing.scroll_into_view_if_needed()
        listing.locator("option", has_text="iRODS").click()
        data_browser.get_by_role("button", name="Open", exact=True).click()
        listing.locator("option", has_text="timelapse").click()
        data_browser.get_by_role("button", name="Open", exact=True).click()
        listing.locator("option", has_text="hela-cells-timelapse.ome.zarr").click()
        expect(data_browser.get_by_text("Homo sapiens").first).to_be_visible(timeout=60_000)
        steps.shot("image-details")
        data_browser.get_by_role("button", name="Stage...").click()
        data_browser.get_by_role("button", name="Stage", exact=True).click()
        staged = data_browser.get_by_text(re.compile(r"^complete: .*; at /"))
        expect(staged).to_be_visible(timeout=120_000)
        staged.scroll_into_view_if_needed()
        steps.shot("staged")
        assert f"; at {pwd.getpwnam('bob').pw_dir}/" in staged.inner_text()  # on bob's scratch

        # Dask: one worker (a Slurm job of bob's), its dashboard link, then closed.
        dask = page.locator(".jp-CodeCell").last.locator(".jp-OutputArea-output")
        dask.scroll_into_view_if_needed()
        workers = dask.locator("input[type=number]").first
        workers.fill("1")
        workers.press("Enter")
        dask.get_by_role("button", name="Start", exact=True).click()
        expect(dask.get_by_text(re.compile(r"^1 of 1 workers connected"))).to_be_visible(timeout=180_000)
        expect(dask.get_by_role("link", name="Dashboard")).to_be_visible()
        assert any(job.startswith("dask-worker-bob") for job in job_names_of(slurm, "bob"))
        steps.shot("dask-cluster")
        dask.get_by_role("button", name="Close", exact=True).click()
        expect(dask.get_by_text("Closed: no worker jobs left")).to_be_visible(timeout=60_000)
    finally:
        steps.shot("last-state")  # what the page showed at the end, pass or fail
        context.close()
        logged_in(hub.url, "bob").stop()
    assert jobs_of(slurm, "bob") == []
