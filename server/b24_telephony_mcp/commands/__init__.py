"""What a person types: the `b24-telephony-mcp` command (`cli`) and its subcommands (`login`, `doctor`, `store`,
`config`). The top floor: it starts the serving floor below, never the other way round."""

CLIENTS = ("claude-code", "claude-desktop", "cursor", "vscode", "codex", "gemini", "windsurf")
"""The clients `config` writes for: here so the parser names them without importing `client_config` on a start."""
