"""The `b24-telephony-mcp` command (the console script and `python -m b24_telephony_mcp`)."""

import gc
import sys

# Start-up builds some 130,000 objects (the MCP SDK's models, then ours) and frees almost none of them, yet the
# collector would walk them over and over as they pile up: ~8% of a cold start. Off until the server is built;
# cli.collect_from_here() turns it back on, with what start-up made set aside for good.
gc.disable()

from b24_telephony_mcp.commands.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
