"""Pretrained weights through timm's and torchvision's own caches (populated here, since tests
have no network), and `--weights auto` choosing pretrained where it can and random otherwise."""
import json

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import zoo
from helpers import SMALL, run_script
from zoo.conversion.sources import perturb_


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """TORCH_HOME with torchvision's resnet18 checkpoint file and a Hugging Face cache with timm's
    resnet18.a1_in1k, both holding perturbed weights (the real files cannot be downloaded here)."""
    root = tmp_path_factory.mktemp("caches")
    tv = torchvision.models.resnet18()
    perturb_(tv, seed=1)
    ckpt_dir = root / "torch" / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save(tv.state_dict(), ckpt_dir / "resnet18-f37072fd.pth")

    tm = timm.create_model("resnet18")
    perturb_(tm, seed=2)
    repo = root / "hf" / "models--timm--resnet18.a1_in1k"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(snap / "model.safetensors"))
    return {"TORCH_HOME": str(root / "torch"), "HF_HUB_CACHE": str(root / "hf"),
            "HF_HUB_OFFLINE": "0"}


def test_torchvision_pretrained_from_its_cache(caches, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", caches["TORCH_HOME"])
    _model, report = zoo.convert("torchvision/resnet18", weights="pretrained", input_size=SMALL,
                                 out_dir=tmp_path)
    assert report["weights"]["source"] == "pretrained"
    assert report["weights"]["tag"] == "IMAGENET1K_V1"
    assert report["parity"]["weights.h5"]["max_rel"] < 1e-5
    config = json.loads((tmp_path / "torchvision/resnet18/config.json").read_text())
    assert len(config["class_names"]) == 1000 and config["class_names"][0] == "tench"
    assert config["preprocessing"]["crop_pct"] == pytest.approx(224 / 256, abs=1e-3)


def test_auto_uses_pretrained_where_cached_and_warns_loudly_otherwise(caches, tmp_path):
    proc = run_script("convert_all.py", "--only", "timm/resnet18", "torchvision/resnet18",
                      "timm/resnet34", "--input-size", SMALL, "--out", tmp_path, env=caches)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {n: json.loads((tmp_path / n / "report.json").read_text())
               for n in ("timm/resnet18", "torchvision/resnet18", "timm/resnet34")}
    assert reports["timm/resnet18"]["weights"]["source"] == "pretrained"
    assert reports["timm/resnet18"]["weights"]["tag"] == "a1_in1k"
    assert reports["torchvision/resnet18"]["weights"]["source"] == "pretrained"
    assert reports["timm/resnet34"]["weights"]["source"] == "random"
    assert reports["timm/resnet34"]["weights"]["requested"] == "auto"
    assert any("FELL BACK TO RANDOM" in w for w in reports["timm/resnet34"]["warnings"])
    assert "WARNING: timm/resnet34" in proc.stderr
    assert not reports["timm/resnet18"]["warnings"]
    cfg = json.loads((tmp_path / "timm/resnet18/config.json").read_text())
    assert cfg["preprocessing"]["interpolation"] == "bicubic"   # timm's per-weight config
    assert cfg["preprocessing"]["crop_pct"] == 0.95
    assert cfg["license"] == "apache-2.0" and len(cfg["class_names"]) == 1000


def test_in_chans_override_converts_with_parity():
    model, report = zoo.convert("timm/resnet18", in_chans=1, num_classes=5, input_size=SMALL)
    assert model.input_shape == (None, None, None, 1) and model.output_shape == (None, 5)
    assert report["parity"]["in_memory"]["max_rel"] < 1e-5
    with pytest.raises(zoo.SourceError, match="in_chans"):
        zoo.convert("torchvision/resnet18", in_chans=1)


def test_readme_user_path_runs_as_written(caches, tmp_path):
    """The README's "Using a converted model" block, verbatim, against a release of a
    torchvision/resnet18 conversion from (planted) pretrained weights, with torch blocked: the
    block downloads, creates the model, preprocesses a photo, predicts and decodes class names."""
    import re

    from helpers import ROOT, run_python
    from zoo.publish import build_release

    proc = run_script("convert.py", "torchvision/resnet18", "--weights", "pretrained", "--out",
                      tmp_path / "out", env={"TORCH_HOME": caches["TORCH_HOME"]})
    assert proc.returncode == 0, proc.stderr[-2000:]
    build_release([tmp_path / "out"], tmp_path / "release", version="test")
    block = re.search(r"<!-- user-path:start -->\n```python\n(.*?)```\n<!-- user-path:end -->",
                      (ROOT / "README.md").read_text(), flags=re.S).group(1)
    code = "import sys\nsys.modules['torch'] = None\n" + block
    proc = run_python(code, env={"ZOO_WEIGHTS_URL": f"file://{tmp_path / 'release'}",
                                 "ZOO_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if re.match(r"\s*\d+ ", ln)]
    assert len(rows) == 5, proc.stdout
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    for index, *label, prob in rows:   # the names the source ships, at the predicted indices
        assert " ".join(label) == categories[int(index)] and 0 <= float(prob) <= 1
    # probabilities, best first (the 5th may print as 0.000 with the test's random "pretrained")
    probs = [float(r[-1]) for r in rows]
    assert probs == sorted(probs, reverse=True) and probs[0] > 0
