"""``python -m train.export``: see train/export/cli.py."""

import sys

from .cli import main

sys.exit(main())
