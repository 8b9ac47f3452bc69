"""The spawn form's account, QoS and reservation fields in a real browser (Debian's chromium
driven by Playwright): the lists follow the chosen account, a profile's locked QoS is shown
fixed, and the session starts charged as chosen."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect, sync_playwright
from support import PASSWORDS, jobs_of, logged_in
from test_browser import CHROMIUM, CHROMIUM_ARGS

from bioimage_gateway.devstack.processes import run


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.script_errors = errors
        yield page
        chromium.close()


def spawn_form_of(page, hub, username: str) -> None:
    """Signed in at the identity provider, on the spawn form with the hub's live data."""
    page.context.clear_cookies()
    page.goto(f"{hub.url}/hub/login")
    page.get_by_text("Sign in with Authentik").click()
    page.fill("#username", username)
    page.fill("#password", PASSWORDS[username])
    page.click("#login-submit")
    expect(page).to_have_url(re.compile(re.escape(hub.url) + r"/hub/spawn.*"))


def options(page, name: str) -> list[str]:
    return page.locator(f"#field-{name} option").evaluate_all("els => els.map(e => e.value)")


@pytest.fixture
def lab_reservation(slurm):
    run(["scontrol", "create", "reservation", "ReservationName=lightsheet-course",
         "Accounts=lightsheet-lab", "StartTime=now", "Duration=30", "NodeCnt=1",
         "Flags=IGNORE_JOBS"], env=slurm.env)
    yield "lightsheet-course"
    run(["scontrol", "delete", "ReservationName=lightsheet-course"], env=slurm.env, check=False)


def test_reservations_follow_the_chosen_account_and_the_session_is_charged_so(
        page, hub, slurm, lab_reservation):
    spawn_form_of(page, hub, "alice")
    # The hub reads reservations in the background: reload until it has this one.
    for _ in range(40):
        if "lightsheet-course" in page.content():
            break
        page.wait_for_timeout(500)
        page.reload()
    account = page.locator("#field-account")
    expect(account).to_have_value("imaging")  # her default account, preselected
    assert options(page, "account") == ["imaging", "lightsheet-lab"]
    assert options(page, "reservation") == [""]  # none open to her with "imaging"
    account.select_option("lightsheet-lab")
    assert options(page, "reservation") == ["", "lightsheet-course"]
    page.locator("#field-reservation").select_option("lightsheet-course")
    page.fill("#field-cpus", "1")
    page.fill("#field-memory_gb", "1")
    page.fill("#field-walltime_hours", "1")
    page.locator("form input[type=submit], form button[type=submit]").first.click()
    alice = logged_in(hub.url, "alice")
    try:
        assert alice.progress()[-1].get("ready")
        [job] = jobs_of(slurm, "alice")
        queued = run(["squeue", "-h", "-j", job, "-o", "%a|%v"], env=slurm.env).stdout.strip()
        assert queued == "lightsheet-lab|lightsheet-course"
    finally:
        alice.stop()
    assert page.script_errors == []


def test_a_profile_that_locks_its_qos_shows_it_fixed(page, hub):
    spawn_form_of(page, hub, "ada")  # every profile; her association allows normal and workshop
    page.check("#profile-workshop")
    qos = page.locator("#field-qos")
    expect(qos).to_be_disabled()
    expect(qos).to_have_value("workshop")
    page.check("#profile-cpu")
    expect(qos).to_be_enabled()
    assert "workshop" in options(page, "qos")
    assert page.script_errors == []
