"""Hearing the portal: the telephony events Bitrix24 sends (click-to-call, callback forms, call starts and ends),
taken in from the offline queue (`drain`) or an online POST (`online`), kept in one store (`store`) and read by a
cursor, optionally waiting (`hub`). No MCP here; below the tool declarations, above the state and REST client."""
