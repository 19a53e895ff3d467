"""Channel split and channel shuffle (ShuffleNet) on NHWC tensors.

torchvision writes both for NCHW: `x.chunk(2, dim=1)` and
`x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)`. Ported literally to an NHWC
tensor, that view mixes channels with rows and columns; the channel axis is the last one here.
"""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class ChannelShuffle(keras.layers.Layer):
    """torchvision `channel_shuffle(x, groups)` for NHWC input.

    Torch output channel `j * groups + i` is input channel `i * (C // groups) + j`. On the last
    axis that is: split C into (groups, C // groups), swap the two, flatten again.
    """

    def __init__(self, groups, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups!r}")

    def build(self, input_shape):
        c = input_shape[-1]
        if c is not None and c % self.groups:
            raise ValueError(f"{c} channels cannot be shuffled in {self.groups} groups")

    def call(self, x):
        shape = ops.shape(x)
        c = x.shape[-1]   # static: known when the layer is built
        y = ops.reshape(x, (shape[0], shape[1], shape[2], self.groups, c // self.groups))
        y = ops.transpose(y, (0, 1, 2, 4, 3))
        return ops.reshape(y, (shape[0], shape[1], shape[2], c))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="zoo")
class ChannelSplit(keras.layers.Layer):
    """`x.chunk(sections, dim=1)` for NHWC input: equal slices of the last axis, in order."""

    def __init__(self, sections=2, **kwargs):
        super().__init__(**kwargs)
        self.sections = int(sections)
        if self.sections < 1:
            raise ValueError(f"sections must be >= 1, got {sections!r}")

    def build(self, input_shape):
        c = input_shape[-1]
        if c is not None and c % self.sections:
            # torch.chunk would return unequal pieces; no ShuffleNet needs that
            raise ValueError(f"{c} channels cannot be split into {self.sections} equal parts")

    def call(self, x):
        return ops.split(x, self.sections, axis=-1)

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        part = None if c is None else c // self.sections
        return [(*input_shape[:-1], part) for _ in range(self.sections)]

    def get_config(self):
        return {**super().get_config(), "sections": self.sections}
