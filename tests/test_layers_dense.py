"""zoo's fast drop-ins for Keras layers (zoo/layers/dense.py, layer_norm.py, batch_norm.py): the
same function as torch's nn.Linear / nn.Conv2d (+ nn.GELU) / nn.LayerNorm / nn.BatchNorm2d, the same
.weights.h5 layout as the Keras layers they replace (a file from a model built with plain Keras
layers -- as every zoo model was before them -- loads into the fast model and back), and
TFLite builtins only."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from torch import nn

import zoo
from helpers import rel, run_python
from zoo.layers import dense
from zoo.layers.batch_norm import BatchNormalization
from zoo.layers.gelu import exact_gelu
from zoo.layers.layer_norm import LayerNormalization
from zoo.models import blocks, blocks_transformer, convnext

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


def _grouped_pair(groups, stride, dilation, padding="valid", seed=3):
    """torch's grouped Conv2d (perturbed, trained-scale weights) and zoo's Conv2D holding them,
    bias and ReLU on: Conv2D + BiasAdd + Relu is the pattern Grappler fuses."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(32, 48, 3, stride, padding=dilation, dilation=dilation, groups=groups)
    with torch.no_grad():
        conv.bias.uniform_(-0.5, 0.5)
    layer = dense.Conv2D(48, 3, strides=stride, padding=padding, dilation_rate=dilation,
                         groups=groups, activation="relu")
    layer.build((None, None, None, 32))
    layer.set_weights([conv.weight.detach().numpy().transpose(2, 3, 1, 0),
                       conv.bias.detach().numpy()])
    return conv, layer


@pytest.mark.parametrize("groups, stride, dilation",
                         [(4, 1, 1), (4, 2, 1), (16, 1, 2), (8, 2, 1), (1, 1, 2), (1, 1, 12)])
def test_native_conv2d_is_torch_conv_forward_and_backward(groups, stride, dilation):
    """A grouped Conv2D (RegNet's, ResNeXt's) or a dilated one (DeepLabV3's ASPP, dilated
    ResNets) on TensorFlow's native kernel: torch's output and its gradients for the input,
    kernel and bias (fine-tuning), in a graph as Keras runs it. Dilation 12 on a 15x13 input:
    most taps fall in the padding, as DeepLabV3's rates do on its 33x33 map."""
    import tensorflow as tf

    conv, layer = _grouped_pair(groups, stride, dilation)
    x = _rand(2, 15, 13, 32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    ref = torch.relu(conv(xt))
    (ref ** 2).sum().backward()

    @tf.function
    def forward_backward(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            y = layer(keras.layers.ZeroPadding2D(dilation)(a))   # torch's padding=dilation
            loss = tf.reduce_sum(y ** 2)
        return y, tape.gradient(loss, [a, layer.kernel, layer.bias])

    y, (gx, gk, gb) = forward_backward(tf.constant(x))
    assert rel(y, ref.detach().numpy().transpose(0, 2, 3, 1)) < 1e-6
    assert rel(gx, xt.grad.numpy().transpose(0, 2, 3, 1)) < 1e-5
    assert rel(gk, conv.weight.grad.numpy().transpose(2, 3, 1, 0)) < 1e-5
    assert rel(gb, conv.bias.grad.numpy()) < 1e-5


def _xla_islands(layer_class):
    """Names of the XLA-compiled functions inside a traced model of one grouped convolution."""
    import tensorflow as tf

    inp = keras.Input((14, 14, 32))
    model = keras.Model(inp, layer_class(32, 3, padding="same", groups=4)(inp))
    graph = tf.function(model).get_concrete_function(
        tf.TensorSpec((1, 14, 14, 32))).graph.as_graph_def()
    return [f.signature.name for f in graph.library.function
            if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]


@pytest.mark.skipif(not dense.onednn_enabled(), reason="TensorFlow runs without oneDNN here")
def test_grouped_conv2d_runs_no_xla_island():
    """Keras compiles each grouped convolution into its own XLA function (1.5-2x RegNet's
    latency); zoo's Conv2D leaves it to TensorFlow's kernel. Should Keras drop its island, the
    first assertion fails and zoo's path can go."""
    assert _xla_islands(keras.layers.Conv2D)
    assert not _xla_islands(dense.Conv2D)


def _space_to_batch(layer_class):
    """Whether a traced model of one dilated convolution holds SpaceToBatchND."""
    import tensorflow as tf

    inp = keras.Input((33, 33, 16))
    model = keras.Model(inp, layer_class(8, 3, padding="same", dilation_rate=12)(inp))
    graph = tf.function(model).get_concrete_function(tf.TensorSpec((1, 33, 33, 16))).graph
    return any(op.type == "SpaceToBatchND" for op in graph.get_operations())


def test_dilated_conv2d_runs_without_space_to_batch():
    """Keras computes a dilated convolution as SpaceToBatchND -> Conv2D -> BatchToSpaceND
    (DeepLabV3-MobileNetV3 1.5x PyTorch); zoo's Conv2D gives the dilation to the Conv2D op.
    Should Keras stop doing that, the first assertion fails and zoo's path can go."""
    assert _space_to_batch(keras.layers.Conv2D)
    assert not _space_to_batch(dense.Conv2D)


def test_builders_take_zoo_conv2d_for_dilated_convolutions():
    """blocks.conv2d (every builder's convolution: the ASPP, the dilated ResNets) picks zoo's
    Conv2D when dilated, so no builder's graph goes through SpaceToBatchND."""
    from zoo.models import blocks

    inp = keras.Input((33, 33, 16))
    model = keras.Model(inp, blocks.conv2d(inp, 8, 3, dilation=12, name="aspp"))
    assert type(model.get_layer("aspp")) is dense.Conv2D
    assert type(keras.Model(inp, blocks.conv2d(inp, 8, 3, name="plain")).get_layer("plain")) \
        is keras.layers.Conv2D


def _wide_pair(kernel, padding, channels=dense.WIDE_INPUT):
    """torch's Conv2d over `channels` inputs (bias, ReLU) and zoo's Conv2D holding its weights."""
    torch.manual_seed(4)
    conv = nn.Conv2d(channels, 8, kernel)
    with torch.no_grad():
        conv.bias.uniform_(-0.5, 0.5)
    layer = dense.Conv2D(8, kernel, padding=padding, activation="relu")
    layer.build((None, None, None, channels))
    layer.set_weights([conv.weight.detach().numpy().transpose(2, 3, 1, 0),
                       conv.bias.detach().numpy()])
    return conv, layer


def _ops(layer, channels):
    """Op types of `layer` traced for any batch and spatial size."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, None, None, channels))
    return {op.type for op in tf.function(layer).get_concrete_function(spec).graph
            .get_operations()}


@pytest.mark.parametrize("kernel, padding", [(3, "same"), ((3, 5), "same"), (2, "same"),
                                             (4, "same"), (3, "valid")])
def test_wide_conv2d_is_torch_conv_forward_and_backward(kernel, padding):
    """A stride-1 convolution over WIDE_INPUT channels (FCN's heads) runs as one matmul per tap,
    with no Conv2D op: torch's output and its gradients for the input, kernel and bias. Even
    kernels check that "same" puts the odd pixel of padding at the end, as TensorFlow does."""
    import tensorflow as tf

    conv, layer = _wide_pair(kernel, padding)
    assert "Conv2D" not in _ops(layer, dense.WIDE_INPUT)
    x = _rand(2, 7, 9, dense.WIDE_INPUT)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    kh, kw = conv.kernel_size
    pads = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2) if padding == "same" else (0,) * 4
    ref = torch.relu(conv(nn.functional.pad(xt, pads)))
    (ref ** 2).sum().backward()

    @tf.function
    def forward_backward(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = tf.reduce_sum(layer(a) ** 2)
        return layer(a), tape.gradient(loss, [a, layer.kernel, layer.bias])

    y, (gx, gk, gb) = forward_backward(tf.constant(x))
    assert y.shape == tuple(ref.permute(0, 2, 3, 1).shape)
    assert rel(y, ref.detach().numpy().transpose(0, 2, 3, 1)) < 1e-6
    assert rel(gx, xt.grad.numpy().transpose(0, 2, 3, 1)) < 1e-5
    assert rel(gk, conv.weight.grad.numpy().transpose(2, 3, 1, 0)) < 1e-5
    assert rel(gb, conv.bias.grad.numpy()) < 1e-5


def test_wide_conv2d_runs_at_any_size_and_only_when_wide():
    """One trace with free batch and spatial size serves two sizes; below WIDE_INPUT channels, or
    strided, the convolution stays TensorFlow's Conv2D."""
    import tensorflow as tf

    conv, layer = _wide_pair(3, "same")
    f = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, dense.WIDE_INPUT))])
    for shape in [(1, 5, 6), (3, 11, 4)]:
        x = _rand(*shape, dense.WIDE_INPUT)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            ref = torch.relu(conv(nn.functional.pad(xt, (1, 1, 1, 1))))
        assert rel(f(tf.constant(x)), ref.numpy().transpose(0, 2, 3, 1)) < 1e-6
    assert "Conv2D" in _ops(_wide_pair(3, "same", dense.WIDE_INPUT // 2)[1], dense.WIDE_INPUT // 2)
    strided = dense.Conv2D(8, 3, strides=2)
    assert "Conv2D" in _ops(strided, dense.WIDE_INPUT)


def test_builders_take_zoo_conv2d_for_wide_convolutions():
    """blocks.conv2d (FCN's and DeepLabV3's heads) picks zoo's Conv2D for a stride-1 k x k
    convolution over WIDE_INPUT channels, and keeps Keras' class below it and for 1x1."""
    inp = keras.Input((9, 9, dense.WIDE_INPUT))
    narrow = keras.Input((9, 9, dense.WIDE_INPUT // 2))
    model = keras.Model([inp, narrow], [blocks.conv2d(inp, 8, 3, name="head"),
                                        blocks.conv2d(inp, 8, 1, name="pointwise"),
                                        blocks.conv2d(narrow, 8, 3, name="narrow")])
    assert type(model.get_layer("head")) is dense.Conv2D
    assert type(model.get_layer("pointwise")) is keras.layers.Conv2D
    assert type(model.get_layer("narrow")) is keras.layers.Conv2D


def test_grouped_conv2d_keeps_keras_route_without_onednn():
    """Without oneDNN, Grappler's fused Conv2D+BiasAdd kernel rejects groups: zoo's Conv2D then
    takes Keras' route, and the graph runs and matches torch. A dilated convolution (one group)
    still takes the native op, which TensorFlow's own kernel runs."""
    proc = run_python(
        "import zoo.conversion.torch_first, tensorflow as tf, torch, numpy as np\n"
        "import test_layers_dense as t\n"
        "from zoo.layers import dense\n"
        "assert not dense.onednn_enabled()\n"
        "conv, layer = t._grouped_pair(4, 1, 1, padding='same')\n"
        "x = t._rand(2, 9, 9, 32)\n"
        "y = tf.function(layer)(tf.constant(x)).numpy()\n"
        "ref = torch.relu(conv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())))\n"
        "ref = ref.detach().numpy().transpose(0, 2, 3, 1)\n"
        "print(float(np.abs(y - ref).max() / np.abs(ref).max()))\n"
        # a dilated convolution takes the native Conv2D op on TensorFlow's own kernel too
        "conv, layer = t._grouped_pair(1, 1, 12, padding='same')\n"
        "y = tf.function(layer)(tf.constant(x)).numpy()\n"
        "ref = torch.relu(conv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())))\n"
        "ref = ref.detach().numpy().transpose(0, 2, 3, 1)\n"
        "print(float(np.abs(y - ref).max() / np.abs(ref).max()))\n",
        env={"TF_ENABLE_ONEDNN_OPTS": "0", "PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(float(v) < 1e-6 for v in proc.stdout.split()[-2:]), proc.stdout


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


def _bn_pair(channels=24, seed=4):
    """torch's BatchNorm2d with trained-scale statistics and affine, and zoo's holding them."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(channels, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    layer = BatchNormalization(epsilon=1e-3)
    layer.build((None, None, None, channels))
    layer.set_weights([t.detach().numpy() for t in (bn.weight, bn.bias, bn.running_mean,
                                                    bn.running_var)])
    return bn, layer


def test_batch_norm_after_conv_is_torch_forward_and_backward():
    """Conv2D -> zoo's BatchNormalization -> ReLU (the pattern Grappler fuses into one oneDNN
    convolution) in a graph: torch's eval-mode output, and its gradients for the input and the
    convolution's kernel (fine-tuning with frozen statistics)."""
    import tensorflow as tf

    bn, layer = _bn_pair()
    torch.manual_seed(5)
    conv = nn.Conv2d(16, 24, 3, padding=1, bias=False)
    keras_conv = keras.layers.Conv2D(24, 3, padding="same", use_bias=False)
    keras_conv.build((None, None, None, 16))
    keras_conv.set_weights([conv.weight.detach().numpy().transpose(2, 3, 1, 0)])
    x = _rand(2, 11, 9, 16)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    ref = torch.relu(bn(conv(xt)))
    (ref ** 2).sum().backward()

    @tf.function
    def forward_backward(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            y = tf.nn.relu(layer(keras_conv(a), training=False))
            loss = tf.reduce_sum(y ** 2)
        return y, tape.gradient(loss, [a, keras_conv.kernel])

    y, (gx, gk) = forward_backward(tf.constant(x))
    assert rel(y, ref.detach().numpy().transpose(0, 2, 3, 1)) < 1e-6
    assert rel(gx, xt.grad.numpy().transpose(0, 2, 3, 1)) < 1e-5
    assert rel(gk, conv.weight.grad.numpy().transpose(2, 3, 1, 0)) < 1e-5


def test_batch_norm_trains_with_batch_statistics_like_keras():
    """training=True is Keras' own call: batch statistics, moving averages updated."""
    _, layer = _bn_pair()
    plain = keras.layers.BatchNormalization(epsilon=1e-3)
    plain.build((None, None, None, 24))
    plain.set_weights(layer.get_weights())
    x = 2 * _rand(4, 5, 5, 24) + 1
    np.testing.assert_allclose(layer(x, training=True), plain(x, training=True), atol=1e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), plain.moving_mean.numpy(), atol=1e-7)
    assert not np.allclose(layer.moving_mean.numpy(), _bn_pair()[1].moving_mean.numpy())


def test_builders_take_the_fused_batch_norm_right_after_a_bias_free_conv2d():
    """Alone (after a depthwise convolution, a biased one, a concatenation) FusedBatchNorm is
    slower than Keras' ops: the builders use it only where Grappler fuses it."""
    img = keras.Input((8, 8, 16))
    after = {
        "conv": blocks.conv2d(img, 16, 3),
        "grouped conv": blocks.conv2d(img, 16, 3, groups=4),
        "depthwise": blocks.depthwise(img, 3),
        "biased conv": blocks.conv2d(img, 16, 3, use_bias=True),
        "concat": keras.layers.Concatenate()([img, img]),
    }
    kinds = {k: type(blocks.norm(x, f"bn_{i}")._keras_history[0])
             for i, (k, x) in enumerate(after.items())}
    assert kinds == {"conv": BatchNormalization, "grouped conv": BatchNormalization,
                     "depthwise": keras.layers.BatchNormalization,
                     "biased conv": keras.layers.BatchNormalization,
                     "concat": keras.layers.BatchNormalization}


def _plain_keras(monkeypatch):
    """Make the builders use Keras' own Dense / Conv2D / LayerNormalization."""
    monkeypatch.setattr(dense, "Dense", keras.layers.Dense)
    monkeypatch.setattr(dense, "Conv2D", keras.layers.Conv2D)
    monkeypatch.setattr(blocks, "BatchNormalization", keras.layers.BatchNormalization)
    for module in (blocks_transformer, convnext):
        monkeypatch.setattr(module, "LayerNormalization", keras.layers.LayerNormalization)


@pytest.mark.parametrize("name, size", [
    ("timm/vit_tiny_patch16_224", 64), ("timm/convnext_atto", 64), ("timm/convnext_tiny", 64),
    # the other families with the fast layers, at the sizes their windows and grids take
    ("timm/swin_tiny_patch4_window7_224", 224), ("torchvision/swin_v2_t", 256),
    ("torchvision/maxvit_t", 224), ("timm/levit_128s", 224),
    ("timm/regnety_004", 64),    # grouped convolutions, BatchNorms after them
    ("timm/efficientnet_b0", 64)])   # BatchNorms after 1x1 and after depthwise convolutions
def test_weights_file_layout_is_plain_keras(name, size, tmp_path, monkeypatch):
    """Keras addresses a layer in .weights.h5 by its class's snake_case name and index: had the
    fast layers other class names, every weights file written by a model of plain Keras layers
    (every conversion before them) would fail to load. Both directions, same outputs."""
    fast = zoo.create_model(name, input_shape=(size, size, 3))
    fast_types = {type(layer) for layer in fast.layers}
    assert fast_types & {dense.Dense, dense.Conv2D, BatchNormalization}
    # LeViT's, RegNet's and EfficientNet's norms are BatchNorms
    assert LayerNormalization in fast_types or name in ("timm/levit_128s", "timm/regnety_004",
                                                        "timm/efficientnet_b0")
    with monkeypatch.context() as patch:
        _plain_keras(patch)
        plain = zoo.create_model(name, input_shape=(size, size, 3))
    assert not {type(layer) for layer in plain.layers} & {dense.Dense, dense.Conv2D,
                                                          BatchNormalization}
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
