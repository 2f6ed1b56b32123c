"""What a person types: the `b24-telephony-mcp` command (`cli`) and its subcommands (`login`, `doctor`, `store`,
`config`). The top floor: it starts the serving floor below, never the other way round."""
