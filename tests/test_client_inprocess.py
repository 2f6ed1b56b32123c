"""The REST client used in-process against the sandbox over real HTTP: failures a subprocess can't stage."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx2
import pytest

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError, OAuthAuth, TokenPair, TokenStore
from b24_telephony_mcp.bitrix.errors import TOKEN_REFRESH_FAILED
from b24_telephony_mcp.sandbox import RunningSandbox

pytestmark = pytest.mark.anyio


class FullDiskStore(TokenStore):
    def save(self, pair: TokenPair) -> None:
        raise OSError(28, "No space left on device")


def oauth_client(sandbox: RunningSandbox, store: TokenStore) -> tuple[OAuthAuth, BitrixClient]:
    auth = OAuthAuth(
        sandbox.base_url,
        sandbox.config.client_id,
        sandbox.config.client_secret,
        sandbox.token_url,
        store,
        TokenPair(sandbox.access_token, sandbox.refresh_token),
    )
    return auth, BitrixClient(auth, rate=1000, burst=1000)


async def test_rotated_pair_survives_a_failed_save(
    sandbox: RunningSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth, client = oauth_client(sandbox, FullDiskStore(tmp_path / "tokens.json"))
    httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")
    with caplog.at_level(logging.ERROR):
        assert (await client.call("telephony.externalLine.get", read_only=True)).result == []
    # The old refresh token is spent: the new pair must still be in use, not thrown away.
    assert auth.tokens.access_token != sandbox.access_token
    assert "NOT saved" in caplog.text
    assert (await client.call("telephony.externalLine.get", read_only=True)).result == []
    assert httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()["refreshes"] == 1
    await client.aclose()


async def test_corrupt_token_file_at_refresh_is_a_clear_error(sandbox: RunningSandbox, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    _, client = oauth_client(sandbox, TokenStore(token_file))
    token_file.write_text("{not json")
    httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")
    with pytest.raises(BitrixError) as caught:
        await client.call("telephony.externalLine.get", read_only=True)
    assert caught.value.code == TOKEN_REFRESH_FAILED
    assert str(token_file) in caught.value.hint
    assert "not json" not in str(caught.value)  # the file's content is a secret: never echoed
    await client.aclose()
