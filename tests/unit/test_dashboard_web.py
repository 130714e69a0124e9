"""Page helpers: how times are shown, and which paths are the dashboard's own."""

from relayproxy.dashboard.site import Dashboard
from relayproxy.dashboard.web import _ENV


def test_times_are_shown_to_the_minute_or_second_and_days_as_they_are() -> None:
    when = _ENV.filters["when"]
    assert when("2026-12-07T11:31:48.731Z") == "2026-12-07 11:31"
    assert when("2026-12-07T11:31:48.731Z", seconds=True) == "2026-12-07 11:31:48"
    assert when("2026-12-07") == "2026-12-07"  # the per-day charge lines of the billing history


def test_unknown_paths_under_the_dashboards_prefixes_are_its_own_not_the_apis() -> None:
    assert Dashboard.owns("/dashboard/keys") and Dashboard.owns("/dashboard/no-such-page")
    assert Dashboard.owns("/admin/revoke") and Dashboard.owns("/static/dashboard.css")
    assert not Dashboard.owns("/v1/chat/completions") and not Dashboard.owns("/no-such-page")
