"""The browser tests drive Debian's Chromium through Playwright (never ``playwright install``).

CI installs Chromium with apt (``/usr/bin/chromium``); without it every test
here is skipped, saying so. ``DBOS_TEST_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser

HERE = Path(__file__).parent
CHROMIUM = os.environ.get("DBOS_TEST_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.path.exists(CHROMIUM)  # checked at import: not on the event loop


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if HAVE_CHROMIUM:
        return
    skip = pytest.mark.skip(reason=f"no Chromium at {CHROMIUM} (CI: apt-get install chromium)")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium driven by Playwright."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()
