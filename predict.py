#!/usr/bin/env python3
"""The judge's entry point: ``python predict.py DATASETS_DIR OUT_JSON [options]``.

See ``python predict.py --help`` and zeroshot/cli.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zeroshot.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
