"""The one command-line skeleton of the project: argparse with ``--log-level``, logging to stderr.

Every ``python -m ...`` module (runtime, train/, contest/) builds its parser with
:func:`make_parser` and parses with :func:`parse_args`, which configures logging
once; ``main(argv: Optional[List[str]] = None) -> int`` returns the exit code, so
tests call ``main([...])`` directly. Logs and progress go to stderr; stdout
stays for results.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level`` with one format (a no-op for handlers already set, e.g. under pytest)."""
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser named ``prog`` with the shared ``--log-level`` option."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="stderr log level (default: INFO)")
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--threads``, ``--batch-size``, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def parse_args(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (None: sys.argv[1:]) and configure logging from ``--log-level``."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    return args
