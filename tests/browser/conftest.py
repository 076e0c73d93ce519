"""Real Chromium (Debian's, through Playwright's Python package) against a real service.

The browser is never downloaded: Playwright launches the ``chromium`` on PATH
(or ``BROADCASTER_CHROMIUM``) through ``executable_path``. ``scripts/test``
installs Debian's chromium with apt when it is missing; if it still is, these
tests fail saying so (they are part of the suite, never skipped).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Harness, make_config

pytestmark = pytest.mark.browser

#: Flags for headless runs: a fake microphone and camera (live paging tests pass
#: ``--use-file-for-fake-audio-capture`` too), and sound allowed without a gesture
#: unless a test wants to see the "tap to enable sound" state.
BASE_ARGS = (
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-dev-shm-usage",
)
AUTOPLAY = "--autoplay-policy=no-user-gesture-required"


def chromium_path() -> str:
    path = os.environ.get("BROADCASTER_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "Debian's chromium is not installed: 'sudo apt-get install chromium' "
            "(scripts/test installs it when it may), or set BROADCASTER_CHROMIUM"
        )
    return path


@pytest.fixture
async def launch() -> AsyncIterator[Any]:
    """``await launch(*extra_args)`` -> a Playwright Browser, closed after the test."""
    from playwright.async_api import async_playwright

    browsers: list[Any] = []
    async with async_playwright() as pw:

        async def start(*extra: str, autoplay: bool = True) -> Any:
            args = [*BASE_ARGS, *extra]
            if autoplay:
                args.append(AUTOPLAY)
            browser = await pw.chromium.launch(
                executable_path=chromium_path(), headless=True, args=args
            )
            browsers.append(browser)
            return browser

        try:
            yield start
        finally:
            for b in browsers:
                await b.close()


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Harness]:
    """A running service (the integration test config) for a browser to use."""
    from broadcaster.app import Service
    from broadcaster.speech.espeak import EspeakEngine

    async with Service(make_config(), engine=EspeakEngine(max_text_chars=200)) as service:
        h = Harness(service, tmp_path)
        try:
            yield h
        finally:
            await h.close()
