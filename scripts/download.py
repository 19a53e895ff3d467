#!/usr/bin/env python
"""Kept so `python scripts/download.py ...` works as before; the code is zoo/cli/download.py."""
import sys

from zoo.cli.download import main

if __name__ == "__main__":
    sys.exit(main())
