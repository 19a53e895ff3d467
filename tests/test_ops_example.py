"""examples/deformable end to end: a user's model with torchvision.ops.DeformConv2d (a compiled
C++ op) converted by the real CLI through its recipe and validated against torch, and the audit
still naming the compiled op while pointing at zoo's TensorFlow implementation."""
import json

from helpers import ROOT, run_script

EXAMPLE = ROOT / "examples" / "deformable"
ENV = {"PYTHONPATH": str(EXAMPLE), "ZOO_RECIPE_PATH": str(EXAMPLE / "recipes")}


def test_deformnet_converts_and_matches_torch(tmp_path):
    """Every export format, each re-validated against torch by the CLI (TFLite with builtin ops
    only, ONNX through onnxruntime): the deformable op survives all of them."""
    # at 32 px (the recipe's 64 in docs/custom-ops.md): the CLI path, not the size, is tested here
    proc = run_script("convert.py", "example/deformnet", "--out", tmp_path, "--input-size", 32,
                      "--formats", "weights.h5,keras,saved_model,tflite,onnx", env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "example" / "deformnet" / "report.json").read_text())
    parity = report["parity"]
    assert set(parity) >= {"in_memory", "weights.h5", "keras", "saved_model", "tflite", "onnx"}
    for where, result in parity.items():
        assert result["passed"] and result["max_rel"] < 1e-4, (where, result)
    # both deformable stages were compared, not only the logits
    assert set(parity["in_memory"]["features"]) == {"stage1", "stage2"}


def test_audit_names_the_compiled_op_and_zoos_implementation(monkeypatch):
    # in-process (scripts/audit.py is tested as a command by tests/test_audit.py): the audit of
    # the user's torch module
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from deformnet_torch import deformnet

    from zoo.conversion.audit import audit_module

    result = audit_module(deformnet(), (1, 3, 32, 32))
    # the only compiled op has a zoo implementation: the audit no longer fails
    assert result["supported"], result["rows"]
    rows = {(r["kind"], r["name"]): r for r in result["rows"]}
    op = rows[("op", "torchvision::deform_conv2d")]
    assert op["status"] == "custom op (C/C++ backend)"
    assert op["where"] == ["blocks.0.deform", "blocks.1.deform"]
    assert "zoo.layers.deform_conv.DeformConv2D" in op["note"]
