"""Library versions from package metadata: the same answer in a process that imported torch and
in the batch parent that must not."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "timm", "tensorflow", "keras", "numpy")


def _version(pkg: str) -> str | None:
    for dist in (pkg, f"{pkg}-cpu") if pkg == "tensorflow" else (pkg,):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict:
    import zoo
    out = {pkg: _version(pkg) for pkg in PACKAGES}
    out.update(python=platform.python_version(), zoo=zoo.__version__)
    return out


def source_revision() -> str | None:
    """The git commit of the zoo source in use (short hash, "+changes" when the zoo/ or
    recipes/ files differ from it), or None outside a git checkout (an installed wheel). Two
    measurements of one zoo version can come from different code; this tells them apart."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "zoo",
                                "recipes"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
