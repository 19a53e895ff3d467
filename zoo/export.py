"""The one writer: atomic output folders, model files, JSON, and file manifests.

A model folder only ever appears complete: everything is written to a hidden temporary sibling,
validated there, and renamed into place; on any error the temporary folder is removed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

MODEL_FILES = ("model.weights.h5", "model.keras", "saved_model", "config.json", "golden.npz",
               "report.json")


def write_json(path, data) -> None:
    """Deterministic JSON (sorted keys), written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary folder that replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model_files(model, folder) -> None:
    folder = Path(folder)
    model.save_weights(folder / "model.weights.h5")
    model.save(folder / "model.keras")
    # Serving signature: NHWC float32 input, logits output.
    model.export(str(folder / "saved_model"), format="tf_saved_model", verbose=False)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(folder) -> dict:
    """{relative path: {sha256, bytes}} for every file under `folder` (sorted)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = {"sha256": sha256_file(p),
                                                    "bytes": p.stat().st_size}
    return out


def is_complete(folder) -> bool:
    folder = Path(folder)
    return all((folder / f).exists() for f in MODEL_FILES)
