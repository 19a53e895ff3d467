"""Library versions from package metadata: the same answer in a process that imported torch and
in the batch parent that must not."""
from __future__ import annotations

import platform
from importlib import metadata

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
