"""Variables filed under another layer's path, for sources whose module boundaries differ from
the Keras layers'. The mapping engine maps one torch module onto one Keras layer path
(`<layer>/<variable>`), and `scripts/diff_layers.py` compares that module's output with that
layer's output. When a torch module owns parameters used by several Keras layers (timm Beit's
`blocks.<i>` holds both residual scales), or parameters used before the Keras layer that gives
its output (Beit's `attn` holds the q/v biases and the bias table; its output is the `proj`
Dense's), the layers file those variables under the path of the layer whose output is the
module's output: one rule maps them all and the diff compares the right tensors."""
from __future__ import annotations

import keras


def add_weight(layer, group, name, shape, initializer):
    """`layer.add_weight(name, shape, initializer)`, with the path `<group>/<name>` instead of
    `<layer.name>/<name>` when `group` is given. The layer still owns, saves and trains it."""
    if group is None:
        return layer.add_weight(name=name, shape=shape, initializer=initializer)
    # add_weight would open the layer's own name scope: create the variable in the group's
    # (override_parent="": an absolute path); the caller assigns it to the layer, which tracks it
    with keras.name_scope(group, override_parent=""):
        return keras.Variable(initializer, shape=shape, dtype=layer.variable_dtype, name=name)
