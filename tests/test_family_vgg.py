"""VGG family (recipes/vgg.yaml, zoo/models/vgg.py:vgg): VGG-11 (the smallest; every VGG is
~130M parameters, so only this one is converted here, at 32x32 where the features are 1x1 and the
adaptive pool replicates them to 7x7) at a size where the adaptive pool's bins overlap, and the
flatten-order pitfall.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""

from helpers import assert_plain_linear_breaks_only_the_logits, assert_same_logits, random_input

TOL = 1e-4
NAME = "torchvision/vgg11"
SIZE = 32   # torchvision's minimum for VGG


def test_odd_non_square_size_through_the_adaptive_pool(converted_small, torch_model):
    """97 x 113 -> 3 x 3 features: AdaptiveAvgPool2d((7, 7)) has overlapping bins there, which
    torch accepts; the Keras model must give the same logits (the same perturbed weights are
    rebuilt from the fixed seed)."""
    model, _ = converted_small(NAME, SIZE)
    assert_same_logits(model, torch_model(NAME), random_input(97, 113, seed=3), TOL,
                       "stage5", (2, 3, 3, 512))


def test_pitfall_linear_after_flatten(tmp_path, monkeypatch):
    """A copy of the recipe that maps classifier.0 with plain `linear`: the shapes fit (25088 x
    4096 either way), so only the numbers can tell. torch flattens (C, H, W), Keras (H, W, C):
    every stage matches and the logits are wrong. Even at 32x32, where the 7x7 grid holds one
    value per channel, the rows pair features with the wrong weights."""
    assert_plain_linear_breaks_only_the_logits(tmp_path, monkeypatch, "vgg", NAME,
                                               r"classifier\.0", SIZE, TOL)
