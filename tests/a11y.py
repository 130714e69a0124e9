"""An accessibility check of a page in a real browser (Selenium, any WebDriver), hand-written
(no axe-core offline): ``audit(driver, "keys")`` checks the page the driver shows and screenshots it
at desktop and phone width; an assertion names what failed.

- names: every form control has an accessible name (a ``<label>``, ``aria-label`` or
  ``aria-labelledby``), every button and link has text, images and SVG charts a text alternative,
  ``<html lang>`` and ``<title>`` are set, no ``for``/``aria-labelledby`` points at nothing;
- contrast: every element showing text (and every placeholder) has the WCAG 2.x contrast ratio
  >= 4.5:1 against its effective background (ancestors' background colours composited), 3:1 for
  large text (24 px, or 18.66 px bold), computed in the browser;
- keyboard: Tab from the top reaches every link, button and field in document order (no positive
  ``tabindex``), and each shows a focus indicator (outline or box-shadow) it does not show
  unfocused (an outline at 3:1 against the page), with its text still at the contrast above;
- hover: under the pointer, links and buttons (one of each kind) keep that contrast;
- phone: at 375 px wide the page does not scroll sideways (``scrollWidth <= innerWidth``).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

__all__ = ["PHONE", "audit", "check_contrast", "check_focus", "check_hover", "check_names", "check_phone"]

PHONE = (375, 812)
_JS = (Path(__file__).with_name("a11y.js")).read_text(encoding="utf-8")


def _run(driver: WebDriver, call: str) -> Any:
    return driver.execute_script(_JS + "\nreturn " + call + ";")


def check_names(driver: WebDriver, page: str) -> None:
    bad = _run(driver, "a11y.unnamed()")
    assert bad == [], f"{page}: without an accessible name or text alternative: {bad}"


def check_contrast(driver: WebDriver, page: str) -> None:
    bad = _run(driver, "a11y.lowContrast(document)")
    assert bad == [], f"{page}: text below the WCAG contrast minimum: {bad}"


def check_focus(driver: WebDriver, page: str) -> None:
    """Tab through the page from the top; every control in order, each with a visible focus ring."""
    plan = _run(driver, "a11y.startTabWalk()")
    assert plan["positive"] == [], f"{page}: positive tabindex breaks the order: {plan['positive']}"
    ActionChains(driver).send_keys(Keys.TAB * plan["presses"]).perform()
    log: list[dict[str, Any]] = _run(driver, "a11y.tabLog()")
    order: list[int] = []
    for entry in log:
        index = entry["index"]
        if index >= 0 and index in order:
            break  # wrapped around to the top
        if index >= 0:
            order.append(index)
        problems = [p for p in (entry["indicator"], entry["contrast"]) if p]
        assert not problems, f"{page}: focused {entry['what']}: {'; '.join(problems)}"
    expected = list(range(len(plan["controls"])))
    missed = [plan["controls"][i] for i in expected if i not in order]
    assert not missed, f"{page}: Tab never reached {missed}"
    assert order == expected, f"{page}: Tab order {[plan['controls'][i] for i in order]} is not the page's order"
    _run(driver, "a11y.stopTabWalk()")


def check_hover(driver: WebDriver, page: str) -> None:
    """The pointer over a link or button of each kind (tag, classes, colours): its text keeps its contrast."""
    for el in _run(driver, "a11y.hoverTargets()"):
        ActionChains(driver).move_to_element(el).perform()
        problem = driver.execute_script(_JS + "\nreturn a11y.hoverProblem(arguments[0]);", el)
        assert problem is None, f"{page}: under the pointer, {problem}"
    away = ActionBuilder(driver)
    away.pointer_action.move_to_location(0, 0)  # the page's corner, over nothing
    away.perform()


def check_phone(driver: WebDriver, page: str) -> None:
    width = driver.execute_script("return window.innerWidth")
    assert width <= PHONE[0], f"the window did not narrow to {PHONE[0]} px (innerWidth {width})"
    wide = _run(driver, "a11y.sideways()")  # clientWidth: innerWidth less a scrollbar's width
    assert wide["scrollWidth"] <= wide["clientWidth"], f"{page}: scrolls sideways at {width} px: {wide['culprits']}"


def screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page, beyond the viewport (Chromium's DevTools protocol), else the viewport."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(driver, "execute_cdp_cmd"):
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
    else:
        driver.save_screenshot(str(path))


def audit(driver: WebDriver, page: str, shots: Path | None = None) -> None:
    """All the checks on the page the driver shows, at desktop then phone width (then back)."""
    check_names(driver, page)
    check_contrast(driver, page)
    check_focus(driver, page)
    if shots is not None:
        screenshot(driver, shots / f"{page}.png")
    check_hover(driver, page)  # after the screenshot, which shows no pointer over anything
    desktop = driver.get_window_size()
    driver.set_window_size(*PHONE)
    try:
        check_phone(driver, page)
        check_contrast(driver, page + " (phone)")
        if shots is not None:
            screenshot(driver, shots / f"{page}-phone.png")
    finally:
        driver.set_window_size(desktop["width"], desktop["height"])
