"""Checkpoints fine-tuned at another window size or resolution than the recipe's model
(zoo/conversion/geometry.py, the recipes' `geometry:`): small real timm Swin and BEiT
configurations in copies of their recipes, a checkpoint written here by timm's own model created
at that geometry, converted by zoo.convert, and compared with that timm model -- built by timm,
not by the code under test. ViT's position-embedding case: tests/test_family_vit.py."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import json
from pathlib import Path

import pytest
import torch

import zoo
from helpers import perturbed_params, random_input, recipe_copy, rel, torch_nhwc

TOL = 1e-4
SWIN = "timm/swin_tiny_patch4_window7_224"
BEIT = "timm/beit_base_patch16_224"
# two stages of width 16 (timm kwargs, then the Keras builder's names for the same)
SWIN_TORCH = dict(embed_dim=16, depths=[2, 2], num_heads=[2, 2])
SWIN_KERAS = dict(dim=16, depths=[2, 2], heads=[2, 2])
BEIT_TORCH = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
BEIT_KERAS = dict(img_size=32, patch=8, dim=32, depth=2, heads=4)


def _small_recipe(tmp_path, monkeypatch, recipe, variant, torch_kwargs, keras_kwargs, features,
                  inputs=None):
    """A copy of recipes/<recipe>.yaml whose only variant is `variant` made small; its name."""
    name = f"test/{recipe}_geometry"

    def edit(data):
        v = data["variants"][variant]
        v["torch"]["kwargs"] = {**(v["torch"].get("kwargs") or {}), **torch_kwargs}
        v["keras"]["kwargs"] = {**v["keras"]["kwargs"], **keras_kwargs}
        v["features"] = features
        if inputs:
            data["inputs"] = inputs

    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe_copy(folder, monkeypatch, recipe, variant, name, edit)
    return name


def _checkpoint(tmp_path, module):
    path = tmp_path / "finetuned.pth"
    torch.save(module.state_dict(), path)
    return path


def _assert_converted(report, x, ref, model):
    """Parity passed in the pipeline and on our own input; the folder alone rebuilds it."""
    assert report["parity"]["in_memory"]["passed"]
    assert rel(model(x), ref) < TOL
    assert rel(zoo.create_model(report["output_dir"])(x), ref) < TOL
    return json.loads((Path(report["output_dir"]) / "config.json").read_text())


@pytest.fixture
def swin(tmp_path, monkeypatch):
    """(catalogue name of a 2-stage Swin-T copy, timm's own model of it with 6 x 6 windows at
    48 px and 10 classes -- as timm's swin_base_patch4_window12_384 pairs window 12 with 384 --,
    perturbed, and its checkpoint file)."""
    import timm

    name = _small_recipe(tmp_path, monkeypatch, "swin", SWIN, SWIN_TORCH, SWIN_KERAS,
                         [["layers.0", "stage1"], ["layers.1", "stage2"]])
    src = timm.create_model(SWIN.split("/")[1], img_size=48, window_size=6, num_classes=10,
                            **SWIN_TORCH)
    src = perturbed_params(src, seed=1)
    return name, src, _checkpoint(tmp_path, src)


def test_swin_checkpoint_with_another_window(swin, tmp_path):
    """Its tables are ((2*6 - 1)^2, heads), not the recipe's window 7: both models are built with
    window 6 at 48 px (the smallest size whose coarsest stage is one whole window: 8 * 6), the
    conversion validates there, config.json records the geometry, and --resume knows the folder
    is up to date for that checkpoint (its validation size is the checkpoint's, not the
    recipe's 224)."""
    from zoo.batch import up_to_date

    name, src, ckpt = swin
    out = tmp_path / "out"
    model, report = zoo.convert(name, weights=str(ckpt), num_classes=10, out_dir=out)
    assert report["input_size"] == 48
    x = random_input(48, 48, seed=2)
    config = _assert_converted(report, x, torch_nhwc(src, x), model)
    assert config["builder_kwargs"]["window"] == 6 and config["builder_kwargs"]["img_size"] == 48
    geometry = config["weights"]["checkpoint"]["geometry"]
    assert geometry["tensor"] == "layers.0.blocks.0.attn.relative_position_bias_table"
    assert geometry["shape"] == [121, 2] and geometry["torch"] == {"window_size": 6, "img_size": 48}
    assert up_to_date(out, name, str(ckpt)) is not None
    assert up_to_date(out, name, str(ckpt), input_size=56) is None


def test_swin_checkpoint_with_another_window_at_another_input_size(swin):
    """--input-size only moves validation: the models keep the checkpoint's window and img_size
    (timm's dynamic_img_size pads each map to whole windows), at a size that needs padding."""
    import timm

    name, src, ckpt = swin
    _model, report = zoo.convert(name, weights=str(ckpt), num_classes=10, input_size=60)
    assert report["input_size"] == 60 and report["parity"]["in_memory"]["passed"]
    dynamic = timm.create_model(SWIN.split("/")[1], img_size=48, window_size=6, num_classes=10,
                                dynamic_img_size=True, **SWIN_TORCH)
    dynamic.load_state_dict(src.state_dict())
    x = random_input(60, 60, seed=3)
    assert rel(_model(x), torch_nhwc(dynamic.eval(), x)) < TOL


def test_table_that_fits_no_window_is_refused(swin, tmp_path):
    """A table whose row count is no (2w - 1)^2 is refused naming the tensor and its shape."""
    name, src, _ = swin
    state = src.state_dict()
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    state[key] = torch.zeros(170, 2)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(zoo.ZooError, match=rf"{key} \(170, 2\) fits no square window"):
        zoo.convert(name, weights=str(path), num_classes=10)


def test_mismatch_that_geometry_does_not_explain_is_listed(swin, tmp_path):
    """With the window read from the tables, what else differs is still reported by the
    checkpoint loader's precise message, and only that (the tables fit the rebuilt model)."""
    name, src, _ = swin
    state = src.state_dict()
    state["norm.weight"] = torch.ones(33)   # the last stage is 32 wide
    path = tmp_path / "wider_norm.pth"
    torch.save(state, path)
    with pytest.raises(zoo.ZooError) as e:
        zoo.convert(name, weights=str(path), num_classes=10)
    assert r"shape mismatches (1): norm.weight: checkpoint (33,) vs model (32,)" in str(e.value)
    assert "relative_position_bias_table" not in str(e.value)


def test_torchvision_swin_checkpoint_with_another_window_is_refused(tmp_path):
    """torchvision's swin_t hard-codes window_size [7, 7]: a checkpoint with 12 x 12 windows is
    refused in one line saying what to do (checked before the rest of the checkpoint is read:
    this one holds the telling table only)."""
    path = tmp_path / "window12.pth"
    key = "features.1.0.attn.relative_position_bias_table"
    torch.save({key: torch.zeros(23 * 23, 3)}, path)
    with pytest.raises(zoo.ZooError, match=rf"{key} \(529, 3\) is for window_size=12 .*python: "
                                           rf"source"):
        zoo.convert("torchvision/swin_t", weights=str(path))


def test_beit_checkpoint_at_another_resolution(tmp_path, monkeypatch):
    """A 2-block BEiT copy fixed at 32 px (a 4 x 4 grid); the checkpoint was fine-tuned at 48 px:
    its tables are ((2*6 - 1)^2 + 3, heads). Both models are built at img_size 48, the fixed
    input becomes 48 x 48, and config.json records both."""
    import timm

    name = _small_recipe(tmp_path, monkeypatch, "beit", BEIT, BEIT_TORCH, BEIT_KERAS,
                         [["blocks.0", "block0"], ["blocks.1", "block1"]],
                         inputs=[{"name": "image", "layout": "image", "shape": [3, 32, 32]}])
    src = timm.create_model(BEIT.split("/")[1], num_classes=10, **{**BEIT_TORCH, "img_size": 48})
    src = perturbed_params(src, seed=4)
    model, report = zoo.convert(name, weights=str(_checkpoint(tmp_path, src)), num_classes=10,
                                out_dir=tmp_path / "out")
    assert report["input_size"] == 48
    x = random_input(48, 48, seed=5)
    config = _assert_converted(report, x, torch_nhwc(src, x), model)
    assert config["builder_kwargs"]["img_size"] == 48
    assert config["inputs"][0]["shape"] == [3, 48, 48]
    assert config["weights"]["checkpoint"]["geometry"]["shape"] == [124, 4]


def test_beit_at_another_input_size_is_resized_as_timm_does(tmp_path, monkeypatch):
    """--input-size 48 for a BEiT whose recipe and checkpoint are at 32 px: both models are rebuilt
    at 48, the 4 x 4 grid's tables resized to 6 x 6 by timm's checkpoint filter; the reference is
    timm's own pretrained loading of that file into a model created at img_size 48."""
    import timm

    name = _small_recipe(tmp_path, monkeypatch, "beit", BEIT, BEIT_TORCH, BEIT_KERAS,
                         [["blocks.0", "block0"], ["blocks.1", "block1"]],
                         inputs=[{"name": "image", "layout": "image", "shape": [3, 32, 32]}])
    src = perturbed_params(timm.create_model(BEIT.split("/")[1], num_classes=10, **BEIT_TORCH), 6)
    ckpt = _checkpoint(tmp_path, src)
    model, report = zoo.convert(name, weights=str(ckpt), num_classes=10, input_size=48)
    assert report["input_size"] == 48 and report["parity"]["in_memory"]["passed"]
    assert any("resized to 48 px by timm's checkpoint filter" in w for w in report["warnings"])
    ref_model = timm.create_model(BEIT.split("/")[1], pretrained=True, num_classes=10,
                                  pretrained_cfg_overlay={"file": str(ckpt), "num_classes": 10},
                                  **{**BEIT_TORCH, "img_size": 48})
    x = random_input(48, 48, seed=7)
    assert rel(model(x), torch_nhwc(ref_model.eval(), x)) < TOL


def test_swin_v2_window_is_given_by_the_variant(tmp_path, monkeypatch):
    """A timm Swin V2 checkpoint has no window-sized tensor (its coordinate table and index are
    non-persistent buffers; the position MLP takes any window), so any window loads silently:
    the window comes from the recipe variant, and with it given (torch window_size, Keras
    window) a window-6 checkpoint converts and matches timm's window-6 model."""
    import timm

    name = _small_recipe(tmp_path, monkeypatch, "swin", "timm/swinv2_tiny_window8_256",
                         {**SWIN_TORCH, "window_size": 6, "img_size": 48},
                         {**SWIN_KERAS, "window": 6, "img_size": 48},
                         [["layers.0", "stage1"], ["layers.1", "stage2"]])
    src = timm.create_model("swinv2_tiny_window8_256", img_size=48, window_size=6,
                            num_classes=10, **SWIN_TORCH)
    src = perturbed_params(src, seed=8)
    window8 = timm.create_model("swinv2_tiny_window8_256", img_size=64, window_size=8,
                                num_classes=10, **SWIN_TORCH)
    assert not window8.load_state_dict(src.state_dict()).missing_keys   # nothing tells the window
    model, report = zoo.convert(name, weights=str(_checkpoint(tmp_path, src)), num_classes=10,
                                input_size=48)
    assert report["parity"]["in_memory"]["passed"]
    x = random_input(48, 48, seed=9)
    assert rel(model(x), torch_nhwc(src, x)) < TOL


def test_every_recipe_geometry_kind_has_a_reader():
    from zoo.conversion.geometry import KINDS
    from zoo.recipe import GEOMETRY_KINDS

    assert set(KINDS) == set(GEOMETRY_KINDS)


@pytest.mark.parametrize("geometry, message", [
    ({"tensor": "pos_embed", "kind": "grid"}, r"geometry\.kind: must be one of \['pos_embed'"),
    ({"tensor": "pos_embed"}, r"geometry: missing required key\(s\) \['kind'\]"),
    ({"tensor": "(", "kind": "pos_embed"}, r"geometry\.tensor: bad regular expression"),
])
def test_recipe_geometry_is_checked(tmp_path, geometry, message):
    """A recipe's `geometry:` is checked when it is loaded, naming the file and the problem."""
    import yaml

    from helpers import ROOT
    from zoo.recipe import load_recipe

    data = yaml.safe_load((ROOT / "recipes" / "vit.yaml").read_text())
    data["geometry"] = geometry
    path = tmp_path / "vit.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(zoo.RecipeError, match=rf"vit\.yaml: {message}"):
        load_recipe(path)
