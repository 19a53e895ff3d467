#!/usr/bin/env python
"""Kept so `python scripts/update_readme.py ...` works as before; the code is zoo/cli/update_readme.py."""
import sys

from zoo.cli.update_readme import main

if __name__ == "__main__":
    sys.exit(main())
