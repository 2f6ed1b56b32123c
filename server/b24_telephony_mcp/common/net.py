"""Socket facts shared by the MCP HTTP transport and the sandbox portal."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback_host(host: str | None) -> bool:
    """True for `localhost` and any loopback address (127.0.0.0/8, ::1), bracketed or not."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """The host as it appears in a URL or a Host header: IPv6 literals go in brackets."""
    return f"[{host}]" if ":" in host else host


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before the server starts so port 0 resolves to a real port.

    Raises OSError (closing the socket) when the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on accepted sockets that say so, and without
    # it every response pays the ~40 ms Nagle/delayed-ACK stall.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
