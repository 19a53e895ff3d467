"""Value checks shared by the recipe parser (zoo/recipe.py) and the input/output specs
(zoo/io_spec.py). They raise ValueError with the problem; each caller adds where it was found."""
from __future__ import annotations

import math


def positive_number(value, kind=float):
    """`value` as a finite positive `kind` (float or int)."""
    # not (value > 0) also refuses NaN; .inf would make a tolerance that passes anything
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0) \
            or not math.isfinite(value):
        raise ValueError(f"expected a finite positive number, got {value!r}")
    if kind is int and value != int(value):
        raise ValueError(f"expected a whole number, got {value!r}")
    return kind(value)
