"""Counters for `GET /metrics` (Prometheus text format), recorded wherever the thing happens.

Off until `enable()` (the HTTP transports call it): a stdio server records nothing and never imports
prometheus_client. Labels are bounded: tool names and REST methods come from the declarations, codes from the
portal's small vocabulary, statuses are HTTP status codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

PREFIX = "b24mcp"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Off:
    """Records nothing."""

    def __getattr__(self, name: str) -> Any:
        return _ignore


def _ignore(*args: Any) -> None:
    return None


class _Prometheus:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        # A registry of our own: enabling twice in one process (tests) cannot register a metric twice.
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.tool_calls = Counter(f"{PREFIX}_tool_calls", "MCP tool calls", ["tool"], registry=registry)
        self.tool_errors = Counter(
            f"{PREFIX}_tool_errors", "MCP tool calls that failed, by error code", ["tool", "code"], registry=registry
        )
        self.rest_requests = Counter(
            f"{PREFIX}_rest_requests",
            "REST requests sent to the portal, by HTTP status (none: no answer)",
            ["method", "status"],
            registry=registry,
        )
        self.rest_seconds = Histogram(
            f"{PREFIX}_rest_request_duration_seconds",
            "REST request latency, sending to the whole answer",
            ["method"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.refreshes = Counter(
            f"{PREFIX}_token_refreshes",
            "OAuth pair renewals: refreshed (at the OAuth server), adopted (renewed by another process), failed",
            ["result"],
            registry=registry,
        )
        self.limiter_waits = Counter(
            f"{PREFIX}_limiter_waits", "Requests the rate-limit bucket held back", registry=registry
        )
        self.limiter_wait_seconds = Counter(
            f"{PREFIX}_limiter_wait_seconds", "Time requests spent waiting for the rate-limit bucket", registry=registry
        )
        self.limit_retries = Counter(
            f"{PREFIX}_query_limit_retries",
            "Requests repeated after the portal's 503 QUERY_LIMIT_EXCEEDED",
            ["method"],
            registry=registry,
        )

        self.grants = Counter(f"{PREFIX}_grants", "Remote mode: grants made by a completed sign-in", registry=registry)
        self.signins = Counter(
            f"{PREFIX}_signins",
            "Remote mode: sign-ins by how they ended (signed_in, denied, expired, portal_refused, failed, refused; "
            "not_bitrix24: a mistyped portal address, asked again)",
            ["result"],
            registry=registry,
        )
        self.refusals = Counter(
            f"{PREFIX}_refusals",
            "Remote mode: posts and sign-in steps refused as not genuine, by reason",
            ["reason"],
            registry=registry,
        )

    def tool_call(self, tool: str, error_code: str | None) -> None:
        self.tool_calls.labels(tool).inc()
        if error_code is not None:
            self.tool_errors.labels(tool, error_code).inc()

    def rest_request(self, method: str, status: int | None, seconds: float) -> None:
        self.rest_requests.labels(method, str(status) if status is not None else "none").inc()
        self.rest_seconds.labels(method).observe(seconds)

    def refresh(self, result: str) -> None:
        self.refreshes.labels(result).inc()

    def limiter_wait(self, seconds: float) -> None:
        self.limiter_waits.inc()
        self.limiter_wait_seconds.inc(seconds)

    def limit_retry(self, method: str) -> None:
        self.limit_retries.labels(method).inc()

    def sign_in(self, result: str) -> None:
        self.signins.labels(result).inc()
        if result == "signed_in":
            self.grants.inc()

    def refusal(self, reason: str) -> None:
        self.refusals.labels(reason).inc()
        if reason in SIGN_IN_REFUSALS:
            self.signins.labels("refused").inc()


SIGN_IN_REFUSALS = frozenset({"forged_form", "foreign_browser", "other_portal", "untrusted_oauth_server"})
"""Refusal reasons that end a sign-in (the others are posts to the installation handler)."""

_recorder: Any = _Off()


def enable() -> CollectorRegistry:
    """Start recording (once per process); the registry `GET /metrics` renders."""
    global _recorder
    if not isinstance(_recorder, _Prometheus):
        _recorder = _Prometheus()
    registry: CollectorRegistry = _recorder.registry
    return registry


def render(registry: CollectorRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)


def tool_call(tool: str, error_code: str | None) -> None:
    _recorder.tool_call(tool, error_code)


def rest_request(method: str, status: int | None, seconds: float) -> None:
    _recorder.rest_request(method, status, seconds)


def refresh(result: str) -> None:
    """`refreshed`, `adopted` or `failed`."""
    _recorder.refresh(result)


def limiter_wait(seconds: float) -> None:
    _recorder.limiter_wait(seconds)


def limit_retry(method: str) -> None:
    _recorder.limit_retry(method)


def sign_in(result: str) -> None:
    """A remote-mode sign-in ended: `result` from a small fixed set (see the counter's help)."""
    _recorder.sign_in(result)


def refusal(reason: str) -> None:
    """Something was refused as not genuine: `reason` is one of SIGN_IN_REFUSALS, install_uninstall or
    install_unverified."""
    _recorder.refusal(reason)
