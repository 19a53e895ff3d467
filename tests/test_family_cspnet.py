"""CSPNet family (recipes/cspnet.yaml, zoo/models/cspnet.py:cspnet): one test per pitfall of
the family (cross-stage split and concatenation order, max-pool padding after a LeakyReLU).
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import pytest

from helpers import rebuilt, rel_err
from zoo.models import cspnet as cspnet_module

TOL = 1e-4


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
    full, _ = converted_small(name)   # matches torch: tests/test_catalogue.py
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
