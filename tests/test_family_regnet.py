"""RegNet family (recipes/regnet.yaml, zoo/models/regnet.py:regnet): one test per pitfall
of the family, the recipe's widths against the sources'.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import pytest

import zoo
from helpers import mapped
from zoo.catalog import get_variant
from zoo.conversion.sources import build_source


def test_squeeze_excite_width_follows_the_block_input():
    """Pitfall: RegNet-Y's SE bottleneck is round(0.25 * block *input* width) in both sources,
    not 0.25 * the width it gates (they differ in the first block of every stage). The mapping
    would refuse a wrong width (shape mismatch); here the widths are read off the torch model
    (tests/test_catalogue.py runs both sources' RegNet-Y, SE path included, against torch)."""
    module, model = mapped("timm/regnety_004")
    for name, sub in module.named_modules():
        if name.endswith(".se"):
            s, b = name.split(".")[:2]          # s2.b1 -> stage2_block1
            keras_fc1 = model.get_layer(f"stage{s[1:]}_block{b[1:]}_se_fc1")
            assert keras_fc1.filters == sub.fc1.out_channels, name
    first = model.get_layer("stage2_block1_se_fc1")
    assert first.filters == 12 and first.filters != int(round(0.25 * 104))   # in 48, out 104


def test_pitfall_group_width_is_checked():
    """Pitfall: the 3x3 conv is grouped (groups = width / group width). A wrong group width
    gives kernels of another shape and other groups; the engine reports both instead of mapping."""
    with pytest.raises(zoo.MappingError) as e:
        mapped("timm/regnetx_002", group_width=4)
    msg = str(e.value)
    assert "groups 3 != keras groups 6" in msg          # stage 1: 24 / 8 vs 24 / 4
    assert "shape mismatch" in msg and "s1.b1.conv2.conv.weight" in msg


@pytest.mark.parametrize("name", ["timm/regnetx_002", "timm/regnety_004", "timm/regnety_016",
                                  "torchvision/regnet_x_400mf", "torchvision/regnet_y_400mf"])
def test_recipe_widths_match_the_source(name):
    """The recipe passes per-stage widths/depths/group width explicitly; they must be what the
    source generates from its (w0, wa, wm, depth) parameters."""
    variant, _ = get_variant(name)
    kw = variant.builder_kwargs
    module = build_source(variant.source)
    if variant.source_kind == "timm":
        stages = [getattr(module, f"s{i}") for i in range(1, 5)]
        blocks = [list(s.children()) for s in stages]
        conv2 = [b[0].conv2.conv for b in blocks]
        assert [len(b) for b in blocks] == kw["depths"]
    else:
        blocks = [list(s.children()) for s in module.trunk_output]
        conv2 = [b[0].f.b[0] for b in blocks]
        assert [len(b) for b in blocks] == kw["depths"]
    assert [c.out_channels for c in conv2] == kw["widths"]
    assert [c.out_channels // c.groups for c in conv2] == [kw["group_width"]] * 4
