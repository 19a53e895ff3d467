#!/usr/bin/env python
"""Kept so `python scripts/publish.py ...` works as before; the code is zoo/cli/publish.py."""
import sys

from zoo.cli.publish import main

if __name__ == "__main__":
    sys.exit(main())
