"""``python -m xsproto``: the ``xsproto`` command (how migrate starts its transport)."""

import sys

from xsproto.cli import main

sys.exit(main())
