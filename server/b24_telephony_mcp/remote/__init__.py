"""Remote mode (`--remote`, in progress): one server for many Bitrix24 users and portals.

The server is an OAuth 2.1 authorization server to MCP clients (the SDK's `mcp.server.auth`: metadata,
registration, authorize, token, revoke, the bearer middleware) and an OAuth client of Bitrix24. Only the Bitrix24
half is written here:

- crypto.py: AES-GCM sealing of the Bitrix24 pairs under B24_TOKEN_KEY (key rotation; the key file), token hashes;
- store/: registered clients, sign-ins, codes, MCP tokens (hashes only), grants, portals and pairs: the records and
  the protocol (base.py), an embedded SQLite file (sqlite.py) or Redis for replicas (redis.py);
- provider.py: the SDK's provider protocol over that store (clients, codes, tokens, refresh rotation);
- signin.py: the consent page and the Bitrix24 callback;
- connections.py: a request's access token -> its grant -> that user's connection (the seam of tools/connection);
- serve.py: the parts above, built from the settings.

Between serving (which mounts the routes) and config (which reads the settings). Nothing here is imported by a
start that is not remote.
"""
