"""CSPNet family (recipes/cspnet.yaml, zoo/models/cspnet.py:cspnet): parity of CSPResNet-50 and
CSPDarkNet-53, odd non-square inputs, and one test per pitfall of the family (cross-stage split
and concatenation order, max-pool padding after a LeakyReLU)."""
import pytest

from helpers import (
    SMALL,
    assert_features_match,
    assert_small_parity,
    build,
    parity_at,
    random_input,
    rebuilt,
    rel_err,
)
from zoo.models import cspnet as cspnet_module

TOL = 1e-4
VARIANTS = ["timm/cspresnet50", "timm/cspdarknet53"]


@pytest.mark.parametrize("name", VARIANTS)
def test_parity_small(name, converted_small):
    parity = assert_small_parity(converted_small(name)[1], 5 if "darknet" in name else 4, TOL)
    print(f"{name} @ {SMALL}: max_rel {parity['max_rel']:.2e}")


@pytest.mark.parametrize("name", VARIANTS)
def test_odd_non_square_size(name):
    # 75 x 93: odd and even sizes at every stride-2 conv (3x3, symmetric padding 1) and at
    # CSPResNet's stem pool.
    err = parity_at(name, 75, 93, input_size=SMALL)
    assert err < TOL, err


def _swapped_merge(xs, xb, name):
    import keras

    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([xb, xs])


def _swapped_split(x, name):
    from zoo.layers.shuffle import ChannelSplit

    xs, xb = ChannelSplit(2, name=f"{name}_split")(x)
    return xb, xs


@pytest.mark.parametrize("patch", [("_merge", _swapped_merge), ("_split", _swapped_split)],
                         ids=["concat_order", "split_halves"])
def test_pitfall_cross_stage_split_and_concat_order(patch, converted_small, torch_model, monkeypatch):
    """timm: `xs, xb = x.split(exp // 2, dim=1)`, blocks on xb (the second half), then
    `cat([xs, xb], dim=1)`. Both halves have the same width, so a swapped concatenation or a
    swapped split keeps every shape and maps cleanly; only the numbers are wrong."""
    name = "timm/cspresnet50"
    full, _ = converted_small(name)   # matches torch: test_parity_small
    monkeypatch.setattr(cspnet_module, *patch)
    assert rel_err(torch_model(name), rebuilt(full, name)) > 100 * TOL


def test_pitfall_stem_max_pool_after_leaky_relu_needs_minus_inf_padding(converted_small,
                                                                        torch_model, monkeypatch):
    """CSPResNet's stem pool follows a LeakyReLU, not a ReLU: its input is signed, so the
    "zero padding is safe after an activation" shortcut does not hold; torch pads with -inf.
    With slope 0.01 the negatives are small: zero padding moves the pooled map by ~2e-3
    (relative) but the logits by < 1e-4 only, which is why validation compares every stage
    output too (stage1 is off by ~1e-3)."""
    import keras

    def zero_padded_pool(pool, stride, padding, name):
        def apply(x):
            x = keras.layers.ZeroPadding2D(padding, name=f"{name}_zero_pad")(x)
            return keras.layers.MaxPooling2D(pool, stride, name=name)(x)
        return apply

    name = "timm/cspresnet50"
    full, _ = converted_small(name)
    module = torch_model(name)
    pool = ("stem.pool", "stem_pool")
    assert rel_err(module, full, 67, 67, feature=pool) < TOL
    monkeypatch.setattr(cspnet_module, "TorchMaxPool2D", zero_padded_pool)
    wrong = rebuilt(full, name)
    assert rel_err(module, wrong, 67, 67, feature=pool) > 10 * TOL
    assert rel_err(module, wrong, 67, 67, feature=("stages.0", "stage1")) > 5 * TOL


def test_features_only_gives_one_output_per_stage(converted_small):
    full, _ = converted_small("timm/cspdarknet53")
    feats = build("timm/cspdarknet53", features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [64, 128, 256, 512, 1024]
    outs = assert_features_match(feats, full, random_input(n=1, seed=5), 5)
    assert [o.shape[1] for o in outs] == [32, 16, 8, 4, 2]   # stride-1 stem: strides 2 ... 32
