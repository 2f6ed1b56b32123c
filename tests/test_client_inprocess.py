"""The REST client used in-process against the sandbox over real HTTP: failures a subprocess can't stage."""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path
from typing import Any

import httpx2
import pytest

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError, OAuthAuth, TokenPair, TokenStore
from b24_telephony_mcp.bitrix.errors import TOKEN_REFRESH_FAILED
from b24_telephony_mcp.sandbox import RunningSandbox

pytestmark = pytest.mark.anyio


class FullDiskStore(TokenStore):
    def save(self, pair: TokenPair) -> None:
        raise OSError(28, "No space left on device")


def oauth_client(
    sandbox: RunningSandbox, store: TokenStore, initial: TokenPair | None, token_url: str | None = None
) -> BitrixClient:
    auth = OAuthAuth(
        sandbox.base_url,
        sandbox.config.client_id,
        sandbox.config.client_secret,
        token_url or sandbox.token_url,
        store,
        initial,
    )
    return BitrixClient(auth, rate=1000, burst=10000)


def stats(sandbox: RunningSandbox) -> dict[str, Any]:
    answer: dict[str, Any] = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()
    return answer


async def test_rotated_pair_survives_a_failed_save(
    sandbox: RunningSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    installation = TokenPair(sandbox.access_token, sandbox.refresh_token)
    client = oauth_client(sandbox, FullDiskStore(tmp_path / "tokens.json"), installation)
    assert isinstance(client.auth, OAuthAuth)
    httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")
    with caplog.at_level(logging.ERROR):
        assert (await client.call("telephony.externalLine.get", read_only=True)).result == []
    # The old refresh token is spent: the new pair must still be in use, not thrown away.
    assert client.auth.tokens.access_token != sandbox.access_token
    assert "NOT saved" in caplog.text
    assert (await client.call("telephony.externalLine.get", read_only=True)).result == []
    assert stats(sandbox)["refreshes"] == 1
    await client.aclose()


async def test_corrupt_token_file_at_refresh_is_a_clear_error(sandbox: RunningSandbox, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    client = oauth_client(sandbox, TokenStore(token_file), TokenPair(sandbox.access_token, sandbox.refresh_token))
    token_file.write_text("{not json")
    httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")
    with pytest.raises(BitrixError) as caught:
        await client.call("telephony.externalLine.get", read_only=True)
    assert caught.value.code == TOKEN_REFRESH_FAILED
    assert str(token_file) in caught.value.hint
    assert "not json" not in str(caught.value)  # the file's content is a secret: never echoed
    await client.aclose()


async def test_a_token_revoked_by_another_clients_refresh_is_replaced_from_the_file(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    installation = TokenPair(sandbox.access_token, sandbox.refresh_token)
    first, second = (oauth_client(sandbox, TokenStore(token_file), installation) for _ in range(2))
    try:
        assert (await first.call("telephony.externalLine.get", read_only=True)).result == []
        httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")
        assert (await first.call("telephony.externalLine.get", read_only=True)).result == []  # refreshes
        assert stats(sandbox)["refreshes"] == 1
        assert isinstance(first.auth, OAuthAuth) and isinstance(second.auth, OAuthAuth)
        assert second.auth.tokens == installation

        # `second` still holds the installation token, which that refresh revoked: it must pick up the new pair.
        assert (await second.call("telephony.externalLine.get", read_only=True)).result == []
        assert second.auth.tokens == first.auth.tokens == TokenStore(token_file).load()
        assert stats(sandbox)["refreshes"] == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_an_unknown_token_with_nothing_newer_is_reported(sandbox: RunningSandbox, token_file: Path) -> None:
    bogus = TokenPair(secrets.token_hex(16), secrets.token_hex(16))
    client = oauth_client(sandbox, TokenStore(token_file), bogus)
    try:
        with pytest.raises(BitrixError) as caught:
            await client.call("telephony.externalLine.get", read_only=True)
    finally:
        await client.aclose()
    assert (caught.value.code, caught.value.http_status) == ("invalid_token", 401)
    assert stats(sandbox) == {"requests": {"telephony.externalline.get": 1}, "refreshes": 0}
    assert TokenStore(token_file).load() is None, "nothing was rotated"


async def test_an_unreachable_oauth_server_is_reported_with_a_hint(sandbox: RunningSandbox, token_file: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        client = oauth_client(
            sandbox,
            TokenStore(token_file),
            TokenPair(sandbox.access_token, sandbox.refresh_token),
            token_url=f"http://127.0.0.1:{closed.getsockname()[1]}/oauth/token/",
        )
        httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")
        try:
            with pytest.raises(BitrixError) as caught:
                await client.call("telephony.externalLine.get", read_only=True)
        finally:
            await client.aclose()
    assert caught.value.code == TOKEN_REFRESH_FAILED
    assert caught.value.retryable is True
    assert "B24_OAUTH_TOKEN_URL" in caught.value.hint
    assert TokenStore(token_file).load() is None
