"""The customer's whole journey in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium), controls found by their accessible names (INTERFACE.md):
the setup link creates the admin; sign up; create a key; the official ``openai`` SDK uses it; the
request appears on Usage with ``billed`` and ``reason``; top up through the fake Stripe (Checkout,
then a signed webhook); the balance grows; revoke the key (the key works until its confirmation
page's Revoke); the SDK gets 401.

A screenshot of every page is written to ``screenshots/dashboard/`` (ignored by git).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.dashboard_gateway import FreshGateway, start_fresh
from tests.fakes.stripe import FakeStripe, event, sign
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

PASSWORD = "a long customer password"
MESSAGES = [{"role": "user", "content": "Hello"}]

if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):  # .ci/run installs them
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only once the browser is known to be there
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from tests.a11y import check_names  # noqa: E402
from tests.e2e.browser import SHOTS, chromium, field, submit  # noqa: E402


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(
    request: pytest.FixtureRequest, tmp_path: Path, upstream: FakeUpstream, stripe_fake: FakeStripe
) -> Iterator[FreshGateway]:
    """A fresh gateway on each store backend (``pg_url``: a new database on the test PostgreSQL)."""
    database = request.getfixturevalue("pg_url") if request.param == "postgresql" else "relay.db"
    gw = start_fresh(tmp_path, upstream, stripe_fake, database=database)
    yield gw
    gw.stop()


def shot(driver: webdriver.Chrome, shots: Path, name: str) -> None:
    """Screenshot the page, after checking that every control on it has an accessible name."""
    check_names(driver, name)
    shots.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shots / f"{name}.png"))


def fill_credentials(driver: webdriver.Chrome, email: str) -> None:
    field(driver, "Email").send_keys(email)
    field(driver, "Password").send_keys(PASSWORD)


def balance(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.ID, "balance").text


def test_the_customer_journey(browser: webdriver.Chrome, fresh: FreshGateway, stripe_fake: FakeStripe) -> None:
    d, base = browser, fresh.base_url
    shots = SHOTS / "postgresql" if fresh.database.startswith("postgresql") else SHOTS
    # The operator opens the link `serve` printed and creates the admin user.
    d.get(fresh.setup_link)
    fill_credentials(d, "operator@example.test")
    shot(d, shots, "01-setup")
    submit(d, "Create admin")
    assert d.current_url == base + "/dashboard"
    d.get(base + "/admin")
    shot(d, shots, "02-admin")
    submit(d, "Log out")
    assert d.current_url == base + "/login"
    shot(d, shots, "03-login")

    # A customer signs up (signup is open) and lands on the overview with the sign-up credit.
    d.get(base + "/signup")
    fill_credentials(d, "customer@example.test")
    shot(d, shots, "04-signup")
    submit(d, "Sign up")
    assert d.current_url == base + "/dashboard"
    assert balance(d) == "$1"
    shot(d, shots, "05-overview-new")

    # A key, shown once.
    d.get(base + "/dashboard/keys")
    field(d, "Label").send_keys("laptop")
    field(d, "Spend limit (USD)").send_keys("0.50")
    assert field(d, "Expires").get_attribute("type") == "date"
    d.find_element(By.XPATH, "//fieldset//label[normalize-space()='text']/input[@type='checkbox']").click()
    submit(d, "Create key")
    secret = d.find_element(By.ID, "new-key").text
    assert secret.startswith("rp_") and len(secret) == 35
    listed = d.find_element(By.XPATH, "//tr[td[normalize-space()='laptop']]").text
    assert "limit $0.5" in listed and "models text" in listed
    shot(d, shots, "06-keys-created")

    # The official SDK uses it through the gateway to the fake upstream.
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
    completion = sdk.chat.completions.create(model="text", messages=MESSAGES)
    assert completion.choices[0].message.content

    # The request is on the Usage page, billed, with its reason.
    d.get(base + "/dashboard/usage")
    row = _wait_row(d, base, "text")
    assert row.find_element(By.CLASS_NAME, "billed").text == "yes"
    assert row.find_element(By.CLASS_NAME, "reason").text
    shot(d, shots, "07-usage")
    _filter_and_export(d, base)

    # Top up: the form's POST is answered by a 303 to Stripe Checkout, and the CSP lets it through.
    d.get(base + "/dashboard/billing")
    before = balance(d)
    field(d, "Amount (USD)").send_keys("20")
    shot(d, shots, "08-billing")
    submit(d, "Top up")
    WebDriverWait(d, 15).until(lambda drv: drv.current_url.startswith("https://checkout.stripe.com/"))
    session_id = next(
        sid for sid, s in stripe_fake.sessions.items() if d.current_url.startswith(s["url"].split("#")[0])
    )
    payload = event("checkout.session.completed", stripe_fake.pay(session_id))
    req = urllib.request.Request(
        base + "/billing/stripe/webhook", payload, {"stripe-signature": sign(payload)}, method="POST"
    )
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200
    d.get(base + "/dashboard/billing?topup=done")
    after = balance(d)
    assert float(after.lstrip("$")) - float(before.lstrip("$")) == pytest.approx(20)
    assert "topup" in d.find_element(By.TAG_NAME, "table").text
    shot(d, shots, "09-billing-after-topup")

    # An amount outside the bounds is a clear error on the page, not a redirect.
    field(d, "Amount (USD)").send_keys("1")
    submit(d, "Top up")
    assert "Amount (USD): enter between" in d.find_element(By.CLASS_NAME, "error").text
    shot(d, shots, "10-billing-bad-amount")

    d.get(base + "/dashboard/settings")
    shot(d, shots, "11-settings")
    d.get(base + "/dashboard")
    bars = d.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    assert len(bars) == 30 and float(bars[-1].get_attribute("height") or 0) > 0  # today's charge
    shot(d, shots, "12-overview-after")

    # Revoke asks first (naming the key, saying what happens); until confirmed the key works.
    d.get(base + "/dashboard/keys")
    row = d.find_element(By.XPATH, "//tr[td[normalize-space()='laptop']]")
    prefix = row.find_element(By.TAG_NAME, "code").text.rstrip("…")
    submit(d, "Revoke", row)
    text = d.find_element(By.TAG_NAME, "main").text
    assert prefix in text and "laptop" in text and "401" in text, text
    shot(d, shots, "13-keys-revoke-confirm")
    assert sdk.chat.completions.create(model="text", messages=MESSAGES).choices[0].message.content
    d.find_element(By.LINK_TEXT, "Cancel").click()
    WebDriverWait(d, 15).until(lambda drv: drv.current_url == base + "/dashboard/keys")
    assert sdk.chat.completions.create(model="text", messages=MESSAGES).choices[0].message.content
    submit(d, "Revoke", d.find_element(By.XPATH, "//tr[td[normalize-space()='laptop']]"))
    submit(d, "Revoke")  # the confirmation's own button: now the SDK is refused at once
    assert d.current_url == base + "/dashboard/keys"
    assert d.find_elements(By.XPATH, "//tr[td[normalize-space()='laptop']]") == []
    shot(d, shots, "14-keys-revoked")
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="text", messages=MESSAGES)

    # The customers' documentation names this gateway's own base URLs and its models.
    d.get(base + "/docs")
    assert f"{base}/v1" in d.page_source and "oa-text" in d.page_source
    shot(d, shots, "15-docs")
    d.get(base + "/models")  # the public price list, in the dashboard's style for a browser
    assert d.find_element(By.TAG_NAME, "h1").text == "Models and prices" and "oa-text" in d.page_source
    shot(d, shots, "16-models")


def _filter_and_export(d: webdriver.Chrome, base: str) -> None:
    """The usage filters (model, outcome, dates) and the CSV export of what they show."""
    today = d.find_element(By.XPATH, "//tbody/tr[td[3][normalize-space()='text']]/td[1]").text[:10]  # its UTC day
    Select(field(d, "Model")).select_by_visible_text("text")
    d.execute_script("arguments[0].value = arguments[1]", field(d, "From"), today)  # a date field's own UI
    d.execute_script("arguments[0].value = arguments[1]", field(d, "To"), today)
    submit(d, "Filter")
    assert d.current_url.endswith(f"model=text&outcome=&from={today}&to={today}")
    assert d.find_element(By.XPATH, "//tbody/tr[td[3][normalize-space()='text']]/td[@class='billed']").text == "yes"
    export = d.find_element(By.LINK_TEXT, "Export CSV").get_attribute("href") or ""
    assert export == f"{base}/dashboard/usage.csv?model=text&from={today}&to={today}"
    session = next(c for c in d.get_cookies() if c["name"] == "rp_session")
    req = urllib.request.Request(export, headers={"cookie": f"rp_session={session['value']}"})
    with urllib.request.urlopen(req) as resp:
        lines = resp.read().decode().strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith(",billed,reason") and lines[1].endswith(",true,charged"), lines
    Select(field(d, "Outcome")).select_by_visible_text("rejected")
    submit(d, "Filter")
    assert d.find_element(By.TAG_NAME, "tbody").text == "No requests yet."


def _wait_row(d: webdriver.Chrome, base: str, model: str) -> WebElement:
    """The usage row of ``model`` (the record is written as the request ends)."""
    deadline = time.monotonic() + 10
    while True:
        rows = d.find_elements(By.XPATH, f"//tbody/tr[td[3][normalize-space()='{model}']]")
        if rows or time.monotonic() > deadline:
            assert rows, d.page_source
            return rows[0]
        time.sleep(0.2)
        d.get(base + "/dashboard/usage")
