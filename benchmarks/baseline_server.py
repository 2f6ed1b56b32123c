"""The SDK floor: a one-tool `MCPServer`, as small as an MCP server gets with the official SDK.

Usage: `baseline_server.py` serves stdio; `baseline_server.py --http [--json] [--port N]` serves streamable
HTTP under uvicorn and announces its URL on stderr the way our server does. `--collector-paused` starts it the way
our command starts (the garbage collector off until the server is built, then start-up's objects frozen), so the
cold start can also be compared with that trick taken out of the ratio.
"""

from __future__ import annotations

import argparse
import gc
import socket
import sys

COLLECTOR_PAUSED = "--collector-paused" in sys.argv
if COLLECTOR_PAUSED:  # before the SDK's imports, as b24_telephony_mcp.__main__ does
    gc.disable()

from mcp.server.mcpserver import MCPServer  # noqa: E402

# WARNING: the SDK's INFO lines (one per HTTP session) would only clutter the benchmark's report.
server = MCPServer("bench-baseline", log_level="WARNING")


@server.tool()
def ping() -> str:
    """Answer pong."""
    return "pong"


def serve_http(port: int, json_response: bool) -> None:
    import anyio
    import uvicorn

    # Bound the way our server binds: port 0 resolves before the announcement, and IPPROTO_TCP explicitly,
    # since asyncio sets TCP_NODELAY only on such sockets (without it JSON responses wait ~40 ms on Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    config = uvicorn.Config(
        server.streamable_http_app(json_response=json_response), log_level="warning", access_log=False, lifespan="on"
    )
    sys.stderr.write(f"bench-baseline: serving MCP over http at {url}\n")
    sys.stderr.flush()
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[sock]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--json", action="store_true", help="answer POSTs with JSON instead of an SSE stream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--collector-paused", action="store_true", help="start as our command starts (see above)")
    args = parser.parse_args()
    if COLLECTOR_PAUSED:
        gc.freeze()
        gc.enable()
    if args.http:
        serve_http(args.port, args.json)
    else:
        server.run()


if __name__ == "__main__":
    main()
