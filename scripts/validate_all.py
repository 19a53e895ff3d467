#!/usr/bin/env python
"""Kept so `python scripts/validate_all.py ...` works as before; the code is zoo/cli/validate_all.py."""
import sys

from zoo.cli.validate_all import main

if __name__ == "__main__":
    sys.exit(main())
