"""The sandbox portal's REST methods: one module per toolset, each ending with its ``METHODS`` table.

Adding a method's emulation: write its handler in ``<toolset>.py`` (a new module or an existing one), list it
in that module's ``METHODS``, and, for a new module, add its table here.
"""

from __future__ import annotations

from ..state import Method
from . import (
    batch,
    call_placement,
    events,
    external_calls,
    external_lines,
    followups,
    outgoing_lines,
    platform,
    reference,
    sip,
    statistics,
    users,
)

#: Lower-cased REST name -> Method. Tests may add a throwaway entry (and must remove it).
METHODS: dict[str, Method] = {
    **external_lines.METHODS,
    **external_calls.METHODS,
    **call_placement.METHODS,
    **followups.METHODS,
    **outgoing_lines.METHODS,
    **sip.METHODS,
    **users.METHODS,
    **reference.METHODS,
    **statistics.METHODS,
    **platform.METHODS,
    **events.METHODS,
    **batch.METHODS,
}

__all__ = ["METHODS"]
