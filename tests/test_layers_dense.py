"""zoo's fast drop-ins for Keras layers (zoo/layers/dense.py, zoo/layers/layer_norm.py): the
same function as torch's nn.Linear / 1x1 nn.Conv2d (+ nn.GELU) / nn.LayerNorm, the same
.weights.h5 layout as the Keras layers they replace (a file from a model built with plain Keras
layers -- as every zoo model was before them -- loads into the fast model and back), and
TFLite builtins only."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch
from torch import nn

import zoo
from helpers import rel
from zoo.layers import dense
from zoo.layers.gelu import exact_gelu
from zoo.layers.layer_norm import LayerNormalization
from zoo.models import blocks_transformer, convnext

RNG = np.random.default_rng(5)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(4, 24), (2, 7, 24), (2, 5, 3, 24)])
@pytest.mark.parametrize("gelu", [False, True])
def test_dense_is_torch_linear_on_any_leading_axes(shape, gelu):
    torch.manual_seed(0)
    linear = nn.Linear(24, 40)
    layer = dense.Dense(40, activation=exact_gelu if gelu else None)
    layer.build(shape)
    layer.set_weights([linear.weight.detach().numpy().T, linear.bias.detach().numpy()])
    x = _rand(*shape)
    with torch.no_grad():
        ref = linear(torch.from_numpy(x))
        ref = nn.GELU()(ref) if gelu else ref
    got = keras.ops.convert_to_numpy(layer(x))
    assert got.shape == shape[:-1] + (40,)
    assert rel(got, ref.numpy()) < 1e-6


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (1, 2)])
def test_conv2d_is_torch_conv_and_a_matmul_only_when_1x1(kernel, stride):
    """The 1x1 stride-1 case runs as a matmul; any other takes Keras' convolution: both are
    torch's Conv2d (+ GELU)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 32, kernel, stride)
    layer = dense.Conv2D(32, kernel, strides=stride, activation=exact_gelu)
    layer.build((None, None, None, 16))
    layer.set_weights([conv.weight.detach().numpy().transpose(2, 3, 1, 0),
                       conv.bias.detach().numpy()])
    x = _rand(2, 9, 11, 16)
    with torch.no_grad():
        ref = nn.GELU()(conv(torch.from_numpy(x.transpose(0, 3, 1, 2)))).numpy()
    assert rel(keras.ops.convert_to_numpy(layer(x)), ref.transpose(0, 2, 3, 1)) < 1e-6


@pytest.mark.parametrize("shape", [(3, 32), (2, 9, 32), (2, 5, 6, 32)])
def test_layer_normalization_is_torch_layer_norm(shape):
    torch.manual_seed(2)
    norm = nn.LayerNorm(32, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    layer = LayerNormalization(epsilon=1e-6)
    layer.build(shape)
    layer.set_weights([norm.weight.detach().numpy(), norm.bias.detach().numpy()])
    x = 3 * _rand(*shape) + 1
    with torch.no_grad():
        ref = norm(torch.from_numpy(x)).numpy()
    assert rel(keras.ops.convert_to_numpy(layer(x)), ref) < 1e-6


def _plain_keras(monkeypatch):
    """Make the builders use Keras' own Dense / Conv2D / LayerNormalization."""
    monkeypatch.setattr(dense, "Dense", keras.layers.Dense)
    monkeypatch.setattr(dense, "Conv2D", keras.layers.Conv2D)
    for module in (blocks_transformer, convnext):
        monkeypatch.setattr(module, "LayerNormalization", keras.layers.LayerNormalization)


@pytest.mark.parametrize("name, size", [
    ("timm/vit_tiny_patch16_224", 64), ("timm/convnext_atto", 64), ("timm/convnext_tiny", 64),
    # the other families with the fast layers, at the sizes their windows and grids take
    ("timm/swin_tiny_patch4_window7_224", 224), ("torchvision/swin_v2_t", 256),
    ("torchvision/maxvit_t", 224), ("timm/levit_128s", 224)])
def test_weights_file_layout_is_plain_keras(name, size, tmp_path, monkeypatch):
    """Keras addresses a layer in .weights.h5 by its class's snake_case name and index: had the
    fast layers other class names, every weights file written by a model of plain Keras layers
    (every conversion before them) would fail to load. Both directions, same outputs."""
    fast = zoo.create_model(name, input_shape=(size, size, 3))
    fast_types = {type(layer) for layer in fast.layers}
    assert fast_types & {dense.Dense, dense.Conv2D}
    assert LayerNormalization in fast_types or "levit" in name   # LeViT's norms are BatchNorms
    with monkeypatch.context() as patch:
        _plain_keras(patch)
        plain = zoo.create_model(name, input_shape=(size, size, 3))
    assert not {type(layer) for layer in plain.layers} & {dense.Dense, dense.Conv2D}
    x = _rand(2, size, size, 3)
    for source, target in ((fast, plain), (plain, fast)):
        source.set_weights([w + 0.01 * RNG.standard_normal(w.shape).astype(w.dtype)
                            for w in source.get_weights()])
        path = tmp_path / "model.weights.h5"
        source.save_weights(path)
        target.load_weights(path)
        assert rel(target(x), source(x)) < 1e-5


def test_keras_file_round_trip(tmp_path):
    inp = keras.Input((None, 12))
    y = dense.Dense(20, activation=exact_gelu, name="fc1")(LayerNormalization(name="norm")(inp))
    img = keras.Input((None, None, 12))
    z = dense.Conv2D(8, 1, activation=exact_gelu, name="pw")(img)
    model = keras.Model([inp, img], [y, z])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("fc1"), dense.Dense)
    assert loaded.get_layer("fc1").activation is exact_gelu
    x = [_rand(2, 5, 12), _rand(2, 3, 4, 12)]
    for a, b in zip(model(x), loaded(x)):
        np.testing.assert_array_equal(a, b)


def test_fused_gelu_converts_to_tflite_builtins(tmp_path):
    """The matmul with its exact GELU becomes TFLite's FULLY_CONNECTED + GELU (builtins only),
    through the project's own TFLite export; the erf form is kept exactly so (zoo/layers/gelu.py).
    """
    import tensorflow as tf

    from zoo.export import FORMAT_FILES, save_model_files

    inp = keras.Input((7, 16), name="tokens")
    model = keras.Model(inp, dense.Dense(32, activation=exact_gelu)(inp))
    assert save_model_files(model, tmp_path, ["tflite"])["tflite"] == {
        "file": FORMAT_FILES["tflite"]}
    interpreter = tf.lite.Interpreter(str(tmp_path / FORMAT_FILES["tflite"]))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert {"FULLY_CONNECTED", "GELU"} <= ops and "ERF" not in ops, ops
    runner = interpreter.get_signature_runner()
    x = _rand(1, 7, 16)
    got = next(iter(runner(**{next(iter(runner.get_input_details())): x}).values()))
    assert rel(got, model(x)) < 1e-5
