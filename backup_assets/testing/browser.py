"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the browser e2e tests.

Playwright's driver ships in its wheel; the browser is the system package (never `playwright install`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

CHROMIUM = os.environ.get("TENANT_BACKUP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install '.[test]')"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        return f"{CHROMIUM} not found (run .ci/install-browser as root)"
    return None


@contextlib.contextmanager
def chromium_page(*, width: int = 1600, height: int = 1000, timeout_ms: int = 30_000) -> Iterator:
    """A fresh headless page; the browser is closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()


def dismiss_community_dialog(page, timeout_ms: int = 5_000) -> bool:
    """Click "Skip" on the "Join the Dagster community" dialog a fresh instance shows; True if it was there.
    timeout_ms=0 only looks (no wait)."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    if timeout_ms == 0:
        if not skip.is_visible():
            return False
        timeout_ms = 5_000
    try:
        skip.wait_for(state="visible", timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - absent on instances that already answered it
        return False
    skip.click()
    skip.wait_for(state="hidden", timeout=timeout_ms)
    return True
