#!/usr/bin/env python
"""Kept so `python scripts/diff_layers.py ...` works as before; the code is zoo/cli/diff_layers.py."""
import sys

from zoo.cli.diff_layers import main

if __name__ == "__main__":
    sys.exit(main())
