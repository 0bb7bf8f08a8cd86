"""Restoration entry point: `python main.py --config ... --deg ... --path_y ... -i ...` (see docs/cli.md)."""
import logging
import os
import sys

from runners.cli import main

if __name__ == "__main__":
    rc = main()
    if rc == 0 and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # Under torchrun, leave without the interpreter's finalization: everything is written and the
        # process group is torn down by now, but a gloo rank can still abort while C++ objects are
        # destroyed at exit ("terminate called without an active exception", no Python frame on the
        # stack; 6 of 185 two-rank CPU runs here, none of 130 since), and torchrun then reports the run as failed.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(rc)
    sys.exit(rc)
