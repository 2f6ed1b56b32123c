"""b24-telephony-mcp: the Bitrix24 telephony REST API as typed MCP tools."""

__version__ = "0.1.0"
PROG = "b24-telephony-mcp"
"""The command, as messages and help name it."""
