#!/usr/bin/env python
"""Kept so `python scripts/convert_all.py ...` works as before; the code is zoo/cli/convert_all.py."""
import sys

from zoo.cli.convert_all import main

if __name__ == "__main__":
    sys.exit(main())
