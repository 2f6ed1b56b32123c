"""Remote mode's per-call overhead (issue 12): a tool call through remote mode (the MCP access token's hash looked
up, its grant and portal read, the user's pair opened and decrypted, a connection built) against the same call
through the static-bearer HTTP server, both against one sandbox portal, both on the embedded stores.

    .venv/bin/python benchmarks/remote.py            (part of make bench)

Calls alternate in blocks between the two servers so a noisy neighbour slows both alike; medians; goal <= 1.10x.
"""

from __future__ import annotations

import secrets
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp import Client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the servers, the sign-in and the clients the tests use

from b24_telephony_mcp.sandbox import SandboxConfig, start_sandbox  # noqa: E402
from redis_server import free_port  # noqa: E402
from support import FAST_LIMITS, app_env, clean_env, http_server, http_session  # noqa: E402
from test_remote_signin import Browser, MemoryStorage, Remote, signed_in_session  # noqa: E402

ROUNDS = 12
BLOCK = 25
WARMUP = 20
TOOL = "list_external_lines"
GOAL = 1.10
QUIET = {"B24_LOG_LEVEL": "WARNING"}  # both servers alike: the cost measured is the work, not the log lines


async def block(client: Client) -> float:
    """Seconds per call over one block."""
    started = time.perf_counter()
    for _ in range(BLOCK):
        result = await client.call_tool(TOOL, {})
        assert not result.is_error, result
    return (time.perf_counter() - started) / BLOCK


async def measure() -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="b24-bench-remote-") as scratch:
        directory = Path(scratch)
        port = free_port()
        public = f"http://127.0.0.1:{port}"
        config = SandboxConfig(rate_limit=1e6, rate_burst=10**6, handler_url=f"{public}/bitrix24/callback")
        with start_sandbox(config) as sandbox:
            token = secrets.token_urlsafe(32)
            static_env = app_env(sandbox, directory / "static" / "tokens.json", B24_MCP_AUTH_TOKEN=token, **QUIET)
            remote_env = clean_env(
                **FAST_LIMITS,
                B24_CLIENT_ID=sandbox.config.client_id,
                B24_CLIENT_SECRET=sandbox.config.client_secret,
                B24_PORTAL_URL=sandbox.base_url,
                B24_OAUTH_TOKEN_URL=sandbox.token_url,
                XDG_STATE_HOME=str(directory / "remote"),
                **QUIET,
            )
            remote_args = ("--remote", "--public-url", public, "--port", str(port))
            with http_server(static_env) as static, http_server(remote_env, "http", *remote_args) as served:
                remote = Remote(served, sandbox, public, directory / "remote", remote_env)
                storage, browser = MemoryStorage(), Browser()
                async with signed_in_session(remote, storage, browser) as signing_in:
                    await signing_in.call_tool(TOOL, {})
                await browser.aclose()
                assert storage.tokens is not None
                async with AsyncExitStack() as stack:
                    # Both with a plain bearer header: the client's own OAuth bookkeeping is not the server's cost.
                    ours = await stack.enter_async_context(http_session(static.url, token))
                    theirs = await stack.enter_async_context(http_session(remote.mcp_url, storage.tokens.access_token))
                    for client in (ours, theirs):
                        for _ in range(WARMUP):
                            await client.call_tool(TOOL, {})
                    fixed: list[float] = []
                    signed: list[float] = []
                    for _ in range(ROUNDS):
                        fixed.append(await block(ours))
                        signed.append(await block(theirs))
                    return statistics.median(fixed), statistics.median(signed)


def main() -> None:
    fixed, signed = anyio.run(measure)
    ratio = signed / fixed
    print("remote mode (issue 12): per-call round trip over streamable HTTP, sandbox portal")
    print(f"  static bearer  {fixed * 1000:7.2f} ms")
    print(f"  remote mode    {signed * 1000:7.2f} ms   {ratio:.3f}x  (goal <= {GOAL:.2f}x)")


if __name__ == "__main__":
    main()
