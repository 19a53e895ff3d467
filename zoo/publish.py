"""Assemble a release of converted models (scripts/publish.py). No torch, no TensorFlow.

Release layout (a static folder any HTTP server can serve):
    index.json                          every model: files (path, sha256, bytes), parity, weights
    models/<name>/model.weights.h5
    models/<name>/config.json
    models/<name>/README.md             model card
    models/<name>/saved_model.tar.gz    with --saved-model
Deterministic: publishing the same outputs twice gives byte-identical files and index.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import yaml

from zoo import faults
from zoo.constants import WEIGHTS_FILE
from zoo.errors import ZooError
from zoo.export import is_complete, manifest, sha256_file, write_json, write_text, written_formats
from zoo.validate import output_summary

INDEX_VERSION = 1


class PublishError(ZooError):
    """A release cannot be assembled or uploaded."""


def find_models(out_roots) -> dict[str, Path]:
    """name -> folder for every complete model under the output roots (shards merge here)."""
    found: dict[str, Path] = {}
    for root in map(Path, out_roots):
        for report in sorted(root.rglob("report.json")):
            folder = report.parent
            rel = folder.relative_to(root)
            if any(p.startswith(".") for p in rel.parts) or not is_complete(folder):
                continue
            name = rel.as_posix()
            if name in found:
                raise PublishError(f"{name} is in two output roots: {found[name]} and {folder}")
            found[name] = folder
    return found


def check_model(folder: Path, allow_random: bool,
                saved_model: bool = False) -> tuple[dict | None, str | None]:
    """(report, None) if publishable, else (None, reason)."""
    report = json.loads((folder / "report.json").read_text())
    # a release serves .weights.h5 (and the SavedModel when asked); --formats may have left
    # either out of the folder
    formats = written_formats(json.loads((folder / "config.json").read_text()))
    needed = ["weights.h5"] + (["saved_model"] if saved_model else [])
    missing = [f for f in needed if f not in formats]
    if missing:
        return None, (f"converted without {', '.join(missing)} (its formats: {', '.join(formats)}); "
                      f"convert again with --formats including {','.join(missing)}")
    failed = [f for f, p in report.get("parity", {}).items() if not p.get("passed")]
    if report.get("status") != "passed" or failed or not report.get("parity"):
        return None, f"failed validation ({', '.join(failed) or report.get('status')})"
    if report["weights"]["source"] == "random" and not allow_random:
        return None, "converted from random weights (use --allow-random to publish anyway)"
    current = manifest(folder)
    for rel, meta in report.get("files", {}).items():
        if current.get(rel, {}).get("sha256") != meta["sha256"]:
            return None, f"{rel} changed since it was validated (sha256 differs from report.json)"
    return report, None


def _deterministic_tgz(src: Path, dest: Path) -> None:
    """tar.gz with sorted entries, zero mtimes/owners: same input, same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in [src, *sorted(src.rglob("*"))]:
            info = tar.gettarinfo(str(p), arcname=str(Path(src.name) / p.relative_to(src)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if p.is_dir() else 0o644
            if p.is_file():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    tmp = dest.with_name(f".{dest.name}.part")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    os.replace(tmp, dest)


def base_model(report: dict) -> str | None:
    """The Hub name of the weights this model was converted from: timm's weights are Hub
    repositories (`timm/resnet50.a1_in1k`); torchvision's have no repository, so their tagged
    catalogue name (`torchvision/resnet50.IMAGENET1K_V2`) says which set. None when the weights
    are not the source's (random, or the user's own checkpoint): claiming a base model would be
    false there."""
    w = report["weights"]
    library, _, arch = report["source"].partition(":")
    if w["source"] != "pretrained" or library not in ("timm", "torchvision") or not arch:
        return None
    return f"{library}/{arch}.{w['tag']}" if w.get("tag") else f"{library}/{arch}"


def card_metadata(report: dict, config: dict) -> dict:
    """The Hub's model card metadata (the README's YAML front matter)."""
    library = report["source"].partition(":")[0]
    meta = {"license": config.get("license") or "other", "library_name": "keras",
            "pipeline_tag": "image-classification",
            "tags": ["keras", "image-classification", library, "zoo"]
            + (["random-weights"] if report["weights"]["source"] == "random" else [])}
    base = base_model(report)
    if base:
        meta["base_model"] = base
    return meta


def model_card(name: str, report: dict, config: dict) -> str:
    """README.md of one published model: Hub metadata, then what it is and its measured parity."""
    w = report["weights"]
    pre = config["preprocessing"]
    v = report["versions"]
    agreement = lambda m, k: f"{m[k]:.3f}" if k in m else "-"   # classification outputs only
    rows = "\n".join(
        f"| {fmt} | {out} | {m['max_rel']:.2e} | {agreement(m, 'top1')} | {agreement(m, 'top5')} |"
        for fmt, p in sorted(report["parity"].items()) for out, m in p["outputs"].items())
    random_note = ("\n> **Random weights.** This model was converted from randomly initialised "
                   "(perturbed) weights to test parity; its predictions are meaningless.\n"
                   if w["source"] == "random" else "")
    tag = f", tag {w['tag']}" if w.get("tag") else ""
    size, tol = report["input_size"], report["tolerance"]
    names = report.get("outputs") or ["logits"]
    outputs = f"{config['num_classes']} logits" if names == ["logits"] else \
        "a dict of " + ", ".join(f"`{n}`" for n in names)
    front = yaml.safe_dump(card_metadata(report, config), sort_keys=True)
    return f"""---
{front}---

# {name}
{random_note}
Keras 3 conversion of `{report['source']}` (weights: {w['source']}{tag}).

- License of the original weights: {config.get('license') or 'unknown (see the source)'}
- Keras builder: `{config['builder']}` with `{json.dumps(config['builder_kwargs'], sort_keys=True)}`
- Input: NHWC float32, {config['input_size']}x{config['input_size']} by default, normalised with
  mean {pre['mean']} and std {pre['std']}; resize with {pre['interpolation']} interpolation,
  centre crop {pre['crop_pct']} (`zoo.preprocess`). Output: {outputs}.

## Parity with the PyTorch model ({size}x{size}, tolerance {tol:g})

| format | output | max rel error | top-1 agreement | top-5 agreement |
|---|---|---|---|---|
{rows}

Converted with torch {v.get('torch')}, torchvision {v.get('torchvision')}, timm {v.get('timm')},
tensorflow {v.get('tensorflow')}, keras {v.get('keras')}, zoo {v.get('zoo')}.

```python
import zoo
model = zoo.create_model("{name}", pretrained=True)
```
"""


def _copy(src: Path, dest: Path) -> None:
    if dest.is_file() and sha256_file(dest) == sha256_file(src):
        return
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def build_release(out_roots, release: Path, version: str | None = None,
                  allow_random: bool = False, saved_model: bool = False) -> tuple[dict, dict]:
    """Write/refresh `release`; returns (index, {name: refusal reason})."""
    release = Path(release)
    models = find_models(out_roots)
    if not models:
        raise PublishError(f"no converted models found in {', '.join(map(str, out_roots))}")
    release.mkdir(parents=True, exist_ok=True)
    index_path = release / "index.json"
    index = {"format_version": INDEX_VERSION, "models": {}}
    if index_path.is_file():   # incremental: earlier shards/models stay in the release
        index["models"] = json.loads(index_path.read_text()).get("models", {})
    refused = {}
    for name, folder in sorted(models.items()):
        report, reason = check_model(folder, allow_random, saved_model)
        if report is None:
            refused[name] = reason
            continue
        config = json.loads((folder / "config.json").read_text())
        dest = release / "models" / name
        dest.mkdir(parents=True, exist_ok=True)
        _copy(folder / WEIGHTS_FILE, dest / WEIGHTS_FILE)
        _copy(folder / "config.json", dest / "config.json")
        write_text(dest / "README.md", model_card(name, report, config))
        if saved_model:
            _deterministic_tgz(folder / "saved_model", dest / "saved_model.tar.gz")
        faults.point("publish")   # files of a model written, index not yet: see test_faults
        files = {}
        for p in sorted(dest.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                files[p.name] = {"path": p.relative_to(release).as_posix(),
                                 "sha256": sha256_file(p), "bytes": p.stat().st_size}
        index["models"][name] = {
            "files": files, "source": report["source"], "license": config.get("license"),
            "weights": {"source": report["weights"]["source"], "tag": report["weights"].get("tag")},
            "random": report["weights"]["source"] == "random",
            "num_classes": report["num_classes"], "input_size": report["input_size"],
            "parity": {fmt: {"max_rel": p["max_rel"], "passed": p["passed"],
                             "outputs": {k: m["max_rel"] for k, m in p["outputs"].items()},
                             "top1": output_summary({fmt: p})["top1"]}
                       for fmt, p in sorted(report["parity"].items())},
            "versions": report["versions"],
        }
    if version is not None:
        index["version"] = version
    write_json(index_path, index)
    return index, refused


def upload(release: Path, to: str) -> str:
    """Upload to `hf://org/repo`. Returns a message; raises PublishError on bad input."""
    if not to.startswith("hf://") or to.count("/") != 3:
        raise PublishError(f"--to must look like hf://org/repo, got {to!r}")
    repo = to[len("hf://"):]
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError:
        return "huggingface_hub is not installed: the release is ready locally, not uploaded"
    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        return (f"no Hugging Face credentials (HF_TOKEN or `huggingface-cli login`): the release "
                f"in {release} is ready but was not uploaded to {repo}")
    api = HfApi(token=token)
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=str(release), repo_id=repo,
                      commit_message="zoo release", allow_patterns=["index.json", "models/**"])
    return f"uploaded {release} to https://huggingface.co/{repo}"
