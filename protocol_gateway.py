#!/usr/bin/env python3
"""Entry point: ``python protocol_gateway.py config.ini`` (see ``--help``).

The import stays under ``__main__``: every transport process re-runs this file as
``__mp_main__`` (multiprocessing does that with a main script), and a child must not pay for
the command line's imports (docs/architecture.md "Memory").
"""

import sys

if __name__ == "__main__":
    from gateway.cli import main

    sys.exit(main())
