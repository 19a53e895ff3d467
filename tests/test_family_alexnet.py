"""AlexNet (recipes/alexnet.yaml, zoo/models/alexnet.py:alexnet): an input size where the
adaptive pool's bins overlap, the flatten-order and stem-padding pitfalls.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import torch

from helpers import (
    SMALL,
    assert_plain_linear_breaks_only_the_logits,
    assert_same_logits,
    random_input,
    rel,
)

TOL = 1e-4
NAME = "torchvision/alexnet"


def test_odd_non_square_size_through_the_adaptive_pool(converted_small, torch_model):
    """151 x 173 -> 3 x 4 features, whose 6 x 6 adaptive bins overlap; an odd size also tests
    the symmetric padding of the 11x11/4 stem."""
    model, _ = converted_small(NAME)
    assert_same_logits(model, torch_model(NAME), random_input(151, 173, seed=3), TOL,
                       "stage3", (2, 3, 4, 256))


def test_pitfall_linear_after_flatten(tmp_path, monkeypatch):
    """classifier.1 mapped with plain `linear` (same shapes): the stages match, the logits do
    not, because torch flattens (C, H, W) and Keras (H, W, C)."""
    assert_plain_linear_breaks_only_the_logits(tmp_path, monkeypatch, "alexnet", NAME,
                                               r"classifier\.1", SMALL, TOL)


def test_pitfall_stem_needs_symmetric_padding(converted_small, torch_model):
    """Keras "same" for the 11x11/4 stem pads (k - s) = 7 pixels, torch pads 2 + 2: the output
    is shifted and even has another size (16 vs 15 at 64 px)."""
    import keras

    model, _ = converted_small(NAME)
    inp = keras.Input((None, None, 3))
    same = keras.layers.Conv2D(64, 11, strides=4, padding="same")
    out = same(inp)
    same.set_weights(model.get_layer("conv0").get_weights())
    x = random_input(n=1, seed=4)
    with torch.no_grad():
        ref = torch_model(NAME).features[0](torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    ref = ref.numpy().transpose(0, 2, 3, 1)
    wrong = keras.Model(inp, out).predict_on_batch(x)
    assert ref.shape[1:3] == (15, 15) and wrong.shape[1:3] == (16, 16)
    assert rel(wrong[:, 1:, 1:], ref) > 1e-2 and rel(wrong[:, :15, :15], ref) > 1e-2
    probe = keras.Model(model.inputs, model.get_layer("conv0").output)
    assert rel(probe.predict_on_batch(x), ref) < TOL
