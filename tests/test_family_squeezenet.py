"""SqueezeNet 1.0 / 1.1 (recipes/squeezenet.yaml, zoo/models/squeezenet.py:squeezenet): parity
of both versions, odd non-square sizes, the ceil_mode and Fire concat-order pitfalls, and
multi-scale features."""
import numpy as np
import pytest

import zoo.models.squeezenet as squeezenet_module
from helpers import (
    SMALL,
    assert_features_match,
    assert_small_parity,
    mapped,
    parity_at,
    random_input,
    rel,
    torch_nhwc,
)

TOL = 1e-4
NAMES = ["torchvision/squeezenet1_0", "torchvision/squeezenet1_1"]


@pytest.mark.parametrize("name", NAMES)
def test_parity_small(name, converted_small):
    assert_small_parity(converted_small(name)[1], 4, TOL)


@pytest.mark.parametrize("name", NAMES)
def test_odd_non_square_size(name):
    # 67 x 81: the ceil-mode pools see both odd and even sizes (partial last windows).
    err = parity_at(name, 67, 81, input_size=SMALL)
    assert err < TOL, err


# ------------------------------------------------------------------ pitfalls

def test_pitfall_max_pool_needs_ceil_mode():
    """torchvision pools with MaxPool2d(3, 2, ceil_mode=True). Built with floor pooling the model
    is wrong wherever a pool sees an even size, and right only where every pool sees an odd one
    (63 -> 31 -> 15 -> 7 -> 3 in 1.1), so tests must use such sizes."""
    module, wrong = mapped("torchvision/squeezenet1_1", ceil_mode=False)
    rng = np.random.default_rng(0)
    for h, w in [(65, 65), (67, 81)]:   # 65 -> 32: even at the first pool
        x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        assert rel(wrong.predict_on_batch(x), torch_nhwc(module, x)) > 1e-2, (h, w)
    odd = rng.standard_normal((2, 63, 63, 3)).astype(np.float32)
    assert rel(wrong.predict_on_batch(odd), torch_nhwc(module, odd)) < TOL


def test_pitfall_fire_concat_order(monkeypatch):
    """torch.cat([expand1x1, expand3x3], 1): with the branches concatenated the other way round
    every shape still fits (both have `expand` channels) and the mapping is accepted, but the
    next layer pairs its weights with the wrong channels."""
    import keras

    def swapped_fire(x, squeeze, expand, name):
        s = keras.layers.ReLU()(keras.layers.Conv2D(squeeze, 1, name=f"{name}_squeeze")(x))
        e1 = keras.layers.ReLU()(keras.layers.Conv2D(expand, 1, name=f"{name}_expand1x1")(s))
        e3 = keras.layers.ReLU()(keras.layers.Conv2D(expand, 3, padding="same",
                                                     name=f"{name}_expand3x3")(s))
        return keras.layers.Concatenate(axis=-1)([e3, e1])

    monkeypatch.setattr(squeezenet_module, "fire", swapped_fire)
    module, wrong = mapped("torchvision/squeezenet1_1")
    x = random_input(seed=1)
    assert rel(wrong.predict_on_batch(x), torch_nhwc(module, x)) > 1e-2


def test_features_only_and_headless(converted_small):
    from zoo.models.squeezenet import squeezenet

    full, _ = converted_small("torchvision/squeezenet1_0")
    feats = squeezenet("1_0", features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [96, 256, 512, 512]
    outs = assert_features_match(feats, full, random_input(n=1, seed=5), 4)
    assert [o.shape[1] for o in outs] == [29, 14, 7, 3]   # strides 2, 4, 8, 16 (ceil mode: 14 -> 7)
    assert squeezenet("1_1", include_top=False, pooling="avg").output.shape == (None, 512)
    probs = squeezenet("1_1", classes=7, classifier_activation="softmax").output
    assert probs.shape == (None, 7)
