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


def _number(option, value, kind):
    if isinstance(value, str):   # from the command line
        try:
            value = kind(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _shown(value, number):
    """How to quote a refused value: `-3` when the command line gave a number, `'2.5'` when the
    text was not one, the repr for Python values."""
    return value if isinstance(value, str) and number is not None else repr(value)


def positive_int(option: str, value, allow_none: bool = True):
    """`value` as an int >= 1 (None passes through when allowed)."""
    if value is None and allow_none:
        return None
    number = _number(option, value, int)
    if number is None or number != int(number) or number < 1:
        raise InvalidArgumentError(f"{option} must be a whole number >= 1, got {_shown(value, number)}")
    return int(number)


def positive_seconds(option: str, value, allow_none: bool = True):
    """A duration in seconds > 0 (None passes through when allowed)."""
    if value is None and allow_none:
        return None
    number = _number(option, value, float)
    if number is None or number <= 0:
        raise InvalidArgumentError(f"{option} must be a number of seconds > 0, got "
                                   f"{_shown(value, number)}")
    return float(number)


def output_root(option: str, value) -> Path:
    """An output root: a directory, or a path that does not exist yet (it will be created)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{option} {str(path)!r} exists and is not a directory")
    return path


def cli(check, option: str):
    """An argparse `type=` from one of the checks above (argparse reports the message, exit 2)."""
    def parse(text):
        try:
            return check(option, text)
        except InvalidArgumentError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = option   # argparse names the type in its message
    return parse
