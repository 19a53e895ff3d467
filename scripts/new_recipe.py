#!/usr/bin/env python
"""Kept so `python scripts/new_recipe.py ...` works as before; the code is zoo/cli/new_recipe.py."""
import sys

from zoo.cli.new_recipe import main

if __name__ == "__main__":
    sys.exit(main())
