"""Every dashboard page passes the accessibility check of tests/a11y.py in a real headless Chromium:
accessible names, text contrast, keyboard focus (order and a visible indicator) and a phone's width.

Each page is audited once as it is shown, with a screenshot at desktop and phone width in
``screenshots/dashboard/page-*.png`` (ignored by git).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import openai
import pytest

from tests.e2e.dashboard_gateway import FreshGateway, start_fresh
from tests.fakes.stripe import FakeStripe
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):  # .ci/run installs them
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only once the browser is known to be there
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.a11y import PHONE, audit, check_contrast, check_focus, check_hover, check_names, check_phone  # noqa: E402
from tests.e2e.browser import SHOTS, chromium, field, submit  # noqa: E402

PASSWORD = "a long customer password"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def fresh(tmp_path: Path, upstream: FakeUpstream, stripe_fake: FakeStripe) -> Iterator[FreshGateway]:
    gw = start_fresh(tmp_path, upstream, stripe_fake)
    yield gw
    gw.stop()


def test_every_page_passes_the_accessibility_check(browser: webdriver.Chrome, fresh: FreshGateway) -> None:
    d, base = browser, fresh.base_url

    def page(path: str, name: str) -> None:
        d.get(base + path)
        audit(d, name, SHOTS)

    def cancel(back: str) -> None:
        d.find_element(By.LINK_TEXT, "Cancel").click()
        WebDriverWait(d, 15).until(lambda drv: drv.current_url == back)

    def credentials(email: str, button: str) -> None:
        field(d, "Email").send_keys(email)
        field(d, "Password").send_keys(PASSWORD)
        submit(d, button)

    page(fresh.setup_link.removeprefix(base), "page-setup")
    credentials("operator@example.test", "Create admin")
    page("/admin", "page-admin")
    submit(d, "Revoke")  # the first-start key's
    audit(d, "page-admin-revoke", SHOTS)
    cancel(base + "/admin")
    submit(d, "Log out")
    page("/login", "page-login")
    page("/signup", "page-signup")
    page("/docs", "page-docs-public")
    page("/models", "page-models")
    page("/dashboard/no-such-page", "page-404-public")

    d.get(base + "/signup")
    credentials("customer@example.test", "Sign up")
    page("/dashboard", "page-overview-new")
    page("/dashboard/keys", "page-keys-empty")
    field(d, "Label").send_keys("laptop")
    submit(d, "Create key")
    audit(d, "page-keys-new", SHOTS)  # the secret, shown once
    secret = d.find_element(By.ID, "new-key").text
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
    sdk.chat.completions.create(model="text", messages=[{"role": "user", "content": "Hello"}])
    page("/dashboard/keys", "page-keys")
    submit(d, "Revoke")
    audit(d, "page-keys-revoke", SHOTS)  # the confirmation
    cancel(base + "/dashboard/keys")
    page("/dashboard/usage", "page-usage")
    page("/dashboard/billing", "page-billing")
    page("/dashboard/settings", "page-settings")
    page("/dashboard", "page-overview")
    page("/docs", "page-docs")
    page("/admin", "page-403")
    page("/dashboard/keys/revoke?key_id=no-such-key", "page-404-key")
    page("/dashboard/no-such-page", "page-404")


_GOOD = '<a href="#a">Home</a> <label for="i">Name</label> <input id="i"> <button>Save</button>'
_BAD: dict[str, tuple[str, Callable[[webdriver.Chrome, str], None]]] = {
    "unlabelled field": ('<input id="i">', check_names),
    "empty button": ("<button></button>", check_names),
    "chart without text": ('<svg width="10" height="10"><rect width="5" height="5"/></svg>', check_names),
    "faint text": ('<p style="color:#999">faint</p>', check_contrast),
    "faint on a tinted parent": (
        '<div style="background:#0b57d0"><p style="color:#1b1f24">dark</p></div>',
        check_contrast,
    ),
    "faint placeholder": (
        '<label for="i">N</label><input id="i" placeholder="hint" style="color:#000">'
        "<style>::placeholder{color:#bbb}</style>",
        check_contrast,
    ),
    "no focus ring": ('<style>a:focus{outline:none}</style><a href="#a">Home</a>', check_focus),
    "positive tabindex": ('<a href="#a">A</a><a href="#b" tabindex="2">B</a>', check_focus),
    "faint under the pointer": ("<style>button:hover{color:#ccc}</style>", check_hover),
    "faint focus outline": ('<style>a:focus-visible{outline:3px solid #eee}</style><a href="#b">B</a>', check_focus),
    "too wide for a phone": ('<div style="width:600px">wide</div>', check_phone),
}


def _show(d: webdriver.Chrome, body: str) -> None:
    d.get("data:text/html;charset=utf-8," + quote(f'<!doctype html><html lang="en"><title>t</title>{body}</html>'))


@pytest.mark.parametrize("case", list(_BAD))
def test_the_check_finds_what_it_is_meant_to_find(browser: webdriver.Chrome, case: str) -> None:
    _show(browser, _GOOD)
    audit(browser, "good")  # a plain page passes
    body, check = _BAD[case]
    _show(browser, _GOOD + body)
    desktop = browser.get_window_size()
    if check is check_phone:
        browser.set_window_size(*PHONE)
    try:
        with pytest.raises(AssertionError):
            check(browser, case)
    finally:
        browser.set_window_size(desktop["width"], desktop["height"])
