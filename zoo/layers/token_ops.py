"""Token layers of BEiT and MLP-Mixer style models: a learned class token in front of the
patches, a residual add through a per-channel layer scale, and the mean of the patch tokens."""
from __future__ import annotations

import keras
from keras import ops

from zoo.layers.grouping import add_weight


@keras.saving.register_keras_serializable(package="zoo")
class ClassToken(keras.layers.Layer):
    """Patch grid (B, h, w, C) -> (B, 1 + h*w, C): timm's `cls_token` (1, 1, C) in front of the
    row-major patches, with no absolute position embedding (BEiT's `use_abs_pos_emb=False`: its
    positions are the relative bias inside each attention)."""

    def build(self, input_shape):
        self.cls_token = self.add_weight(name="cls_token", shape=(1, 1, input_shape[-1]),
                                         initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, x):
        shape = ops.shape(x)
        patches = ops.reshape(x, (shape[0], -1, x.shape[-1]))
        return ops.concatenate(
            [ops.broadcast_to(self.cls_token, (shape[0], 1, x.shape[-1])), patches], axis=1)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None or w is None else h * w + 1, c)


@keras.saving.register_keras_serializable(package="zoo")
class ScaledResidual(keras.layers.Layer):
    """[x, y] -> x + gamma * y, gamma one learned scale per channel (timm Beit's `gamma_1` /
    `gamma_2`, initialised to `init_value`).

    timm keeps both scales of a block on the block module itself (`blocks.<i>.gamma_1`,
    `.gamma_2`): the two residual adds file their variables under `group` (the block's
    FeatureStage, whose output is that module's output), `<group>/gamma_1` and `<group>/gamma_2`,
    so one rule maps both (zoo.layers.grouping).
    """

    def __init__(self, init_value, variable="gamma", group=None, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)
        self.variable = variable
        self.group = group

    def build(self, input_shape):
        self.gamma = add_weight(self, self.group, self.variable, (input_shape[0][-1],),
                                keras.initializers.Constant(self.init_value))

    def call(self, inputs):
        x, y = inputs
        return x + self.gamma * y

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value,
                "variable": self.variable, "group": self.group}


@keras.saving.register_keras_serializable(package="zoo")
class PatchTokenMean(keras.layers.Layer):
    """(B, N, C) -> (B, C): the mean over the tokens after the first `num_prefix` (timm's
    global_pool="avg": `x[:, num_prefix_tokens:].mean(dim=1)`; BEiT skips its class token,
    MLP-Mixer has none)."""

    def __init__(self, num_prefix=1, **kwargs):
        super().__init__(**kwargs)
        self.num_prefix = int(num_prefix)

    def call(self, x):
        return ops.mean(x[:, self.num_prefix:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "num_prefix": self.num_prefix}
