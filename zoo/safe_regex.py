"""Recipe regular expressions that cannot hang a conversion.

Python's `re` has no time limit, and a nested unbounded repetition such as `(a+)+$` or `(.*)*x`
backtracks exponentially on a near-miss: one such `ignore` pattern kept a worker at 100 % CPU
until it was killed. Recipes match short module paths, for which no such pattern is ever needed,
so the loader refuses them (and very long patterns); `convert_all --timeout` remains the backstop
for whatever this check does not recognise (e.g. overlapping alternatives under a repetition).
"""
from __future__ import annotations

try:                      # the parser behind re.compile (public as sre_parse before 3.11)
    import re._parser as _parser
    from re._constants import MAX_REPEAT, MIN_REPEAT
except ImportError:       # pragma: no cover - Python 3.10
    import sre_parse as _parser
    from sre_constants import MAX_REPEAT, MIN_REPEAT

MAX_PATTERN_LENGTH = 500
_REPEATS = {MAX_REPEAT, MIN_REPEAT}   # possessive repeats (POSSESSIVE_REPEAT) never backtrack


def _items(parsed):
    """Every (op, argument) in a parsed pattern, depth-first, with the sub-patterns inside it.
    An atomic group's argument is a bare SubPattern and is not entered: nothing backtracks into
    it."""
    for op, av in parsed:
        yield op, av
        for sub in (av if isinstance(av, (tuple, list)) else ()):
            if isinstance(sub, _parser.SubPattern):
                yield from _items(sub)
            elif isinstance(sub, (tuple, list)):
                for s in sub:
                    if isinstance(s, _parser.SubPattern):
                        yield from _items(s)


def _repeats_many(op, av) -> bool:
    """A repetition whose count is not fixed ('+', '*', '{1,3}'; not '{2}')."""
    return op in _REPEATS and av[1] != av[0]


def backtracking_problem(pattern: str) -> str | None:
    """Why `pattern` could backtrack catastrophically, or None. Possessive repeats and atomic
    groups (no backtracking into them) are fine."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"longer than {MAX_PATTERN_LENGTH} characters"
    for op, av in _items(_parser.parse(pattern)):
        if _repeats_many(op, av) and any(_repeats_many(o, a) for o, a in _items(av[2])):
            return ("a repetition inside a repetition (like '(a+)+') can backtrack exponentially; "
                    "write it with a single repetition, or make it possessive ('(a+)++')")
    return None

