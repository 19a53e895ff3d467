#!/usr/bin/env python
"""`python scripts/benchmark.py ...` in a checkout; the code is zoo/cli/benchmark.py."""
import sys

from zoo.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
