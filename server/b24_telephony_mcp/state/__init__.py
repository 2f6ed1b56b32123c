"""What this server keeps between runs that is not the REST client's own: the call journal and the profiles
`login` writes. Below the tool declarations, above the REST client."""
