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
    """The last git commit that changed the zoo source in use, zoo/ or recipes/ (short hash,
    "+changes" when those files differ from it), or None outside a git checkout (an installed
    wheel). Two measurements of one zoo version can come from different code; this tells them
    apart, and a commit of results or docs between them does not split them."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h", "--", "zoo",
                               "recipes"], capture_output=True, text=True, timeout=10)
        if head.returncode or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "zoo",
                                "recipes"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
