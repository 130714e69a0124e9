"""The dashboard's security properties, with a plain HTTP client against a real `serve`:
CSRF and Origin checks, a new session at login, escaping, account isolation, the login
throttle, security headers, and no secret (password hash, session token) in pages, logs or /metrics."""

from __future__ import annotations

import re
import sqlite3
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from tests.e2e.dashboard_gateway import Browserless, FreshGateway, start_fresh
from tests.fakes.stripe import FakeStripe
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def fresh(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, stripe_fake: FakeStripe
) -> Iterator[FreshGateway]:
    gw = start_fresh(tmp_path_factory.mktemp("dash-sec"), upstream, stripe_fake)
    yield gw
    gw.stop()


def _keys(gw: FreshGateway, account: str) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(gw.db) as db:
        rows = db.execute(
            "SELECT k.id, k.label, k.revoked_at FROM api_keys k JOIN accounts a ON a.id = k.account_id"
            " WHERE a.name = ? ORDER BY k.created_at",
            (account,),
        ).fetchall()
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]


def _user(gw: FreshGateway, email: str) -> Browserless:
    client = Browserless(gw)
    assert client.signup(email, PASSWORD) == 303
    return client


def test_every_page_has_the_security_headers(fresh: FreshGateway) -> None:
    client = _user(fresh, "headers@example.test")
    for path in (
        "/login",
        "/signup",
        "/dashboard",
        "/dashboard/keys",
        "/dashboard/usage",
        "/dashboard/billing",
        "/dashboard/settings",
        "/admin",
        "/dashboard/usage.csv",
    ):
        _, headers, _ = client.request("GET", path)
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "form-action 'self' https://checkout.stripe.com" in csp, path
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] and headers["cache-control"] == "no-store"
    cookie = next(v for k, v in client.cookies.items() if k == "rp_session")
    assert cookie  # http public_url: no __Host- prefix, no Secure


def test_post_without_or_with_a_wrong_csrf_token_is_403_and_changes_nothing(fresh: FreshGateway) -> None:
    client = _user(fresh, "csrf@example.test")
    token = client.csrf("/dashboard/keys")
    for fields, origin in (
        ({"label": "no-token"}, "self"),
        ({"label": "wrong-token", "csrf": "x" * 43}, "self"),
        ({"label": "foreign-origin", "csrf": token}, "https://evil.example"),
        ({"label": "no-origin", "csrf": token}, None),
    ):
        status, _, _ = client.request("POST", "/dashboard/keys", fields, origin=origin)
        assert status == 403, fields
    assert _keys(fresh, "csrf@example.test") == []
    status, _, html = client.request("POST", "/dashboard/keys", {"label": "good", "csrf": token})
    assert status == 200 and 'id="new-key"' in html
    assert [label for _, label, _ in _keys(fresh, "csrf@example.test")] == ["good"]


def test_login_without_a_token_is_403(fresh: FreshGateway) -> None:
    client = Browserless(fresh)
    status, _, _ = client.request("POST", "/login", {"email": "a@b.test", "password": PASSWORD})
    assert status == 403


def test_a_session_from_before_login_is_not_accepted_after_it(fresh: FreshGateway) -> None:
    client = _user(fresh, "fixation@example.test")
    before = client.cookies["rp_session"]
    status, _ = client.login("fixation@example.test", PASSWORD)
    assert status == 303
    after = client.cookies["rp_session"]
    assert after != before
    stale = Browserless(fresh)
    stale.cookies["rp_session"] = before
    status, headers, _ = stale.request("GET", "/dashboard/keys")
    assert status == 303 and headers["location"] == "/login"
    status, _, _ = client.request("GET", "/dashboard/keys")
    assert status == 200


def test_markup_in_a_label_or_email_is_shown_escaped(fresh: FreshGateway) -> None:
    email = "<script>alert(1)</script>@example.test"
    client = Browserless(fresh)
    token = client.csrf("/signup")
    client.request("POST", "/signup", {"csrf": token, "email": email, "password": PASSWORD})
    # An e-mail with spaces would be refused; this one has none, so it is accepted and shown.
    token = client.csrf("/dashboard/keys")
    client.request("POST", "/dashboard/keys", {"label": "<script>alert(2)</script>", "csrf": token})
    _, _, html = client.request("GET", "/dashboard/keys")
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_another_accounts_key_cannot_be_revoked_or_its_usage_seen(fresh: FreshGateway) -> None:
    alice, mallory = _user(fresh, "alice@example.test"), _user(fresh, "mallory@example.test")
    alice.request("POST", "/dashboard/keys", {"label": "alice-key", "csrf": alice.csrf("/dashboard/keys")})
    ((key_id, _, _),) = _keys(fresh, "alice@example.test")
    assert mallory.request("GET", f"/dashboard/keys/revoke?key_id={key_id}")[0] == 404  # its confirmation
    status, _, _ = mallory.request(
        "POST", "/dashboard/keys/revoke", {"key_id": key_id, "csrf": mallory.csrf("/dashboard/keys")}
    )
    assert status == 404
    assert _keys(fresh, "alice@example.test")[0][2] is None
    _, _, html = mallory.request("GET", f"/dashboard/usage?key={key_id}")
    assert "alice" not in html
    status, _, _ = mallory.request("GET", "/admin")
    assert status == 403
    status, _, _ = mallory.request(
        "POST",
        "/admin/grant",
        {"account": "mallory@example.test", "amount_usd": "100", "csrf": mallory.csrf("/dashboard/keys")},
    )
    assert status == 403


def test_login_throttling_engages_and_answers_alike_for_unknown_and_wrong(fresh: FreshGateway) -> None:
    _user(fresh, "victim@example.test")
    client = Browserless(fresh)
    unknown = client.login("nobody@example.test", "wrong password 1")
    wrong = client.login("victim@example.test", "wrong password 1")
    assert unknown[0] == wrong[0] == 401
    assert re.sub(r'value="[^"]+"', "", unknown[1]) == re.sub(r'value="[^"]+"', "", wrong[1])
    statuses = [client.login("victim@example.test", f"wrong password {i}")[0] for i in range(6)]
    assert statuses[-1] == 429
    status, html = client.login("victim@example.test", PASSWORD)  # even the right password waits
    assert status == 429, html


def test_signup_closed_is_404(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, stripe_fake: FakeStripe
) -> None:
    gw = start_fresh(tmp_path_factory.mktemp("dash-closed"), upstream, stripe_fake, signup="closed")
    try:
        client = Browserless(gw)
        assert client.request("GET", "/signup")[0] == 404
        assert client.request("POST", "/signup", {"email": "x@y.test", "password": PASSWORD})[0] in (403, 404)
        setup = urlparse(gw.setup_link)
        path = f"{setup.path}?{setup.query}"
        token = re.search(r'name="csrf" value="([^"]+)"', client.request("GET", path)[2]).group(1)  # type: ignore[union-attr]
        fields = {
            "csrf": token,
            "token": setup.query.removeprefix("token="),
            "email": "op@example.test",
            "password": PASSWORD,
        }
        assert client.request("POST", "/setup", fields)[0] == 303
        assert client.request("GET", "/admin")[0] == 200
        again = Browserless(gw)
        assert again.request("GET", path)[0] == 404  # the link works once
        assert setup.query.removeprefix("token=") not in gw.log.read_text()  # the access log has no query
    finally:
        gw.stop()


def test_no_password_hash_or_session_token_in_pages_logs_or_metrics(fresh: FreshGateway) -> None:
    client = _user(fresh, "secrets@example.test")
    token = client.cookies["rp_session"]
    pages = "".join(client.request("GET", p)[2] for p in ("/dashboard", "/dashboard/keys", "/dashboard/settings"))
    with sqlite3.connect(fresh.db) as db:
        hashes = [str(r[0]) for r in db.execute("SELECT password_hash FROM users")]
    with urllib.request.urlopen(fresh.base_url + "/metrics") as resp:
        metrics = resp.read().decode()
    log = fresh.log.read_text()
    for text in (pages, metrics, log):
        assert token not in text
        assert "$argon2" not in text and not any(h in text for h in hashes)
    assert PASSWORD not in log


def test_usage_csv_export_is_the_accounts_own_records(fresh: FreshGateway) -> None:
    import openai

    owner, other = _user(fresh, "csv@example.test"), _user(fresh, "csv-other@example.test")
    _, _, html = owner.request("POST", "/dashboard/keys", {"label": "csv", "csrf": owner.csrf("/dashboard/keys")})
    secret = re.search(r'<code id="new-key">([^<]+)</code>', html).group(1)  # type: ignore[union-attr]
    sdk = openai.OpenAI(base_url=fresh.base_url + "/v1", api_key=secret, max_retries=0)
    sdk.chat.completions.create(model="text", messages=[{"role": "user", "content": "Hi"}])
    status, headers, body = owner.request("GET", "/dashboard/usage.csv?model=text")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    lines = body.strip().splitlines()
    assert lines[0].startswith("request_id,created_at,key_id,model") and lines[0].endswith("billed,reason")
    assert len(lines) == 2 and ",text," in lines[1] and ",completed," in lines[1]
    assert lines[1].split(",")[-2:] == ["true", "charged"]
    assert other.request("GET", "/dashboard/usage.csv")[2].strip().count("\n") == 0  # the header alone


@pytest.fixture(scope="module")
def admin(fresh: FreshGateway) -> Browserless:
    """The admin created through the one-time setup link (once per gateway)."""
    client = Browserless(fresh)
    setup = urlparse(fresh.setup_link)
    _, _, html = client.request("GET", f"{setup.path}?{setup.query}")
    token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    fields = {"csrf": token, "token": setup.query.removeprefix("token="), "email": "admin@example.test"}
    assert client.request("POST", "/setup", {**fields, "password": PASSWORD})[0] == 303
    return client


def test_admin_grants_credit_and_disables_a_user_with_an_audit_trail(fresh: FreshGateway, admin: Browserless) -> None:
    target = _user(fresh, "target@example.test")
    token = admin.csrf("/admin")
    _, _, html = admin.request("GET", "/admin")
    assert "target@example.test" in html and html.count(">Grant credit</button>") >= 2
    assert (
        admin.request("POST", "/admin/grant", {"account": "target@example.test", "amount_usd": "12.50", "csrf": token})[
            0
        ]
        == 303
    )
    with sqlite3.connect(fresh.db) as db:
        balance = db.execute("SELECT balance_microusd FROM accounts WHERE name = 'target@example.test'").fetchone()[0]
        grants = db.execute(
            "SELECT amount_microusd, note FROM ledger l JOIN accounts a ON a.id = l.account_id"
            " WHERE a.name = 'target@example.test' AND kind = 'grant' ORDER BY seq"
        ).fetchall()
        audit = db.execute("SELECT actor, action, target FROM audit ORDER BY seq").fetchall()
        (user_id,) = db.execute("SELECT id FROM users WHERE email = 'target@example.test'").fetchone()
    assert balance == 13_500_000  # 1 of sign-up credit + 12.50
    assert grants[-1] == (12_500_000, "granted by admin@example.test on the admin page")
    assert ("admin@example.test", "credit.grant", "account:target@example.test") in audit
    bad = admin.request("POST", "/admin/grant", {"account": "target@example.test", "amount_usd": "-1", "csrf": token})
    assert bad[0] == 400 and "Amount (USD)" in bad[2]
    assert target.request("GET", "/dashboard")[0] == 200
    assert admin.request("POST", "/admin/disable", {"user_id": str(user_id), "csrf": token})[0] == 303
    assert target.request("GET", "/dashboard")[0] == 303  # its session ended at once
    assert target.login("target@example.test", PASSWORD)[0] == 401


def test_settings_change_password_and_end_other_sessions(fresh: FreshGateway) -> None:
    laptop = _user(fresh, "two-devices@example.test")
    phone = Browserless(fresh)
    assert phone.login("two-devices@example.test", PASSWORD)[0] == 303
    token = laptop.csrf("/dashboard/settings")
    assert laptop.request("POST", "/dashboard/settings/sessions", {"csrf": token})[0] == 200
    assert phone.request("GET", "/dashboard")[0] == 303 and laptop.request("GET", "/dashboard")[0] == 200
    assert phone.login("two-devices@example.test", PASSWORD)[0] == 303
    new = "another long password"
    fields = {"csrf": token, "current": "not it at all", "password": new}
    assert laptop.request("POST", "/dashboard/settings/password", fields)[0] == 400
    fields["current"] = PASSWORD
    status, _, html = laptop.request("POST", "/dashboard/settings/password", fields)
    assert status == 200 and "Password changed" in html
    assert phone.request("GET", "/dashboard")[0] == 303 and laptop.request("GET", "/dashboard")[0] == 200
    assert Browserless(fresh).login("two-devices@example.test", PASSWORD)[0] == 401
    assert Browserless(fresh).login("two-devices@example.test", new)[0] == 303


def test_without_email_there_is_no_forgot_password_page(fresh: FreshGateway) -> None:
    client = Browserless(fresh)
    _, _, html = client.request("GET", "/login")
    assert "Forgot password?" not in html and "/forgot" not in html
    assert client.request("GET", "/forgot")[0] == 404
    assert client.request("GET", "/reset?token=x")[0] == 404
    status = client.request("POST", "/forgot", {"csrf": client.csrf("/login"), "email": "victim@example.test"})[0]
    assert status == 404
    assert _user(fresh, "unmailed@example.test").request("GET", "/dashboard")[0] == 200  # no verification


def test_revoke_asks_first_and_only_a_post_with_the_token_revokes(fresh: FreshGateway, admin: Browserless) -> None:
    owner = _user(fresh, "revoker@example.test")
    for label in ("<b>laptop</b>", "server"):
        owner.request("POST", "/dashboard/keys", {"label": label, "csrf": owner.csrf("/dashboard/keys")})
    (mine, _, _), (other, _, _) = _keys(fresh, "revoker@example.test")
    status, _, html = owner.request("GET", f"/dashboard/keys/revoke?key_id={mine}")
    assert status == 200 and "&lt;b&gt;laptop&lt;/b&gt;" in html and "<b>laptop" not in html
    prefix = next(k.split("…")[0] for k in re.findall(r"<code>(rp_[^<]+)</code>", html))
    assert "401" in html and 'href="/dashboard/keys">Cancel</a>' in html and ">Revoke</button>" in html
    assert re.search(r'<form method="post" action="/dashboard/keys/revoke">', html) and prefix.startswith("rp_")
    token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    for fields, origin in (({"key_id": mine}, "self"), ({"key_id": mine, "csrf": token}, "https://evil.example")):
        assert owner.request("POST", "/dashboard/keys/revoke", fields, origin=origin)[0] == 403
    assert [revoked for _, _, revoked in _keys(fresh, "revoker@example.test")] == [
        None,
        None,
    ]  # the GET revoked nothing
    assert owner.request("POST", "/dashboard/keys/revoke", {"key_id": mine, "csrf": token})[0] == 303
    assert _keys(fresh, "revoker@example.test")[0][2] is not None
    assert owner.request("GET", f"/dashboard/keys/revoke?key_id={mine}")[0] == 404  # revoked already

    # The admin's revoke of any key asks first too; only admins see it; an unknown key is 404.
    assert owner.request("GET", f"/admin/revoke?key_id={other}")[0] == 403
    status, _, html = admin.request("GET", f"/admin/revoke?key_id={other}")
    assert status == 200 and "revoker@example.test" in html and "server" in html and 'href="/admin">Cancel</a>' in html
    admin_token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert admin.request("POST", "/admin/revoke", {"key_id": other})[0] == 403
    assert _keys(fresh, "revoker@example.test")[1][2] is None
    assert admin.request("GET", "/admin/revoke?key_id=no-such-key")[0] == 404
    assert admin.request("POST", "/admin/revoke", {"key_id": "no-such-key", "csrf": admin_token})[0] == 404
    assert admin.request("POST", "/admin/revoke", {"key_id": other, "csrf": admin_token})[0] == 303
    assert _keys(fresh, "revoker@example.test")[1][2] is not None
