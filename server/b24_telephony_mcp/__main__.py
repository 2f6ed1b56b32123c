import sys

from b24_telephony_mcp.commands.cli import main

sys.exit(main())
