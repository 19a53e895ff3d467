"""Catalogue names, weight tags and the output paths made from them: validated here, once.

A name is `<source>/<arch>` optionally followed by `.<weight tag>` (`timm/resnet50.a1_in1k`,
`torchvision/resnet50.IMAGENET1K_V2`). Names become folder names (`<out>/<name>/`, the release's
`models/<name>/`, the download cache), so a name may never carry a path: a tag such as
`x/../../../victim` used to reach the file system unchecked when the source (a `python:` one) had
no list of valid tags of its own.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from zoo.errors import ZooError

# Letters, digits, '_' and '-' only: no '.', '/', '\\', whitespace or control characters, so that
# a name is a fixed number of path components and can never climb out of its root.
_PART = r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}"
VARIANT_NAME = re.compile(rf"{_PART}/{_PART}")
WEIGHT_TAG = re.compile(_PART)


class InvalidNameError(ZooError, ValueError):
    """A model name or weight tag that is not `<source>/<arch>[.<tag>]` made of safe characters."""


def parse_name(name) -> tuple[str, str | None]:
    """'timm/resnet50.a1_in1k' -> ('timm/resnet50', 'a1_in1k'); refuses anything else."""
    if not isinstance(name, str):
        raise InvalidNameError(f"model name must be a string, got {type(name).__name__}")
    base, dot, tag = name.partition(".")
    if not VARIANT_NAME.fullmatch(base):
        raise InvalidNameError(f"invalid model name {name!r}: expected '<source>/<arch>' made of "
                               "letters, digits, '_' and '-' (e.g. timm/resnet50)")
    if dot and not WEIGHT_TAG.fullmatch(tag):
        raise InvalidNameError(f"invalid weight tag {tag!r} in {name!r}: a tag is letters, digits, "
                               "'_' and '-' only (e.g. timm/resnet50.a1_in1k)")
    return base, (tag if dot else None)


def output_dir(out_root, name: str) -> Path:
    """`<out_root>/<name>`, proven to stay under `out_root` (also through symbolic links)."""
    parse_name(name)
    root = Path(out_root)
    final = root.joinpath(*name.split("/"))
    real_root, real_final = os.path.realpath(root), os.path.realpath(final)
    if os.path.commonpath([real_root, real_final]) != real_root or real_final == real_root:
        raise InvalidNameError(f"output folder for {name!r} resolves to {real_final}, outside "
                               f"the output root {real_root} (a symbolic link on the way?)")
    return final
