"""The Keras-only side: create_model, preprocess, loading outputs, and import order."""
import json

import numpy as np
import pytest

import zoo
from helpers import run_python, run_script

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; " \
              "sys.modules['timm'] = None\n"


def test_running_converted_models_never_imports_torch(converted):
    out_dir, report = converted("timm/resnet18")
    code = BLOCK_TORCH + f"""
import numpy as np, keras, zoo
from zoo.validate import load_golden, validate_files
d = {str(out_dir)!r}
inputs, ref = load_golden(d)
inputs, ref = inputs['image'], ref['outputs']
import zoo.layers
k = keras.saving.load_model(d + '/model.keras', safe_mode=True)
m = zoo.create_model('timm/resnet18', pretrained=d)
got = m.predict_on_batch(inputs)
assert np.abs(got - ref['logits']).max() / np.abs(ref['logits']).max() < 1e-5
assert np.allclose(k.predict_on_batch(inputs), got, atol=1e-5)
res = validate_files(d)
assert all(r['passed'] for r in res.values()), res
assert 'torch' not in [n for n, mod in sys.modules.items() if mod is not None]
print('OK')
"""
    proc = run_python(code)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_conversion_side_import_orders():
    ok = run_python("import zoo.conversion.pipeline, tensorflow, torchvision; print('OK')")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr[-2000:]
    # tensorflow first: a clear error instead of a segfault.
    bad = run_python("import tensorflow\nimport zoo\nzoo.convert('timm/resnet18')")
    assert bad.returncode == 1, (bad.returncode, bad.stderr[-2000:])
    assert "ImportOrderError" in bad.stderr and "before torch" in bad.stderr


def test_create_model_keras_applications_arguments(converted, monkeypatch, tmp_path):
    out_dir, _ = converted("timm/resnet18")
    inputs = np.load(out_dir / "golden.npz")["input/image"]
    full = zoo.create_model("timm/resnet18", pretrained=out_dir)
    headless = zoo.create_model("timm/resnet18", pretrained=out_dir, include_top=False,
                                pooling="avg")
    assert headless.output_shape == (None, 512)
    # the headless model shares the converted weights: same pooled features as the full model
    pooled = zoo.create_model("timm/resnet18", pretrained=out_dir, include_top=False)
    fmap = pooled.predict_on_batch(inputs)
    assert fmap.shape[1:] == (2, 2, 512)
    np.testing.assert_allclose(headless.predict_on_batch(inputs), fmap.mean((1, 2)), atol=1e-5)
    w = full.get_layer("predictions").get_weights()
    np.testing.assert_allclose(full.predict_on_batch(inputs),
                               fmap.mean((1, 2)) @ w[0] + w[1], rtol=1e-4, atol=1e-4)
    feats = zoo.create_model("timm/resnet18", pretrained=out_dir, features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [64, 128, 256, 512]
    fixed = zoo.create_model("timm/resnet18", input_shape=(96, 96, 3), num_classes=7,
                             classifier_activation="softmax")
    probs = fixed.predict_on_batch(np.zeros((1, 96, 96, 3), np.float32))
    assert probs.shape == (1, 7) and np.isclose(probs.sum(), 1, atol=1e-5)
    with pytest.raises(zoo.ZooError, match="include_top=False"):
        zoo.create_model("timm/resnet18", pretrained=out_dir, num_classes=7)
    with pytest.raises(zoo.ZooError, match="not .*torchvision/resnet50|holds a"):
        zoo.create_model("torchvision/resnet50", pretrained=out_dir)
    # published weights: offline with an empty cache is a clear error, never random weights
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(zoo.ZooError, match="offline"):
        zoo.create_model("timm/resnet18", pretrained=True)


def test_list_models_and_unknown_names():
    names = zoo.list_models()
    assert names == sorted(names) and "timm/seresnext50_32x4d.racm_in1k" in names
    assert zoo.list_models("torchvision/res*") == [
        "torchvision/resnet18.IMAGENET1K_V1", "torchvision/resnet50.IMAGENET1K_V1",
        "torchvision/resnet50.IMAGENET1K_V2", "torchvision/resnext50_32x4d.IMAGENET1K_V2"]
    with pytest.raises(zoo.UnknownModelError, match="did you mean"):
        zoo.create_model("timm/resnet19")


def test_preprocess_normalises_with_the_model_config(converted):
    out_dir, _ = converted("timm/resnet18")
    cfg = json.loads((out_dir / "config.json").read_text())["preprocessing"]
    img = np.empty((300, 400, 3), np.uint8)
    img[...] = (10, 128, 250)
    x = np.asarray(zoo.preprocess(out_dir, img, size=64))   # HWC in, HWC out (tf.data.map)
    assert x.shape == (64, 64, 3) and x.dtype == np.float32
    expected = (np.array([10, 128, 250]) / 255 - np.array(cfg["mean"])) / np.array(cfg["std"])
    np.testing.assert_allclose(x[32, 32], expected, atol=1e-4)
    # centre crop: a left-half/right-half split image keeps its boundary in the middle
    img[:, :200] = 0
    x = np.asarray(zoo.preprocess(out_dir, img[None], size=64))
    assert x.shape == (1, 64, 64, 3) and x[0, 32, 5, 0] < x[0, 32, 58, 0]
    with pytest.raises(zoo.ZooError, match="HWC or NHWC"):
        zoo.preprocess(out_dir, np.zeros((4, 4)))


def test_validate_all_detects_a_tampered_model(converted, tmp_path):
    import shutil

    out_dir, _ = converted("torchvision/resnet18")
    dst = tmp_path / "torchvision" / "resnet18"
    shutil.copytree(out_dir, dst)
    with np.load(dst / "golden.npz") as z:
        arrays = dict(z)
    arrays["output/logits"] = arrays["output/logits"] * 1.01
    np.savez(dst / "golden.npz", **arrays)
    proc = run_script("validate_all.py", "--out", tmp_path)
    assert proc.returncode == 1 and "FAILED torchvision/resnet18" in proc.stdout + proc.stderr


def test_readme_catalogue_lists_every_model():
    from helpers import ROOT

    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- catalogue:start -->")[1].split("<!-- catalogue:end -->")[0]
    listed = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")]
    assert listed == zoo.list_models()


@pytest.mark.parametrize("name", ["timm/mobilenetv2_100", "torchvision/efficientnet_b0"])
def test_headless_model_keeps_the_head_conv_like_keras_applications(name):
    # include_top=False ends where the builder's features end: after the 1x1 head conv (1280
    # channels), so the classifier is exactly a Dense on the pooled headless output
    import keras

    keras.utils.set_random_seed(4)
    full = zoo.create_model(name, input_shape=(64, 64, 3))
    keras.utils.set_random_seed(4)
    headless = zoo.create_model(name, include_top=False, pooling="avg", input_shape=(64, 64, 3))
    assert headless.output_shape == (None, 1280)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    w, b = full.get_layer("predictions").get_weights()
    np.testing.assert_allclose(full.predict_on_batch(x), headless.predict_on_batch(x) @ w + b,
                               rtol=1e-4, atol=1e-4)


def test_create_model_keeps_a_dense_models_own_class_count():
    """Without num_classes, a model gets its weights' class count: 21 for torchvision's
    segmentation weights (not keras.applications' 1000); num_classes still overrides it."""
    seg = zoo.create_model("torchvision/lraspp_mobilenet_v3_large")
    assert seg.output["out"].shape[-1] == 21
    three = zoo.create_model("torchvision/lraspp_mobilenet_v3_large", num_classes=3)
    assert three.output["out"].shape[-1] == 3
