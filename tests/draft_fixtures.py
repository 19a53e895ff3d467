"""Tiny PyTorch models and Keras builders on which scripts/new_recipe.py cannot decide everything
from shapes and names (tests/test_new_recipe.py). Keras is imported inside the builders so that
importing this module as a torch source never brings TensorFlow in before torch."""
import torch
from torch import nn


class ChannelAffine(nn.Module):
    """A custom per-channel affine: 1-D weight and bias, neither LayerNorm nor GroupNorm."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class Swapped(nn.Module):
    """`left` is defined before `right` but runs after it; both are 8->8 3x3 convs."""

    def __init__(self, num_classes=4, in_chans=3):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 3, padding=1)
        self.affine = ChannelAffine(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.left(torch.relu(self.right(x))))
        return self.head(self.affine(x).mean((2, 3)))


def swapped(num_classes=4, in_chans=3):
    return Swapped(num_classes, in_chans)


class Deeper(nn.Module):
    """Two same-shaped convs where the Keras twin (`shallow_keras`) has only one."""

    def __init__(self, num_classes=4, in_chans=3):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.first = nn.Conv2d(8, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.second(torch.relu(self.first(x))))
        return self.head(x.mean((2, 3)))


def deeper(num_classes=4, in_chans=3):
    return Deeper(num_classes, in_chans)


def _affine_layer():
    import keras

    class KerasChannelAffine(keras.layers.Layer):
        def build(self, input_shape):
            self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="beta")

        def call(self, x):
            return x * self.gamma + self.beta

    return KerasChannelAffine


def swapped_keras(classes=4, input_shape=None, **_):
    """Keras twin of Swapped: conv_a is torch's `right` (it runs first), conv_b its `left`."""
    import keras

    inputs = keras.Input(tuple(input_shape or (None, None, 3)), name="pixels")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(x)
    x = _affine_layer()(name="scale")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x), name="swapped")


def shallow_keras(classes=4, input_shape=None, **_):
    """Keras model lacking one of Deeper's two 8->8 convs."""
    import keras

    inputs = keras.Input(tuple(input_shape or (None, None, 3)), name="pixels")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="mid")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x), name="shallow")


class Flat(nn.Module):
    """VGG-like: a `features` Sequential of conv/BN/ReLU (index-named, so the rules need
    `module_type`) and a Linear after a flatten of the NCHW map (`linear_after_flatten`, args)."""

    def __init__(self, num_classes=4, in_chans=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6),
                                      nn.ReLU())
        self.head = nn.Linear(6 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def flat(num_classes=4, in_chans=3):
    return Flat(num_classes, in_chans)


def flat_keras(classes=4, input_shape=None, **_):
    """Keras twin of Flat at a fixed 4x4 input (the Dense needs a known flatten size); layers
    carry the torch Sequential index (conv0, bn1, conv3, bn4) like the VGG builder's."""
    import keras

    inputs = keras.Input((4, 4, (input_shape or (None, None, 3))[-1]), name="pixels")
    x = inputs
    for i, width in ((0, 8), (3, 6)):
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 2}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x), name="flat")
