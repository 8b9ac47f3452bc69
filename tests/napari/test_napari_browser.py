"""The desktop in a real browser (Debian's chromium, Playwright): alice signs in, opens her
session's Desktop (noVNC through the hub), her kernel opens an image in napari, and the
desktop shows the napari window with the image.  Screenshots go to
artifacts/browser/napari-desktop/."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from test_browser import CHROMIUM, CHROMIUM_ARGS, Steps, sign_in_at_idp


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def canvas_pixels(page) -> np.ndarray:
    png = page.locator("#screen canvas").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def napari_on_screen(pixels: np.ndarray) -> tuple[int, int]:
    """(pixels of napari's dark theme panels, pixels of the image's green nuclei channel); the
    VNC stream is JPEG-compressed, so colours are compared with some tolerance."""
    theme = (np.abs(pixels - np.array([38, 41, 48])).max(axis=-1) <= 10).sum()
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    green = ((g > 120) & (r < 80) & (b < 80)).sum()
    return int(theme), int(green)


def test_desktop_in_the_browser_shows_napari_with_the_image(browser, hub, alice_session,
                                                            alice_kernel, sample_image):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    steps = Steps(page, "napari-desktop")
    try:
        sign_in_at_idp(page, hub, "alice")
        expect(page).to_have_url(re.compile(re.escape(hub.url) + r"/(hub|user)/.*"))
        page.goto(f"{hub.url}/user/alice/desktop/")
        expect(page.locator("#status")).to_have_text("Connected", timeout=60_000)
        steps.shot("desktop-connected")
        empty = napari_on_screen(canvas_pixels(page))

        reply = alice_kernel.run("from bioimage_gateway.widgets import open_in_napari\n"
                                 f"viewer = open_in_napari({str(sample_image)!r})\n"
                                 "print([layer.name for layer in viewer.layers])")
        assert reply.status == "ok", (reply.error, reply.stderr[-2000:])
        assert "nuclei-Hoechst" in reply.stdout

        deadline = time.monotonic() + 60
        shown = empty
        while time.monotonic() < deadline:
            shown = napari_on_screen(canvas_pixels(page))
            if shown[0] > 20_000 and shown[1] > 200:
                break
            time.sleep(1)
        steps.shot("napari-with-image")
        assert empty[0] < 1_000 and empty[1] < 50, empty   # the bare desktop before
        assert shown[0] > 20_000 and shown[1] > 200, shown  # napari's window, the image in it
        expect(page.locator("#status")).to_have_text("Connected")
    finally:
        steps.shot("last-state")
        context.close()
