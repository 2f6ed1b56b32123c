"""Serving MCP: the server (tools/list, tools/call), its transports, confirmations of billed calls and the
client log. Below the commands, above the configuration and the tool declarations."""
