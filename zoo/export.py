"""The one writer: atomic output folders, model files, JSON, and file manifests.

A model folder only ever appears complete: everything is written to a hidden temporary sibling,
validated there, and renamed into place; on any error the temporary folder is removed.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from zoo import faults
from zoo.arguments import InvalidArgumentError
from zoo.cli import DIST
from zoo.constants import (
    DEFAULT_FORMATS,
    FORMAT_FILES,
    FORMATS,
    INFERENCE_MODES,
    LEGACY_FORMATS,
    SERVING_FORMATS,
)

# Written whatever the formats: the builder and preprocessing, the golden outputs that re-validate
# every format without torch, and the report (last: its presence marks a complete folder).
META_FILES = ("config.json", "golden.npz", "report.json")
# The optional formats' converters and runtimes, imported by module name; the [onnx] extra.
FORMAT_MODULES = {"onnx": ("tf2onnx", "onnxruntime")}


def _tmp_name(path: Path) -> Path:
    # the writer's pid lets sweep_tmp_files() tell a dead writer's leftover from a live write
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def sweep_tmp_files(folder) -> None:
    """Remove the temporary files of write_json/write_text callers that were killed mid-write."""
    for p in Path(folder).glob(".*.tmp"):
        pid = p.name.rsplit(".", 2)[-2].split("-")[0]
        if p.is_file() and not (pid.isdigit() and pid_alive(int(pid))):
            p.unlink(missing_ok=True)


def write_json(path, data) -> None:
    """Deterministic JSON (sorted keys), written atomically."""
    path = Path(path)
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_text(path, text: str) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def _siblings(final: Path):
    """(path, kind 'tmp'|'old', writer pid or None) of the hidden work folders of `final`."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-(?:(\d+)-)?[0-9a-f]{{8}}")
    if not final.parent.is_dir():
        return []
    found = []
    for p in sorted(final.parent.iterdir()):
        m = pattern.fullmatch(p.name)
        if m:
            found.append((p, m.group(1), int(m.group(2)) if m.group(2) else None))
    return found


def recover(final) -> None:
    """Clean up after writers of `final` that died (SIGKILL, power loss): their hidden work folders
    are removed, and if they died between the two renames of a replacement (the model folder
    gone), the validated new folder — or else the previous one — is put back in place first."""
    final = Path(final)
    dead = [(p, kind) for p, kind, pid in _siblings(final) if pid is None or not pid_alive(pid)]
    if not final.exists():
        # report.json is written last, after validation: its presence marks a complete folder
        for wanted in ("tmp", "old"):
            done = [p for p, kind in dead if kind == wanted and (p / "report.json").is_file()]
            if done:
                os.replace(done[-1], final)
                break
    for p, _kind in dead:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary folder that replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    # The writer's pid in the name lets a later run tell debris of a dead writer from the work
    # of a live one (concurrent conversions of the same model).
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = final.parent / f".{final.name}.tmp-{token}"
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, final, final.parent / f".{final.name}.old-{token}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):   # an empty `<out>/<source>/` left by a failure
                final.parent.rmdir()             # (fails, as it should, if anything else is there)


def _swap_in(tmp: Path, final: Path, old: Path, attempts: int = 20) -> None:
    """Move `tmp` to `final`, the previous `final` aside and then away. Another writer of the same
    model may put its folder in place between our two renames (ENOTEMPTY): move that aside too
    and retry; the last writer wins and every folder that appears is complete."""
    for _ in range(attempts):
        try:
            os.replace(final, old)
        except FileNotFoundError:
            pass
        faults.point("between_renames")
        try:
            os.replace(tmp, final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(old, ignore_errors=True)
            continue
        shutil.rmtree(old, ignore_errors=True)
        return
    raise OSError(f"could not move {tmp} into place: {final} kept being replaced by other writers")


def parse_formats(option: str, value) -> tuple[str, ...]:
    """Export formats from a comma list (command line) or a sequence (API), in FORMATS order;
    None is DEFAULT_FORMATS. Unknown names, and formats whose converter is not installed, are one
    InvalidArgumentError naming what is known or what to install."""
    if value is None:
        return DEFAULT_FORMATS
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        got = f"unknown format(s) {', '.join(map(repr, unknown))}" if unknown else "no format given"
        raise InvalidArgumentError(f"{option}: {got}; known: {', '.join(FORMATS)}")
    for fmt in names:
        missing = [m for m in FORMAT_MODULES.get(fmt, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise InvalidArgumentError(f"{option}: {fmt} needs {', '.join(missing)}, not installed: "
                                       f"pip install '{DIST}[{fmt}]'")
    return tuple(f for f in FORMATS if f in names)


def parse_inference(option: str, value, formats=None) -> str | None:
    """--inference: None/"none" (plain exports) or one of INFERENCE_MODES. It changes only the
    serving formats, so asking for it without one of them is refused rather than ignored."""
    if value in (None, "", "none"):
        return None
    if value not in INFERENCE_MODES:
        raise InvalidArgumentError(f"{option}: expected none, {', '.join(INFERENCE_MODES)}; got {value!r}")
    if formats is not None and not set(formats) & set(SERVING_FORMATS):
        raise InvalidArgumentError(f"{option} {value} changes the serving exports only "
                                   f"({', '.join(SERVING_FORMATS)}); add one to --formats")
    return value


def written_formats(config: dict) -> tuple[str, ...]:
    """The formats a model folder holds, as its config.json records them."""
    return tuple(config.get("formats", LEGACY_FORMATS))


def _tflite_signature(model, shapes: dict | None):
    """The LiteRT file's input signature: the batch free, every other axis fixed at the
    validation input's (`shapes`: {input name: shape without batch}). A size-free image input
    otherwise becomes SHAPE/PAD arithmetic in the graph (ceil-mode pooling, TF-"same" padding),
    and the convolutions after it become TF select ops (FlexConv2D) that no interpreter without
    the Flex delegate runs (TensorFlow's own pip interpreter does not link it)."""
    if not shapes:
        return None
    import tensorflow as tf

    specs = {k: tf.TensorSpec((None, *shape), tf.float32, name=k) for k, shape in shapes.items()}
    if isinstance(model.input, dict):
        return [specs]
    return [next(iter(specs.values()))] if len(specs) == 1 else None


def _export_optional(model, path: Path, fmt: str, check, shapes) -> dict:
    """Write a format that some models cannot be expressed in. A converter that refuses the model,
    or writes a file its runtime cannot run (`check`), is a recorded skip and the conversion goes
    on; numbers that differ are not a skip (validation fails the model); a disk error stops
    everything."""
    try:
        # Keras' own exporters: LiteRT through TFLiteConverter from a SavedModel of the model's
        # call (TFLite builtins, TF select ops where none exists), ONNX through tf2onnx.
        if fmt == "tflite":
            model.export(str(path), format="litert", verbose=False,
                         input_signature=_tflite_signature(model, shapes))
        else:
            model.export(str(path), format=fmt, verbose=False)
        # The converters can succeed with a file that does not run: tf2onnx writes a TF op it has
        # no ONNX twin for (Lgamma, Erfinv, ...) as an unknown node and only logs it; the TFLite
        # converter may fold a batch-1 constant into the graph, which then fails at batch 2.
        if check is not None:
            check(fmt, path)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - any converter refusal is a skip, reported
        if path.exists():
            path.unlink()
        # the runtimes quote the hidden work folder's path; the file name says enough
        first = (str(e).strip().splitlines() or [""])[0].replace(str(path), path.name)[:300]
        return {"skipped": f"the {fmt} converter cannot express this model (its export or the "
                           f"run of the exported file failed): {type(e).__name__}: {first}"}
    return {"file": path.name}


def _export_xla_saved_model(model, path: Path) -> None:
    """model.export's SavedModel, with the serving function compiled by XLA when it is called
    (Keras' exporter has no option for it; ExportArchive takes our own tf.function)."""
    import keras
    import tensorflow as tf

    signature = [tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0]), model.input)]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", tf.function(lambda x: model(x, training=False),
                                              input_signature=signature, jit_compile=True,
                                              autograph=False))
    archive.write_out(str(path), verbose=False)


def save_model_files(model, folder, formats, check=None, shapes=None, serving=None,
                     xla=False) -> dict:
    """Write `formats` into `folder`; returns {format: {"file": name} or {"skipped": why}}.
    check(format, path): runs an optional format's file, raising if its runtime cannot.
    shapes: {input name: shape without batch} the TFLite file is fixed at (None: the model's).
    serving: the model the serving formats (SERVING_FORMATS) are written from (--inference: the
    folded copy; default `model`); xla: the SavedModel's serving function is XLA-compiled."""
    folder = Path(folder)
    serving = model if serving is None else serving
    exports = {}
    for fmt in formats:
        path = folder / FORMAT_FILES[fmt]
        if fmt == "weights.h5":
            model.save_weights(path)
        elif fmt == "keras":
            model.save(path)
        elif fmt == "saved_model" and xla:
            _export_xla_saved_model(serving, path)
        elif fmt == "saved_model":
            # serving_default: the model's named inputs and outputs, NHWC float32
            serving.export(str(path), format="tf_saved_model", verbose=False)
        else:
            exports[fmt] = _export_optional(serving, path, fmt, check, shapes)
            faults.point(f"export:{fmt}")
            continue
        exports[fmt] = {"file": path.name}
        faults.point(f"export:{fmt}")
    return exports


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
    """Every file of the formats config.json records, and the metadata files, are there."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    files = [FORMAT_FILES.get(f) for f in written_formats(config)]
    return None not in files and all((folder / f).exists() for f in (*files, *META_FILES))
