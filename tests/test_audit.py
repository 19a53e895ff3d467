"""scripts/audit.py: module types and ops of a PyTorch model, classified against zoo."""
import json

import timm
import torch

from helpers import ROOT, run_script

ENV = {"PYTHONPATH": str(ROOT / "tests")}


def test_catalogue_model_is_fully_supported(tmp_path):
    proc = run_script("audit.py", "timm:resnet50d", "--input-shape", "1,3,64,64", "--json",
                      tmp_path / "a.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "a.json").read_text())
    by_name = {r["name"]: r for r in result["rows"]}
    model = timm.create_model("resnet50d")
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert by_name["Conv2d"]["count"] == n_conv and by_name["AvgPool2d"]["status"] == "supported"
    assert "layer1.0.conv1" in by_name["Conv2d"]["where"]
    assert result["supported"] and result["counts"]["unknown"] == 0


def test_custom_ops_autograd_functions_and_unknown_modules_are_named():
    proc = run_script("audit.py", "python:audit_fixtures:detector", "--input-shape", "1,3,16,16",
                      "--json", "-", env=ENV)
    assert proc.returncode == 1, proc.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(proc.stdout)["rows"]}
    for op in ("torchvision::deform_conv2d", "torchvision::roi_align", "torchvision::nms"):
        assert rows[("op", op)]["status"] == "custom op (C/C++ backend)", op
    assert rows[("op", "torchvision::deform_conv2d")]["where"] == ["dconv"]
    assert rows[("autograd", "audit_fixtures.ClampFn")]["status"].startswith("custom op")
    # zoo re-implements these (zoo/ops/): still named as compiled ops, with the zoo twin
    for key in (("module", "DeformConv2d"), ("op", "torchvision::deform_conv2d"),
                ("op", "torchvision::roi_align"), ("op", "torchvision::nms")):
        assert rows[key]["status"] == "custom op (C/C++ backend)", key
        assert rows[key]["note"].startswith("zoo has a TF implementation: zoo."), key
    # Keras has these (under another name or the same): no "re-implement" advice for them
    for module, twin in (("Softplus", "keras.activations.softplus"),
                         ("ZeroPad2d", "keras.layers.ZeroPadding2D"),
                         ("Conv1d", "keras.layers.Conv1D")):
        assert rows[("module", module)]["status"] == "keras twin (no zoo block)", module
        assert twin in rows[("module", module)]["note"] and \
            "re-implement" not in rows[("module", module)]["note"], module
    assert rows[("module", "Conv2d")]["status"] == "supported"


def test_plain_user_model_and_bad_input():
    proc = run_script("audit.py", "python:audit_fixtures:plain", "--input-shape", "2,3,8,8",
                      env=ENV)
    assert proc.returncode == 0 and "0 unknown" in proc.stdout, proc.stdout + proc.stderr
    proc = run_script("audit.py", "keras:resnet50")
    assert proc.returncode == 2 and "source must be" in proc.stderr
