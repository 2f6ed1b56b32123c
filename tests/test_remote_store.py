"""Remote mode's store: settings, the AES-GCM sealing of Bitrix24 pairs with key rotation, the key file, and the
grant/token store on both backends (the embedded SQLite file, and a real redis-server on a free loopback port).

What is stored is searched for every secret put into it: no Bitrix24 access or refresh token, no client secret, no
MCP token, authorization code, sign-in state or application token may be found in clear.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from b24_telephony_mcp.bitrix import StalePairError, TokenPair
from b24_telephony_mcp.bitrix.redis_state import RedisState
from b24_telephony_mcp.config.settings import ConfigError, RemoteConfig, load_settings
from b24_telephony_mcp.remote.crypto import KEY_FILE_NAME, SealError, TokenCipher, key_file_keys, new_token
from b24_telephony_mcp.remote.store import (
    Grant,
    GrantPairStore,
    Portal,
    RedisRemoteStore,
    RemoteStore,
    SqliteRemoteStore,
    StoredToken,
    open_store,
    pair_owner,
)
from redis_server import RedisServer
from support import clean_env

pytestmark = pytest.mark.anyio

APP = {"B24_CLIENT_ID": "app.0123456789abcd.00000001", "B24_CLIENT_SECRET": "the-app-client-secret-0123456789"}


def key() -> bytes:
    return os.urandom(32)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- settings ---


def remote_settings(**extra: str) -> RemoteConfig:
    settings = load_settings(clean_env(B24_REMOTE="1", **APP, **extra))
    assert isinstance(settings.portal, RemoteConfig)
    assert not settings.sandbox
    return settings.portal


def test_remote_settings_marketplace_application() -> None:
    config = remote_settings(B24_PUBLIC_URL="https://mcp.example.com/")
    assert config.public_url == "https://mcp.example.com"
    assert config.resource_url == "https://mcp.example.com/mcp"
    assert config.portal_url is None and config.portal_hosts == ()
    # The client secret goes only to these: the two Bitrix24 clouds and the configured endpoint.
    assert dict(config.token_endpoints) == {
        "oauth.bitrix.info": "https://oauth.bitrix.info/oauth/token/",
        "oauth.bitrix24.tech": "https://oauth.bitrix24.tech/oauth/token/",
    }
    assert config.token_keys == ()
    assert APP["B24_CLIENT_SECRET"] not in repr(config)


def test_remote_settings_local_application_and_flags() -> None:
    settings = load_settings(
        clean_env(
            **APP,
            B24_PORTAL_URL="https://acme.bitrix24.com/",
            B24_OAUTH_TOKEN_URL="http://127.0.0.1:9999/oauth/token/",
        ),
        remote=True,
        public_url="http://127.0.0.1:8000",
    )
    config = settings.portal
    assert isinstance(config, RemoteConfig)
    assert config.portal_url == "https://acme.bitrix24.com"
    assert config.portal_hosts == ("acme.bitrix24.com",)
    assert config.token_endpoints["127.0.0.1:9999"] == "http://127.0.0.1:9999/oauth/token/"
    # --remote off wins over B24_REMOTE.
    assert not isinstance(
        load_settings(
            clean_env(B24_REMOTE="1", B24_WEBHOOK_URL="https://a.bitrix24.com/rest/1/x/"), remote=False
        ).portal,
        RemoteConfig,
    )


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        ({}, "--public-url"),
        ({"B24_PUBLIC_URL": "http://mcp.example.com"}, "http:// is accepted only for loopback"),
        ({"B24_PUBLIC_URL": "ftp://mcp.example.com"}, "https://"),
        ({"B24_PUBLIC_URL": "https://mcp.example.com/?a=1"}, "without a query"),
        ({"B24_PUBLIC_URL": "https://mcp.example.com", "B24_TOKEN_KEY": "c2hvcnQ="}, "key 1 is not 32 bytes"),
        ({"B24_PUBLIC_URL": "https://mcp.example.com", "B24_REDIS_URL": "redis://127.0.0.1:6379/0"}, "B24_TOKEN_KEY"),
        (
            {"B24_PUBLIC_URL": "https://mcp.example.com", "B24_WEBHOOK_URL": "https://a.bitrix24.com/rest/1/x/"},
            "B24_WEBHOOK_URL",
        ),
        ({"B24_PUBLIC_URL": "https://mcp.example.com", "B24_OAUTH_TOKEN_URL": "http://evil.example/t"}, "http://"),
    ],
)
def test_remote_settings_refusals(extra: dict[str, str], phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(clean_env(B24_REMOTE="1", **APP, **extra))
    assert phrase in str(caught.value)


def test_remote_settings_need_the_application() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(clean_env(B24_REMOTE="1", B24_PUBLIC_URL="https://mcp.example.com", B24_CLIENT_ID="x"))
    assert "B24_CLIENT_SECRET" in str(caught.value)


def test_token_key_list_and_a_bad_key_named_by_position_only() -> None:
    first, second = key(), key()
    config = remote_settings(B24_PUBLIC_URL="https://mcp.example.com", B24_TOKEN_KEY=f"{b64(first)}, {b64(second)}")
    assert config.token_keys == (first, second)
    assert b64(first) not in repr(config)
    bad = b64(os.urandom(31))
    with pytest.raises(ConfigError) as caught:
        remote_settings(B24_PUBLIC_URL="https://mcp.example.com", B24_TOKEN_KEY=f"{b64(first)},{bad}")
    assert "key 2" in str(caught.value) and bad not in str(caught.value)
    # With Redis the key is required, and given it is accepted.
    with_redis = load_settings(
        clean_env(
            B24_REMOTE="1",
            **APP,
            B24_PUBLIC_URL="https://mcp.example.com",
            B24_REDIS_URL="redis://127.0.0.1:6379/0",
            B24_TOKEN_KEY=b64(first),
        )
    )
    assert isinstance(with_redis.portal, RemoteConfig)


# --- sealing ---


def test_seal_open_owner_binding_and_tampering() -> None:
    cipher = TokenCipher((key(),))
    sealed = cipher.seal(b"the pair", "pair|m1|1")
    assert b"the pair" not in sealed.encode()
    opened = cipher.open(sealed, "pair|m1|1")
    assert opened.plaintext == b"the pair" and not opened.stale
    with pytest.raises(SealError):
        cipher.open(sealed, "pair|m1|2")  # copied to another user's row
    version, key_id, body = sealed.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(SealError):
        cipher.open(f"{version}.{key_id}.{flipped}", "pair|m1|1")
    with pytest.raises(SealError):
        cipher.open(f"{version}.{key_id}.!!!notbase64", "pair|m1|1")
    with pytest.raises(SealError):
        TokenCipher((key(),)).open(sealed, "pair|m1|1")  # a key that is not configured
    with pytest.raises(ValueError):
        TokenCipher(())


def test_rotation_first_key_seals_all_open() -> None:
    old, new = key(), key()
    sealed = TokenCipher((old,)).seal(b"x", "o")
    rotated = TokenCipher((new, old))
    opened = rotated.open(sealed, "o")
    assert opened.plaintext == b"x" and opened.stale
    assert not rotated.open(rotated.seal(b"x", "o"), "o").stale
    with pytest.raises(SealError):
        TokenCipher((new,)).open(sealed, "o")


def test_key_file_generated_once_0600(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "remote"
    with caplog.at_level(logging.WARNING):
        first = key_file_keys(directory)
    path = directory / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert "B24_TOKEN_KEY is not set" in caplog.text and b64(first[0]) not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert key_file_keys(directory) == first
    assert "generated" not in caplog.text
    assert [entry.name for entry in directory.iterdir()] == [KEY_FILE_NAME]  # no temp file left behind
    path.write_text("not a key\n")
    with pytest.raises(ValueError) as caught:
        key_file_keys(directory)
    assert "not a key" not in str(caught.value)


# --- the store, both backends ---


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """(the backend's name, where its bytes end up): the SQLite file's directory, or a fresh redis-server's."""
    if request.param == "sqlite":
        yield "sqlite", tmp_path / "remote"
        return
    with RedisServer(tmp_path / "redis") as server:
        yield server.url, server.workdir


def make_store(backend: tuple[str, Path], cipher: TokenCipher) -> RemoteStore:
    where, directory = backend
    if where == "sqlite":
        return SqliteRemoteStore(directory / "remote.sqlite3", cipher)
    return RedisRemoteStore(RedisState(where), cipher)


async def close(store: RemoteStore) -> None:
    await store.aclose()
    if isinstance(store, RedisRemoteStore):
        await store._state.aclose()


def grant(grant_id: str, member_id: str = "m1", user_id: int = 1, client_id: str = "client-a") -> Grant:
    return Grant(grant_id, client_id, "Claude", member_id, user_id, "Ann Lee", ("statistics",), True, time.time())


PORTAL = Portal("m1", "acme.bitrix24.com", "https://acme.bitrix24.com/rest/", "https://oauth.bitrix.info/oauth/token/")


async def test_lifecycle(backend: tuple[str, Path]) -> None:
    store = make_store(backend, TokenCipher((key(),)))
    try:
        # registered clients, their secret sealed
        await store.save_client("client-a", {"client_id": "client-a", "client_secret": "s3", "client_name": "C"})
        assert await store.client("client-a") == {"client_id": "client-a", "client_secret": "s3", "client_name": "C"}
        assert await store.client("nobody") is None
        # a sign-in state is good once, and not after its time
        await store.put_signin("state-1", {"client_id": "client-a"}, ttl=60)
        assert await store.take_signin("state-1") == {"client_id": "client-a"}
        assert await store.take_signin("state-1") is None
        await store.put_signin("state-2", {"client_id": "client-a"}, ttl=0.05)
        await anyio.sleep(0.1)
        assert await store.take_signin("state-2") is None
        # the pair: compare-and-set on the spent refresh token
        await store.save_portal(PORTAL)
        assert await store.portal("m1") == PORTAL
        first = TokenPair("access-1", "refresh-1", 1.0)
        await store.save_pair("m1", 1, first, spent=None)
        assert await store.load_pair("m1", 1) == first
        second = TokenPair("access-2", "refresh-2", 2.0)
        await store.save_pair("m1", 1, second, spent="refresh-1")
        with pytest.raises(StalePairError):
            await store.save_pair("m1", 1, TokenPair("access-x", "refresh-x"), spent="refresh-1")
        assert await store.load_pair("m1", 1) == second
        assert await store.load_pair("m1", 2) is None
        # grants of one user share the pair; the pair goes with the last of them
        await store.add_grant(grant("g1"))
        await store.add_grant(grant("g2", client_id="client-b"))
        assert [g.grant_id for g in await store.grants()] == ["g1", "g2"]
        found = await store.grant("g1")
        assert found is not None and (found.client_name, found.user_id, found.toolsets, found.read_only) == (
            "Claude",
            1,
            ("statistics",),
            True,
        )
        await store.touch_grant("g1")
        assert (await store.grant("g1")).last_used is not None  # type: ignore[union-attr]
        # codes work once
        await store.put_code("code-1", "g1", {"redirect_uri": "http://127.0.0.1:1/cb"}, time.time() + 300)
        stored = await store.code("code-1")
        assert stored is not None and stored.grant_id == "g1" and not stored.used
        assert await store.spend_code("code-1")
        assert not await store.spend_code("code-1")
        assert (await store.code("code-1")).used  # type: ignore[union-attr]
        # refresh tokens rotate once; spending one drops the grant's access tokens
        expires = time.time() + 3600
        await store.put_token(
            "mcp-access-1", StoredToken("access", "g1", "client-a", ("mcp",), "https://x/mcp", expires)
        )
        await store.put_token(
            "mcp-refresh-1", StoredToken("refresh", "g1", "client-a", ("mcp",), "https://x/mcp", None)
        )
        access = await store.token("mcp-access-1")
        assert access is not None and access.kind == "access" and access.resource == "https://x/mcp"
        assert not await store.spend_refresh_token("mcp-access-1")  # not a refresh token
        assert await store.spend_refresh_token("mcp-refresh-1")
        assert not await store.spend_refresh_token("mcp-refresh-1")  # a reuse
        assert await store.token("mcp-access-1") is None
        await store.delete_token("mcp-refresh-1")
        assert await store.token("mcp-refresh-1") is None
        # revoking
        await store.put_token("mcp-access-2", StoredToken("access", "g1", "client-a", (), None, expires))
        assert await store.revoke_grant("g1")
        assert not await store.revoke_grant("g1")
        assert await store.token("mcp-access-2") is None and await store.code("code-1") is None
        assert await store.load_pair("m1", 1) == second  # g2 still uses it
        assert await store.revoke_grant("g2")
        assert await store.load_pair("m1", 1) is None
        assert await store.grants() == []
    finally:
        await close(store)


async def test_uninstall_needs_the_installations_token(backend: tuple[str, Path]) -> None:
    store = make_store(backend, TokenCipher((key(),)))
    other = Portal("m2", "beta.bitrix24.com", "https://beta.bitrix24.com/rest/", PORTAL.token_url)
    try:
        for portal, token in ((PORTAL, "app-token-1"), (other, "app-token-2")):
            await store.install(portal, token)
            await store.save_pair(
                portal.member_id, 1, TokenPair(f"a-{portal.member_id}", f"r-{portal.member_id}"), None
            )
            await store.add_grant(grant(f"g-{portal.member_id}", member_id=portal.member_id))
            await store.put_token(
                f"t-{portal.member_id}", StoredToken("access", f"g-{portal.member_id}", "c", (), None, time.time() + 60)
            )
        assert not await store.uninstall("m1", "app-token-2")
        assert not await store.uninstall("m1", "")
        assert not await store.uninstall("m3", "app-token-1")
        assert await store.grant("g-m1") is not None and await store.load_pair("m1", 1) is not None
        assert await store.uninstall("m1", "app-token-1")
        assert await store.grant("g-m1") is None and await store.load_pair("m1", 1) is None
        assert await store.token("t-m1") is None and await store.portal("m1") is None
        # the other portal keeps working
        assert await store.grant("g-m2") is not None and await store.token("t-m2") is not None
        assert await store.load_pair("m2", 1) == TokenPair("a-m2", "r-m2")
    finally:
        await close(store)


async def test_a_request_is_served_from_one_read_of_token_grant_portal_and_pair(backend: tuple[str, Path]) -> None:
    old, new = key(), key()
    store = make_store(backend, TokenCipher((old,)))
    pair = TokenPair("access-1", "refresh-1", 9.0)
    expires = time.time() + 60
    try:
        await store.save_portal(PORTAL)
        await store.save_pair("m1", 1, pair, None)
        await store.add_grant(grant("g1"))
        await store.put_token("t1", StoredToken("access", "g1", "client-a", ("mcp",), "https://x/mcp", expires))
    finally:
        await close(store)
    rotated = make_store(backend, TokenCipher((new, old)))
    try:
        found = await rotated.token_access("t1")
        assert found is not None
        stored, access = found
        assert (stored.kind, stored.grant_id, stored.resource) == ("access", "g1", "https://x/mcp")
        assert (access.grant.grant_id, access.grant.user_id, access.portal, access.pair) == ("g1", 1, PORTAL, pair)
        assert await rotated.grant_access("g1") == access
        assert await rotated.token_access("unknown") is None and await rotated.grant_access("unknown") is None
    finally:
        await close(rotated)
    # The pair read under the old key was sealed again: the new key alone opens it.
    only_new = make_store(backend, TokenCipher((new,)))
    try:
        assert (await only_new.grant_access("g1")).pair == pair  # type: ignore[union-attr]
        # A grant whose user has no pair, or whose portal is unknown, serves nothing.
        await only_new.add_grant(grant("g2", user_id=2))
        assert await only_new.grant_access("g2") is None
        await only_new.save_pair("m9", 1, pair, None)
        await only_new.add_grant(grant("g3", member_id="m9"))
        assert await only_new.grant_access("g3") is None
        await only_new.put_token("t2", StoredToken("access", "g2", "client-a", (), None, expires))
        assert await only_new.token_access("t2") is None
    finally:
        await close(only_new)
    with pytest.raises(SealError):  # a key dropped too soon: said, so the caller can ask for a new sign-in
        gone = make_store(backend, TokenCipher((key(),)))
        try:
            await gone.token_access("t1")
        finally:
            await close(gone)


async def test_a_pair_read_under_an_old_key_is_sealed_again(backend: tuple[str, Path]) -> None:
    old, new = key(), key()
    store = make_store(backend, TokenCipher((old,)))
    pair = TokenPair("access-old", "refresh-old", 5.0)
    await store.save_client("client-a", {"client_id": "client-a", "client_secret": "secret-old"})
    await store.save_pair("m1", 7, pair, None)
    await close(store)

    rotated = make_store(backend, TokenCipher((new, old)))
    assert await rotated.load_pair("m1", 7) == pair
    assert (await rotated.client("client-a") or {})["client_secret"] == "secret-old"
    await close(rotated)
    # Now only the new key is needed: the old one can be dropped from B24_TOKEN_KEY.
    only_new = make_store(backend, TokenCipher((new,)))
    try:
        assert await only_new.load_pair("m1", 7) == pair
        assert (await only_new.client("client-a") or {})["client_secret"] == "secret-old"
    finally:
        await close(only_new)
    gone = make_store(backend, TokenCipher((key(),)))
    try:
        with pytest.raises(SealError):  # a key removed too soon: said, not a crash with the value in it
            await gone.load_pair("m1", 7)
        with pytest.raises(ValueError) as caught:
            await GrantPairStore(gone, "m1", 7).load()
        assert "refresh-old" not in str(caught.value)
    finally:
        await close(gone)


def test_a_sealed_pair_copied_to_another_user_does_not_open() -> None:
    cipher = TokenCipher((key(),))
    sealed = cipher.seal(b'{"access_token": "a", "refresh_token": "r", "expires": null}', pair_owner("m1", 1))
    with pytest.raises(SealError):
        cipher.open(sealed, pair_owner("m1", 2))


async def test_grant_pair_store_is_the_pair_store_of_the_refresh_sequence(backend: tuple[str, Path]) -> None:
    store = make_store(backend, TokenCipher((key(),)))
    try:
        pairs = GrantPairStore(store, "m1", 3)
        assert await pairs.seed(TokenPair("env-a", "env-r")) == TokenPair("env-a", "env-r")  # nothing stored
        await pairs.save(TokenPair("a1", "r1"), None)
        with pytest.raises(StalePairError):
            await pairs.save(TokenPair("a0", "r0"), None)  # a seed never replaces
        async with pairs.lock():
            await pairs.save(TokenPair("a2", "r2"), "r1")
        assert await pairs.load() == TokenPair("a2", "r2")
        assert str(3) in pairs.where and "a2" not in pairs.where
    finally:
        await close(store)


async def test_nothing_secret_is_stored_in_clear(backend: tuple[str, Path]) -> None:
    secrets = {
        "bitrix access": "B24ACCESS" + new_token(),
        "bitrix refresh": "B24REFRESH" + new_token(),
        "client secret": "CLIENTSECRET" + new_token(),
        "mcp access": "MCPACCESS" + new_token(),
        "mcp refresh": "MCPREFRESH" + new_token(),
        "code": "MCPCODE" + new_token(),
        "sign-in state": "SIGNINSTATE" + new_token(),
        "application token": "APPTOKEN" + new_token(),
    }
    store = make_store(backend, TokenCipher((key(),)))
    try:
        await store.save_client("client-a", {"client_id": "client-a", "client_secret": secrets["client secret"]})
        await store.put_signin(secrets["sign-in state"], {"client_id": "client-a"}, ttl=600)
        await store.install(PORTAL, secrets["application token"])
        await store.save_pair("m1", 1, TokenPair(secrets["bitrix access"], secrets["bitrix refresh"]), None)
        await store.add_grant(grant("g1"))
        await store.put_code(secrets["code"], "g1", {"redirect_uri": "http://127.0.0.1/cb"}, time.time() + 300)
        await store.put_token(
            secrets["mcp access"], StoredToken("access", "g1", "client-a", (), None, time.time() + 600)
        )
        await store.put_token(secrets["mcp refresh"], StoredToken("refresh", "g1", "client-a", (), None, None))
        assert await store.token(secrets["mcp access"]) is not None  # found by its hash
        where, directory = backend
        if where != "sqlite":
            redis = Redis.from_url(where)
            try:
                await redis.config_set("rdbcompression", "no")  # a compressed dump could hide a value from the search
                await redis.save()
                # Every key and value as the server holds them, too.
                dumped = [key async for key in redis.scan_iter()]
                for name in list(dumped):
                    kind = (await redis.type(name)).decode()
                    if kind == "hash":
                        dumped += [part for item in (await redis.hgetall(name)).items() for part in item]
                    elif kind == "set":
                        dumped += list(await redis.smembers(name))
                    elif kind == "string":
                        dumped.append(await redis.get(name))
            finally:
                await redis.aclose()
            blobs = [b"\n".join(dumped)]
        else:
            blobs = []
        blobs += [path.read_bytes() for path in directory.rglob("*") if path.is_file()]
        assert any(blob for blob in blobs)
        for name, value in secrets.items():
            for blob in blobs:
                assert value.encode() not in blob, f"the {name} is stored in clear"
        if where == "sqlite":
            assert stat.S_IMODE((directory / "remote.sqlite3").stat().st_mode) == 0o600
        else:
            assert (directory / "dump.rdb").exists()
    finally:
        await close(store)


async def test_open_store_embedded_makes_its_key_file(tmp_path: Path) -> None:
    config = remote_settings(B24_PUBLIC_URL="https://mcp.example.com", XDG_STATE_HOME=str(tmp_path))
    store = open_store(config, None)
    try:
        assert isinstance(store, SqliteRemoteStore)
        await store.save_pair("m1", 1, TokenPair("a", "r"), None)
        assert (config.store_dir / KEY_FILE_NAME).exists()
    finally:
        await store.aclose()
    again = open_store(config, None)  # the same key file: the pair opens
    try:
        assert await again.load_pair("m1", 1) == TokenPair("a", "r")
    finally:
        await again.aclose()


async def test_open_store_redis_uses_the_configured_key(redis_server: RedisServer, tmp_path: Path) -> None:
    first = key()
    config = remote_settings(
        B24_PUBLIC_URL="https://mcp.example.com",
        B24_REDIS_URL=redis_server.url,
        B24_TOKEN_KEY=b64(first),
        XDG_STATE_HOME=str(tmp_path),
    )
    state = RedisState(redis_server.url)
    try:
        store = open_store(config, state)
        assert isinstance(store, RedisRemoteStore)
        assert not (config.store_dir / KEY_FILE_NAME).exists()  # no key file with Redis
    finally:
        await state.aclose()


async def test_a_portal_at_a_new_address_forgets_its_installation_token(backend: tuple[str, Path]) -> None:
    store = make_store(backend, TokenCipher((key(),)))
    try:
        await store.install(PORTAL, "app-token-1")
        await store.save_portal(PORTAL)  # the same address: kept
        await store.add_grant(grant("g1"))
        moved = Portal("m1", "new.bitrix24.com", "https://new.bitrix24.com/rest/", PORTAL.token_url)
        await store.save_portal(moved)
        assert await store.portal("m1") == moved
        assert not await store.uninstall("m1", "app-token-1")
        assert await store.grant("g1") is not None
    finally:
        await close(store)
