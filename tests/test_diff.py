"""scripts/diff_layers.py: with one deliberate mistake in a recipe or builder, the tool must name
the exact layer where the outputs start to diverge, and what kind of mistake fits."""
import json

import numpy as np
import pytest
import yaml

import zoo
from helpers import ROOT, SMALL, run_script
from zoo.conversion.diff import diff_layers, format_diff
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


def test_failed_conversion_of_a_checkpoint_diffs_that_checkpoint(recipes, tmp_path,
                                                                monkeypatch):
    """convert() frees the torch model before the Keras validation, and a parity failure loads it
    again for the layer diff: from a checkpoint, the diff still blames the layer at fault, and a
    checkpoint rewritten meanwhile is named instead of diffed."""
    import torch

    from zoo.catalog import get_variant
    from zoo.conversion import pipeline
    from zoo.conversion.sources import load_torch_model

    def edit(data, v):
        v["keras"]["builder"] = "python:diff_fixtures:resnet_same_padding"
    _resnet(recipes, "test/same_pad", edit)
    variant, tag = get_variant("timm/resnet18")

    def scaled(state, factor):   # BN variances stay positive
        return {k: v * factor if v.is_floating_point() else v for k, v in state.items()}
    # perturbed, and not the weights `random` gives: a reload that fell back to those would
    # diverge at the first layer
    state = scaled(load_torch_model(variant, tag, "random").module.state_dict(), 1.05)
    ckpt = tmp_path / "finetuned.pth"
    torch.save(state, ckpt)
    with pytest.raises(zoo.ValidationError, match="first divergent layer") as e:
        zoo.convert("test/same_pad", weights=str(ckpt), input_size=SMALL)
    assert e.value.report["weights"]["source"] == "checkpoint"
    assert e.value.report["diff"]["first_divergent"]["keras"] == "stage3_block0_conv1"

    class Rewritten(pipeline.KerasProbe):
        def __call__(self, inputs):   # a training job saves the next epoch meanwhile
            torch.save(scaled(state, 1.01), ckpt)
            return super().__call__(inputs)
    monkeypatch.setattr(pipeline, "KerasProbe", Rewritten)
    with pytest.raises(zoo.ValidationError, match=r"parity failed.*no layer diff: .*finetuned"
                                                  r"\.pth changed during the conversion") as e:
        zoo.convert("test/same_pad", weights=str(ckpt), input_size=SMALL)
    assert e.value.report["diff"] is None


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


def _small_swin(recipes, name, edit=lambda data, v: None):
    """A 2-stage timm Swin (16 channels, window 4) with the catalogue recipe's rules."""
    def small(data, v):
        v["torch"]["kwargs"] = {"dynamic_img_size": True, "embed_dim": 16, "depths": [2, 2],
                                "num_heads": [2, 2], "window_size": 4, "img_size": 32,
                                "num_classes": 10}
        v["keras"]["kwargs"] = {"depths": [2, 2], "heads": [2, 2], "dim": 16, "window": 4,
                                "img_size": 32}
        v["features"] = [["layers.0", "stage1"], ["layers.1", "stage2"]]
        edit(data, v)
    _recipe_copy(recipes, ROOT / "recipes" / "swin.yaml", "timm/swin_tiny_patch4_window7_224",
                 name, small)


def test_swin_within_tolerance_has_no_divergent_layer(recipes):
    """timm Swin permutes to NHWC after its patch-embedding conv (`feature_layout: tensor`), runs
    its attention and MLP on merged axes ((B*windows, N, C), (B, H*W, C)), and its `attn` module,
    which owns the bias table, ends with `proj`. At 40 px the maps pad to whole windows."""
    _small_swin(recipes, "test/swin")
    result = diff_layers("test/swin", input_size=40)
    assert result["first_divergent"] is None, format_diff(result)
    rows = {r["torch"]: r for r in result["rows"]}
    assert rows["patch_embed.proj"]["input_max_rel"] == 0.0   # the image, NCHW in torch
    # the attention core: between qkv and proj in the table, compared with proj's torch input
    names = [r["torch"] for r in result["rows"]]
    attn = names.index("layers.1.blocks.1.attn")
    assert names[attn - 1:attn + 2] == ["layers.1.blocks.1.attn.qkv", "layers.1.blocks.1.attn",
                                        "layers.1.blocks.1.attn.proj"]
    assert rows["layers.1.blocks.1.attn"]["torch_tensor"] == "the input of layers.1.blocks.1.attn.proj"
    assert len(rows) == 34 and all(r["ok"] for r in rows.values())


def test_swin_wrong_position_bias_is_named(recipes, request):
    """The bias table's rows reversed (the offset sign) in one block: the attention core of that
    block is named, with its input (the qkv output) agreeing."""
    request.addfinalizer(lambda: TRANSFORMS.pop("bias_table_reversed", None))
    register(Transform("bias_table_reversed", {"relative_position_bias_table": (
        "relative_position_bias_table", lambda a, **_: a[::-1].copy())}, "test only"))

    def edit(data, v):
        data["mapping"].insert(0, {"torch": r"layers\.1\.blocks\.0\.attn",
                                   "keras": "stage2_block0_attn", "transform": "bias_table_reversed"})
    _small_swin(recipes, "test/swin_bias", edit)
    first = diff_layers("test/swin_bias", input_size=40)["first_divergent"]
    assert (first["torch"], first["keras"]) == ("layers.1.blocks.0.attn", "stage2_block0_attn")
    assert "its input agrees" in first["where"]


def test_cli_prints_the_table_and_writes_json(tmp_path):
    proc = run_script("diff_layers.py", "torchvision/resnet18", "--input-size", SMALL, "--json",
                      tmp_path / "d.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every layer agrees" in proc.stdout and "layer4.1.bn2" in proc.stdout
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert all(np.isfinite(r["max_rel"]) and r["ok"] for r in rows)


# ---------------------------------------------------------------- models that are not classifiers

def _user_recipes(folder, edits=None):
    """tests/io_models.py's recipes in `folder`, plus edited copies {key: (name, edit)}."""
    from io_models import RECIPES

    for key, text in RECIPES.items():
        (folder / f"{key}.yaml").write_text(text)
    for key, (name, edit) in (edits or {}).items():
        data = yaml.safe_load(RECIPES[key])
        (variant,) = data["variants"].values()
        edit(data, variant)
        data["family"], data["variants"] = name.replace("/", "_"), {name: variant}
        (folder / f"{name.replace('/', '_')}.yaml").write_text(yaml.safe_dump(data))


def test_flatten_order_is_found_from_the_values():
    from zoo.conversion.flatten_order import find, keras_permute

    maps = np.random.default_rng(0).standard_normal((2, 4, 3, 5))
    t = torch_permuted_flatten(maps, (0, 3, 2, 1))     # torch: x.permute(0, 3, 2, 1).flatten(1)
    assert find(maps, t)["orders"] == [("W", "H", "C")]
    assert find(maps, maps.reshape(2, -1))["orders"] == [("C", "H", "W")]
    # an activation between the map and the flatten: no exact order, the monotone one is found
    assert find(maps, np.maximum(t, 0))["orders"] == [("W", "H", "C")]
    assert keras_permute(("W", "H", "C")) == (2, 1, 3)   # NHWC -> NWHC, as the landmarks builder


def torch_permuted_flatten(maps, dims):
    import torch

    return torch.from_numpy(maps).permute(*dims).flatten(1).numpy()


def test_fused_softmax_is_compared_with_the_torch_softmax_module(recipes):
    """The Keras Dense(activation='softmax') replaces torch's Linear + nn.Softmax: no divergence."""
    _user_recipes(recipes)
    result = diff_layers("user/landmarks")
    assert result["first_divergent"] is None, format_diff(result)
    row = next(r for r in result["rows"] if r["torch"] == "dense6_1")
    assert row["fused"] == {"keras": "softmax", "torch": "softmax"} and row["max_rel"] < 1e-5
    # torch.relu called in forward() (no module) before a Conv1D(activation='relu') too
    audio = diff_layers("user/audio")
    assert audio["first_divergent"] is None, format_diff(audio)
    assert next(r for r in audio["rows"] if r["torch"] == "conv1")["fused"]["torch"] == "relu"


def test_flatten_order_mistake_is_named(recipes):
    """The Keras builder lacks the landmarks model's Permute before Flatten: parity fails, and the
    diff names dense5 and the two flatten orders."""
    def no_permute(data, v):
        v["keras"]["builder"] = "python:diff_fixtures:landmarks_no_permute"
    _user_recipes(recipes, {"landmarks": ("user/no_permute", no_permute)})
    with pytest.raises(zoo.ValidationError):
        zoo.convert("user/no_permute")
    first = diff_layers("user/no_permute")["first_divergent"]
    assert (first["torch"], first["keras"]) == ("dense5", "dense5")
    assert "its input already differs" in first["where"]
    assert first["diagnosis"][0].startswith(
        "flatten order: torch flattens (W, H, C), the Keras model (H, W, C): add "
        "keras.layers.Permute((2, 1, 3)) before the Flatten")


def test_wrong_mapping_in_a_1d_model_is_located(recipes, request):
    """A conv1d transform that reverses the kernel taps of one layer of the audio model."""
    conv1d = TRANSFORMS["conv1d"]
    kernel_name, kernel_fn = conv1d.leaves["weight"]
    request.addfinalizer(lambda: TRANSFORMS.pop("conv1d_reversed", None))
    register(Transform("conv1d_reversed",
                       {"weight": (kernel_name, lambda a, **kw: kernel_fn(a, **kw)[::-1].copy()),
                        "bias": conv1d.leaves["bias"]}, "test only: kernel taps reversed"))

    def reversed_conv2(data, v):
        data["mapping"].insert(0, {"torch": "conv2", "keras": "conv2",
                                   "transform": "conv1d_reversed"})
    _user_recipes(recipes, {"audio": ("user/audio_reversed", reversed_conv2)})
    first = diff_layers("user/audio_reversed")["first_divergent"]
    assert (first["torch"], first["keras"]) == ("conv2", "conv2")
    assert "its input agrees" in first["where"]
    assert first["diagnosis"] == ["kernel taps reversed (the kernel's length axis flipped)"]
