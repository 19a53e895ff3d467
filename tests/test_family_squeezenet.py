"""SqueezeNet 1.0 / 1.1 (recipes/squeezenet.yaml, zoo/models/squeezenet.py:squeezenet): the
ceil_mode and Fire concat-order pitfalls.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import numpy as np

import zoo.models.squeezenet as squeezenet_module
from helpers import mapped, random_input, rel, torch_nhwc

TOL = 1e-4


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
