"""Transformer blocks for the Keras builders (ViT, DeiT, ...), with the sources' semantics:
pre-norm residual blocks, LayerNorm eps given by the source (timm/torchvision ViT 1e-6, Keras'
default 1e-3), exact (erf) GELU, attention on one fused q/k/v Dense.

Token tensors are (B, N, C): Dense and LayerNormalization act on the last axis, as torch's
Linear and LayerNorm do, so no axis needs translating inside a block.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import keras

from zoo.layers import dense
from zoo.layers.attention import FusedQKVAttention
from zoo.layers.gelu import GELU, exact_gelu
from zoo.layers.layer_norm import LayerNormalization
from zoo.layers.layer_scale import LayerScale
from zoo.models.blocks import activation


def fixed_input_size(builder):
    """For a builder whose model runs at img_size x img_size only (weights laid out per patch
    position: BEiT's relative position bias, MLP-Mixer's token MLP): input_shape defaults to
    (img_size, img_size, 3), so `zoo.create_model(name)` needs no shape."""
    @functools.wraps(builder)
    def wrapped(*args, img_size=224, input_shape=None, **kwargs):
        shape = (img_size, img_size, 3) if input_shape is None else input_shape
        return builder(*args, img_size=img_size, input_shape=shape, **kwargs)
    return wrapped


def layer_norm(x, eps, name):
    # a LayerNormalization (same variables and config) with a cheaper TensorFlow graph
    return LayerNormalization(axis=-1, epsilon=eps, name=name)(x)


def patch_embed(x, dim, patch, name):
    """`Conv2d(C, dim, patch, stride=patch)` (no padding: a border smaller than a patch is
    dropped, as torch's floor does) -> (B, h, w, dim) patch grid."""
    return keras.layers.Conv2D(dim, patch, strides=patch, padding="valid", use_bias=True,
                               name=name)(x)


def mlp(x, hidden, name, names=("fc1", "act", "fc2"), act="gelu"):
    """Linear -> activation -> Linear (timm Mlp, torchvision MLPBlock); dropouts are identities
    at inference and left out. act: "gelu_tanh" (tanh-approximated GELU, the `_tf_` ports) or a
    name of blocks.activation (exact GELU by default; timm passes the network's own to some,
    e.g. SiLU in MobileViT). The exact GELU is fc1's own activation, which TensorFlow fuses into
    its matmul (zoo/layers/dense.py), so torch's `act` module has no Keras layer of its own then;
    other activations are the layer `<name>_act`."""
    fc1, act_name, fc2 = (f"{name}_{n}" for n in names)
    if act == "gelu":
        y = dense.Dense(hidden, activation=exact_gelu, name=fc1)(x)
    elif act == "gelu_tanh":
        y = GELU(approximate=True, name=act_name)(dense.Dense(hidden, name=fc1)(x))
    else:
        y = activation(dense.Dense(hidden, name=fc1)(x), act, act_name)
    return dense.Dense(x.shape[-1], name=fc2)(y)


def attention(x, heads, name, qkv_bias=True, names=("qkv", "attn", "proj"), core=None):
    """Self-attention: one Dense to (q|k|v, heads, head_dim) -> FusedQKVAttention -> Dense.
    core: another attention layer on the fused q/k/v, `core(name)` (BEiT's relative position
    bias and q/v biases)."""
    qkv, attn, proj = (f"{name}_{n}" for n in names)
    dim = x.shape[-1]
    if dim % heads:
        raise ValueError(f"{name}: width {dim} is not a multiple of {heads} heads")
    y = dense.Dense(3 * dim, use_bias=qkv_bias, name=qkv)(x)
    y = (core(attn) if core else FusedQKVAttention(heads, name=attn))(y)
    return dense.Dense(dim, name=proj)(y)


@dataclass(frozen=True)
class BlockNames:
    """Sub-layer names after `<block>_`, the source's modules (recipes map them)."""

    norm1: str = "norm1"
    attn: str = "attn"
    ls1: str = "ls1"
    norm2: str = "norm2"
    mlp: str = "mlp"
    ls2: str = "ls2"


def transformer_block(x, heads, mlp_ratio, *, name, eps=1e-6, qkv_bias=True, ls_init=None,
                      names=BlockNames(), act="gelu"):
    """Pre-norm block: x + [ls1] attn(norm1(x)); x + [ls2] mlp(norm2(x)) (timm Block,
    torchvision EncoderBlock). ls_init: layer scale (DINOv2, CaiT) with that initial value;
    None for none. act: the MLP's activation. Stochastic depth is an identity at inference and
    left out."""
    p = f"{name}_"
    y = attention(layer_norm(x, eps, p + names.norm1), heads, p + names.attn, qkv_bias)
    if ls_init is not None:
        y = LayerScale(ls_init, name=p + names.ls1)(y)
    x = keras.layers.Add(name=p + "add1")([x, y])
    y = mlp(layer_norm(x, eps, p + names.norm2), int(x.shape[-1] * mlp_ratio), p + names.mlp,
            act=act)
    if ls_init is not None:
        y = LayerScale(ls_init, name=p + names.ls2)(y)
    return keras.layers.Add(name=p + "add2")([x, y])
