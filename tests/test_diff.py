"""scripts/diff_layers.py: with one deliberate mistake in a recipe or builder, the tool must name
the exact layer where the outputs start to diverge, and what kind of mistake fits."""
import json

import numpy as np
import pytest
import yaml

import zoo
from helpers import ROOT, SMALL, run_script
from zoo.conversion.diff import diff_layers
from zoo.transforms import TRANSFORMS, Transform, register

TINY = ROOT / "examples" / "tinynet"


def _recipe_copy(tmp_path, src, variant, new_name, edit):
    data = yaml.safe_load(src.read_text())
    data["mapping"] = [r for r in data["mapping"] if "only" not in r]
    for r in data["mapping"]:
        r.pop("skip", None)
    v = data["variants"][variant]
    edit(data, v)
    data["variants"] = {new_name: v}
    (tmp_path / f"{new_name.replace('/', '_')}.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_RECIPE_PATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(TINY))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    return tmp_path


def _resnet(tmp_path, name, edit):
    return _recipe_copy(tmp_path, ROOT / "recipes" / "resnet.yaml", "timm/resnet18", name, edit)


def test_correct_conversion_has_no_divergent_layer():
    result = diff_layers("timm/resnet18", input_size=SMALL)
    assert result["first_divergent"] is None
    assert len(result["rows"]) == 41   # every conv, bn and fc of resnet18, in execution order
    assert result["rows"][0]["torch"] == "conv1" and result["rows"][-1]["torch"] == "fc"


def test_fused_norm_activation_is_compared_before_its_activation():
    # timm's BatchNormAct2d applies SiLU inside the module; its Keras twin is the BN alone
    result = diff_layers("timm/efficientnet_b0", input_size=SMALL)
    fused = [r for r in result["rows"] if r["type"] == "BatchNormAct2d"]
    assert len(fused) > 10 and all(r["ok"] for r in fused)
    assert result["first_divergent"] is None


def test_transposed_kernel_in_one_block(recipes, request):
    conv = TRANSFORMS["conv2d"]
    # test-only transform: unregistered afterwards (the registry is global to the session)
    request.addfinalizer(lambda: TRANSFORMS.pop("conv2d_kernel_swapped", None))
    register(Transform("conv2d_kernel_swapped",
                       {"weight": ("kernel", lambda a, **_: a.transpose(3, 2, 1, 0)),
                        "bias": conv.leaves["bias"]}, "test only: kh/kw swapped"))

    def edit(data, v):
        data["mapping"].insert(0, {"torch": r"layer3\.1\.conv1", "keras": "stage3_block1_conv1",
                                   "transform": "conv2d_kernel_swapped"})
    _resnet(recipes, "test/kernel_swapped", edit)
    first = diff_layers("test/kernel_swapped", input_size=SMALL)["first_divergent"]
    assert (first["torch"], first["keras"]) == ("layer3.1.conv1", "stage3_block1_conv1")
    assert any("transposed kernel" in d for d in first["diagnosis"])


def test_batchnorm_eps(recipes):
    def edit(data, v):
        v["keras"]["builder"] = "python:diff_fixtures:resnet_bn_eps"
    _resnet(recipes, "test/bn_eps", edit)
    first = diff_layers("test/bn_eps", input_size=SMALL)["first_divergent"]
    assert (first["torch"], first["keras"]) == ("layer2.0.bn1", "stage2_block0_bn1")
    assert first["diagnosis"] == ["wrong eps: keras uses 0.001, torch 1e-05"]
    # convert() stops earlier, at the mapping's hyper-parameter check, naming the same layer
    with pytest.raises(zoo.MappingError, match="layer2.0.bn1.*stage2_block0_bn1.*eps 1e-05"):
        zoo.convert("test/bn_eps", input_size=SMALL)


def test_same_padding_on_a_strided_conv(recipes):
    def edit(data, v):
        v["keras"]["builder"] = "python:diff_fixtures:resnet_same_padding"
    _resnet(recipes, "test/same_pad", edit)
    first = diff_layers("test/same_pad", input_size=SMALL)["first_divergent"]
    assert (first["torch"], first["keras"]) == ("layer3.0.conv1", "stage3_block0_conv1")
    assert any("TF 'same'" in d for d in first["diagnosis"])
    # and convert() runs the diff itself when validation fails, into the report and the error
    with pytest.raises(zoo.ValidationError, match="first divergent layer: torch 'layer3.0.conv1'") as e:
        zoo.convert("test/same_pad", input_size=SMALL)
    assert e.value.report["diff"]["first_divergent"]["keras"] == "stage3_block0_conv1"


def test_tanh_gelu_instead_of_exact(recipes):
    def edit(data, v):
        v["keras"]["kwargs"] = {"gelu_approximate": True}
        v["tolerance"] = 1e-5
    _recipe_copy(recipes, TINY / "recipes" / "tinynet.yaml", "example/tinynet", "test/tanh_gelu",
                 edit)
    first = diff_layers("test/tanh_gelu")["first_divergent"]
    # the GELU has no weights: the first compared layer after it shows the difference
    assert (first["torch"], first["keras"]) == ("blocks.0.pw", "block0_pw")
    assert "its input already differs" in first["where"]
    assert first["diagnosis"] == ["wrong activation: torch applies gelu (exact), "
                                  "keras gelu (tanh approximation)"]


def test_cli_prints_the_table_and_writes_json(tmp_path):
    proc = run_script("diff_layers.py", "torchvision/resnet18", "--input-size", SMALL, "--json",
                      tmp_path / "d.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every layer agrees" in proc.stdout and "layer4.1.bn2" in proc.stdout
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert all(np.isfinite(r["max_rel"]) and r["ok"] for r in rows)
