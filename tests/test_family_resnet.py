"""ResNet family (recipes/resnet.yaml, zoo/models/resnet.py:resnet): one test per pitfall of the
family, each showing the wrong way failing next to the right way passing.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import re

import pytest

import zoo
import zoo.models.resnet as resnet_module
from helpers import assert_init_hides_swapped_blocks, build, mapped_onto, plan_for, rebuilt, rel_err

TOL = 1e-4
RESNET_D = "timm/resnet50d"
# 67 -> stem 34 -> pool 17 -> 9 -> 5 -> 3: every ResNet-D shortcut pool sees an odd size, where
# its partial last window (ceil_mode) is averaged over the real pixels only
ODD = 67


def test_pitfall_zero_init_last_bn_hides_mapping_bugs(tmp_path, monkeypatch):
    """timm zero-initialises the last BN of every block (zero_init_last): each residual branch
    outputs 0 at init, so a wrong mapping inside a block is invisible with default weights (here
    layer1's first convs of blocks 0 and 1 swapped). Only because the pipeline perturbs every
    parameter, those BN weights too, does validation catch it."""
    import timm

    gammas = [b.bn2.weight for b in timm.create_model("resnet18").layer1]
    assert all(float(g.abs().max()) == 0.0 for g in gammas)   # the premise: silent branches
    assert_init_hides_swapped_blocks(
        tmp_path, monkeypatch, "resnet", "resnet18",
        (r"layer1\.{}\.conv1", "stage1_block{}_conv1", "conv2d"), TOL)


@pytest.fixture(scope="module")
def resnet_d(torch_model):
    """(perturbed torch resnet50d, Keras model with its weights mapped)."""
    module = torch_model(RESNET_D)
    return module, mapped_onto(RESNET_D, module)


def test_pitfall_resnet_d_shortcut_avg_pools_before_its_1x1_conv(resnet_d):
    """ResNet-D downsamples the shortcut with AvgPool2d(2) and then an unstrided 1x1 conv; a
    plain ResNet shortcut (strided 1x1 conv) holds the same weights, maps cleanly and reads only
    every other pixel."""
    module, right = resnet_d
    stage2 = ("layer2", "stage2")
    assert rel_err(module, right, ODD, ODD, feature=stage2) < TOL
    assert rel_err(module, rebuilt(right, RESNET_D, avg_down=False), ODD, ODD,
                   feature=stage2) > 100 * TOL


def test_pitfall_resnet_d_shortcut_pool_excludes_padding(resnet_d, monkeypatch):
    """AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False): on an odd map the last window
    is partial and averaged over its real pixels. Zero-padding the map and pooling "valid"
    (count_include_pad=True) divides those windows by 4 instead of 2."""
    import keras

    pool_class = keras.layers.AveragePooling2D
    used = []

    def zero_padded_pool(pool_size, strides, padding, name):
        used.append(name)

        def apply(x):
            x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_zero_pad")(x)
            return pool_class(pool_size, strides, padding="valid", name=name)(x)
        return apply

    module, right = resnet_d
    monkeypatch.setattr(keras.layers, "AveragePooling2D", zero_padded_pool)
    wrong = rebuilt(right, RESNET_D)
    monkeypatch.undo()
    assert used, "the builder no longer pools the shortcut with keras.layers.AveragePooling2D"
    stage2 = ("layer2", "stage2")
    assert rel_err(module, right, ODD, ODD, feature=stage2) < TOL
    assert rel_err(module, wrong, ODD, ODD, feature=stage2) > 10 * TOL


def test_pitfall_resnet_d_downsample_indices_shift(tmp_path, monkeypatch):
    """In ResNet-D `downsample.0` is the pool, so the conv and BN are `downsample.1` and `.2`,
    not `.0` and `.1` as in every other ResNet. A table without that exception maps the conv
    onto the BN; the engine refuses it."""
    import timm

    from helpers import recipe_copy

    def one_rule_for_all(data):
        data["mapping"] = [r for r in data["mapping"] if "only" not in r]
        for rule in data["mapping"]:
            rule.pop("skip", None)

    name = "test/resnet50d_plain_downsample"
    recipe_copy(tmp_path, monkeypatch, "resnet", RESNET_D, name, one_rule_for_all)
    with pytest.raises(zoo.MappingError, match=r"downsample\.1"):
        plan_for(name, timm.create_model("resnet50d"), build(name))


def test_pitfall_stride_on_the_3x3_conv(torch_model, monkeypatch):
    """Both sources are ResNet v1.5: a downsampling bottleneck strides its 3x3 conv2. ResNet v1
    (Caffe, keras.applications.ResNet50) strides the 1x1 conv1 instead: the same weights fit,
    and the block sees a quarter of the pixels before its 3x3 conv."""
    name = "timm/resnet50"
    module = torch_model(name)
    right = mapped_onto(name, module)
    conv2d = resnet_module.conv2d

    def v1_conv2d(x, filters, kernel, stride=1, **kwargs):
        moved = re.fullmatch(r"stage[2-9]_block0_conv([12])", kwargs.get("name") or "")
        if moved:
            stride = 2 if moved[1] == "1" else 1
        return conv2d(x, filters, kernel, stride=stride, **kwargs)

    monkeypatch.setattr(resnet_module, "conv2d", v1_conv2d)
    wrong = rebuilt(right, name)
    stage2 = ("layer2", "stage2")
    assert rel_err(module, right, feature=stage2) < TOL
    assert rel_err(module, wrong, feature=stage2) > 100 * TOL
