"""Several sandbox portals with one marketplace application and one OAuth server, as remote mode signs users of
many portals in: each sign-in is that portal's and that user's, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxCloud, start_sandboxes

HANDLER = "http://127.0.0.1:9/bitrix24/callback"


@pytest.fixture
def cloud() -> Iterator[SandboxCloud]:
    with start_sandboxes(2) as started:
        for portal in started.portals:
            assert httpx2.post(f"{portal.base_url}/_sandbox/app", json={"handler_url": HANDLER}).status_code == 200
        yield started


def sign_in(portal: RunningSandbox, user_id: int = 1) -> dict[str, str]:
    """A browser signed in to `portal` as `user_id` approves the application: the redirect's query."""
    with httpx2.Client(base_url=portal.base_url) as browser:
        if user_id != 1:
            assert browser.get("/_sandbox/sign-in-as", params={"user_id": user_id}).status_code == 204
        answer = browser.get("/oauth/authorize/", params={"client_id": portal.config.client_id, "state": "s1"})
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(HANDLER)
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


def exchange(cloud: SandboxCloud, portal: RunningSandbox, **grant: str) -> dict[str, object]:
    query = {"client_id": portal.config.client_id, "client_secret": portal.config.client_secret, **grant}
    answer: dict[str, object] = httpx2.get(cloud.token_url, params=query).json()
    return answer


def user_of(portal: RunningSandbox, access_token: str) -> object:
    answer = httpx2.post(f"{portal.base_url}/rest/profile", data={"auth": access_token}).json()
    return answer.get("result", answer)


def test_one_application_one_oauth_server_each_portal_and_user_its_own(cloud: SandboxCloud) -> None:
    first, second = cloud.portals
    assert first.config.client_id == second.config.client_id and first.config.client_id.startswith("app.")
    assert first.config.application_token != second.config.application_token
    assert first.portal.member_id != second.portal.member_id

    redirect = sign_in(second, user_id=2)
    assert redirect["domain"] == urlsplit(second.base_url).netloc
    assert redirect["server_domain"] == urlsplit(first.base_url).netloc, "the cloud's OAuth server"
    tokens = exchange(cloud, second, grant_type="authorization_code", code=redirect["code"])
    assert (tokens["member_id"], tokens["user_id"]) == (second.portal.member_id, 2)
    assert tokens["client_endpoint"] == f"{second.base_url}/rest/"
    access = str(tokens["access_token"])
    assert user_of(second, access)["ID"] == "2"  # type: ignore[index]
    assert user_of(first, access)["error"] == "invalid_token", "another portal's token is no token here"  # type: ignore[index]

    renewed = exchange(cloud, second, grant_type="refresh_token", refresh_token=str(tokens["refresh_token"]))
    assert renewed["user_id"] == 2 and (second.portal.stats.refreshes, first.portal.stats.refreshes) == (1, 0)
    again = exchange(cloud, second, grant_type="refresh_token", refresh_token=str(tokens["refresh_token"]))
    assert again["error"] == "invalid_grant", "a refresh token is spent once, whichever portal issued it"

    admin = exchange(cloud, first, grant_type="authorization_code", code=sign_in(first)["code"])
    assert (admin["member_id"], admin["user_id"]) == (first.portal.member_id, 1)
    # user 2 made one REST request (profile), on its own portal; the token refused on the other counts nowhere
    assert (dict(second.portal.stats.callers), dict(first.portal.stats.callers)) == ({2: 1}, {})
