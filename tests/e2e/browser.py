"""A real headless Chromium for the dashboard's page tests (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) and helpers that find controls by their accessible names.

Import it only once ``AVAILABLE`` is known to be true (the test modules skip otherwise).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[2] / "screenshots" / "dashboard"
DESKTOP = (1280, 1000)


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="relayproxy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        # No request leaves the machine: Stripe's Checkout host resolves to nothing.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def field(driver: webdriver.Chrome, name: str, scope: WebElement | None = None) -> WebElement:
    """The input whose <label> reads ``name``."""
    label = (scope or driver).find_element(By.XPATH, f".//label[normalize-space()='{name}']")
    return driver.find_element(By.ID, label.get_attribute("for") or "")


def button(driver: webdriver.Chrome | WebElement, name: str) -> WebElement:
    return driver.find_element(By.XPATH, f".//button[normalize-space()='{name}']")


def submit(driver: webdriver.Chrome, name: str, scope: WebElement | None = None) -> None:
    """Click the form's button ``name`` and wait until the next page has replaced this one."""
    # A mark on this document, gone once another one has loaded. (Waiting for the old <html> to go
    # stale is not enough: mid-navigation Chromium may answer "Node with given id does not belong
    # to the document" instead of a stale-element error.)
    driver.execute_script("document.documentElement.dataset.leaving = '1'")
    button(scope or driver, name).click()
    WebDriverWait(driver, 15, ignored_exceptions=(WebDriverException,)).until(_next_page_loaded)


def _next_page_loaded(driver: webdriver.Chrome) -> bool:
    return bool(
        driver.execute_script("return document.readyState === 'complete' && !document.documentElement.dataset.leaving")
    )
