#!/usr/bin/env python
"""Kept so `python scripts/audit.py ...` works as before; the code is zoo/cli/audit.py."""
import sys

from zoo.cli.audit import main

if __name__ == "__main__":
    sys.exit(main())
