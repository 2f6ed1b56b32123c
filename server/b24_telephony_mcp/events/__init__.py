"""Hearing the portal: the telephony events Bitrix24 sends (click-to-call, callback forms, call starts and ends),
taken in from the offline queue (`drain`) or an online POST (`online`), kept in one store (`store`) and read by a
cursor, optionally waiting (`hub`). No MCP here; below the tool declarations, above the state and REST client."""

# The defaults settings need, here so that reading settings imports neither the drain nor the store.
IDLE_SECONDS = 30.0
"""B24_EVENT_POLL_IDLE's default: 120 requests an hour, under 2% of the default budget of 2 a second."""
BUSY_SECONDS = 1.0
"""B24_EVENT_POLL_WAITING's default: how long a waiting reader may wait for a queued event beyond its arrival."""
RETENTION_DAYS = 7
"""B24_EVENT_RETENTION_DAYS's default."""
