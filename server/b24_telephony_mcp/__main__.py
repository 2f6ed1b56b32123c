import sys

from b24_telephony_mcp.cli import main

sys.exit(main())
