"""Restoration entry point: `python main.py --config ... --deg ... --path_y ... -i ...` (see docs/cli.md)."""
import sys

from runners.cli import main

if __name__ == "__main__":
    sys.exit(main())
