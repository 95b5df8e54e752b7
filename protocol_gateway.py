#!/usr/bin/env python3
"""Entry point: ``python protocol_gateway.py config.ini`` (see ``--help``)."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
