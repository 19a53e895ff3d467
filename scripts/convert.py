#!/usr/bin/env python
"""Kept so `python scripts/convert.py ...` works as before; the code is zoo/cli/convert.py."""
import sys

from zoo.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
