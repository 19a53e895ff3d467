"""Checks of user-supplied values shared by the Python API and the command-line scripts: a bad
value is one clear error naming it (argparse turns it into a one-line message and exit 2), never
a traceback from deep inside a conversion or a silent default."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from zoo.errors import ZooError


class InvalidArgumentError(ZooError, ValueError):
    """A value passed to the API or a script is out of range or of the wrong kind."""


def positive_int(option: str, value, allow_none: bool = True):
    """`value` as an int >= 1 (None passes through when allowed)."""
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and \
        math.isfinite(value) and value == int(value) and value >= 1
    if not ok:
        raise InvalidArgumentError(f"{option} must be a whole number >= 1, got {value!r}")
    return int(value)


def output_root(value) -> Path:
    """An output root: a directory, or a path that does not exist yet (it will be created)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"output root {str(path)!r} exists and is not a directory")
    return path


def cli(check, option: str):
    """An argparse `type=` from one of the checks above (argparse reports the message, exit 2)."""
    def parse(text):
        try:
            if check is positive_int:
                try:
                    number = int(text)
                except ValueError:
                    raise InvalidArgumentError(f"{option} must be a whole number >= 1, "
                                               f"got {text!r}") from None
                return positive_int(option, number, allow_none=False)
            return check(text)
        except InvalidArgumentError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = option   # argparse names the type in its message
    return parse
