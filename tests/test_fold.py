"""--inference: the serving exports written from a copy with BatchNorm and layer scale folded into
the preceding layer (zoo/fold.py), validated against the real timm module like every format."""
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

import zoo
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)
from helpers import SMALL, random_input, rel, run_script
from zoo.fold import fold_for_inference


def _randomised(model, seed):
    """Every weight of `model` drawn from U(0.5, 1.5) (positive variances, scales away from 1);
    returns the generator for the test's inputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                           for w in layer.get_weights()])
    return rng


def _count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


def test_folded_saved_model_with_xla_matches_timm(tmp_path, torch_model):
    """Every BatchNorm of ResNet-18 follows its conv: all are folded, and both the folded copy
    and the XLA-compiled SavedModel written from it match timm's module."""
    _model, report = zoo.convert("timm/resnet18", input_size=SMALL, out_dir=tmp_path,
                                 formats="weights.h5,saved_model", inference="xla")
    module = torch_model("timm/resnet18")
    assert report["inference"] == {"mode": "xla", "folded": {
        "batchnorm": _count(module, torch.nn.BatchNorm2d), "layer_scale": 0,
        "weight_standardization": 0}}
    assert not [w for w in report["warnings"] if "--inference xla" in w]   # dense convs only
    for fmt in ("folded", "saved_model", "weights.h5"):
        assert report["parity"][fmt]["passed"], fmt
        assert report["parity"][fmt]["max_rel"] < 1e-5, fmt
    # the serving function is compiled by XLA when called (TF marks it _XlaMustCompile)
    loaded = tf.saved_model.load(str(Path(report["output_dir"]) / "saved_model"))
    graph = loaded.signatures["serving_default"].graph.as_graph_def()
    assert any(fn.attr["_XlaMustCompile"].b for fn in graph.library.function
               if "_XlaMustCompile" in fn.attr)


def test_xla_warns_of_the_depthwise_and_grouped_convolutions_it_is_slow_on(torch_model):
    """XLA's CPU code for depthwise/grouped convolutions was 1.1-16x slower than the plain folded
    graph in the benchmark: --inference xla on such a model says so, with the count of them
    (counted in timm's module, not ours)."""
    _model, report = zoo.convert("timm/mobilenetv3_small_100", input_size=SMALL,
                                 formats="saved_model", inference="xla")
    module = torch_model("timm/mobilenetv3_small_100")
    grouped = sum(m.groups > 1 for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    assert grouped > 0
    [warning] = [w for w in report["warnings"] if "--inference xla" in w]
    assert f" {grouped} depthwise or grouped convolutions" in warning
    assert "--inference fold" in warning


def test_layer_scale_folds_and_preactivation_batchnorm_stays(converted_small, torch_model):
    """ConvNeXt's layer scales follow their Dense (fc2): folded. ResNetV2's BatchNorms come
    before their convolutions (pre-activation): folding them would need the zero padding to see
    the shift, so none of those is folded, and the copy still computes the same function."""
    x = random_input(SMALL, SMALL, seed=3)
    model, _ = converted_small("timm/convnext_atto")
    folded, counts = fold_for_inference(model)
    blocks = sum(1 for n, p in torch_model("timm/convnext_atto").named_parameters() if n.endswith(".gamma"))
    assert counts == {"batchnorm": 0, "layer_scale": blocks, "weight_standardization": 0}
    assert rel(folded(x), model(x)) < 1e-5

    model, _ = converted_small("timm/resnetv2_50")
    folded, counts = fold_for_inference(model)
    bns = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert counts["batchnorm"] < bns
    assert rel(folded(x), model(x)) < 1e-5


def test_weight_standardised_convs_become_plain_convs_matching_timm(converted_small,
                                                                   torch_model):
    """BiT's StdConv2d standardises its kernel at every call; the folded copy holds each
    standardised kernel in a plain Conv2D (one per timm StdConv2d), and still matches timm's
    module, which standardises as it runs."""
    import timm

    name = "timm/resnetv2_50x1_bit"
    model, _ = converted_small(name)
    module = torch_model(name)
    folded, counts = fold_for_inference(model)
    assert counts["weight_standardization"] == _count(module, timm.layers.StdConv2d) > 0
    assert not any(type(layer).__name__ == "StdConv2D" for layer in folded.layers)
    x = random_input(SMALL, SMALL, seed=5)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert rel(folded(x), ref) < 1e-4
    assert rel(folded(x), model(x)) < 1e-5


def test_batchnorm_after_a_weight_standardised_conv_folds_into_the_standardised_kernel():
    """A BatchNorm after a StdConv2D folds into its standardised kernel (folding it into the raw
    kernel, which the layer standardises again, would undo the BatchNorm's scale)."""
    from zoo.layers.std_conv import StdConv2D

    inp = keras.Input((8, 8, 3))
    x = StdConv2D(4, 3, padding="same", eps=1e-8, name="conv")(inp)
    model = keras.Model(inp, keras.layers.BatchNormalization(name="bn")(x))
    rng = _randomised(model, seed=1)
    folded, counts = fold_for_inference(model)
    assert counts == {"batchnorm": 1, "layer_scale": 0, "weight_standardization": 1}
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    assert rel(folded(x), model(x)) < 1e-5


def test_a_conv_with_two_consumers_is_not_folded():
    """Folding the BN into a conv whose output also feeds another layer would change that
    layer's input: such a pair stays, and the outputs are unchanged."""
    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    bn = keras.layers.BatchNormalization(name="bn")(conv)
    dw = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False,
                                      name="dw")(conv)
    dw_bn = keras.layers.BatchNormalization(name="dw_bn")(dw)
    model = keras.Model(inp, [bn, dw_bn])
    rng = _randomised(model, seed=0)
    folded, counts = fold_for_inference(model)
    # dw_bn into the depthwise conv only
    assert counts == {"batchnorm": 1, "layer_scale": 0, "weight_standardization": 0}
    assert type(folded.get_layer("bn")).__name__ == "BatchNormalization"
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    for got, ref in zip(folded(x), model(x)):
        assert rel(got, ref) < 1e-5


def test_inference_without_a_serving_format_is_refused(tmp_path):
    proc = run_script("convert.py", "timm/resnet18", "--inference", "fold", "--out", tmp_path)
    assert proc.returncode == 2
    assert "--inference fold changes the serving exports only" in proc.stderr
    assert not any(tmp_path.iterdir())
    with pytest.raises(zoo.ZooError, match="add one to --formats"):
        zoo.convert("timm/resnet18", inference="fold", formats="weights.h5")
