"""Command-line entry point ``dracpu``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the dracpu command line; returns the process exit status."""
    del argv
    print("dracpu: no command yet", file=sys.stderr)
    return 2
