"""A local Bitrix24 portal + OAuth server emulating the telephony REST methods, with state in memory.

Start one with :func:`start_sandbox` (background thread, free loopback port) or
:func:`run_sandbox_forever` (foreground); several portals sharing one OAuth server and one marketplace
application with :func:`start_sandboxes`. See :mod:`.app` for routes and the ``/_sandbox/`` test hooks.
"""

from .app import create_app
from .calls import Caller
from .config import SandboxConfig
from .errors import SandboxRestError
from .portal import SandboxPortal
from .runner import (
    MARKETPLACE_CLIENT_ID,
    RunningSandbox,
    SandboxCloud,
    run_sandbox_forever,
    start_sandbox,
    start_sandboxes,
)

__all__ = [
    "MARKETPLACE_CLIENT_ID",
    "Caller",
    "RunningSandbox",
    "SandboxCloud",
    "SandboxConfig",
    "SandboxPortal",
    "SandboxRestError",
    "create_app",
    "run_sandbox_forever",
    "start_sandbox",
    "start_sandboxes",
]
