"""EfficientNet family (recipes/efficientnet.yaml, zoo/models/efficientnet.py:efficientnet):
one test per pitfall, and both sources' width rounding.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import numpy as np
import pytest

import zoo
from helpers import SMALL, mapped, random_input, rel, torch_nhwc

TOL = 1e-4


# ------------------------------------------------------------------ pitfalls

def test_pitfall_tf_weights_need_tf_same_padding():
    """tf_efficientnet_b0 built with torch's symmetric padding: wrong wherever a strided layer
    sees an even size (TF pads the odd pixel at the end only), right only when all are odd."""
    module, wrong = mapped("timm/tf_efficientnet_b0", tf_padding=False)
    rng = np.random.default_rng(0)
    even = rng.standard_normal((2, SMALL, SMALL, 3)).astype(np.float32)   # 64: even everywhere
    assert rel(wrong.predict_on_batch(even), torch_nhwc(module, even)) > 1e-2
    # 65 -> 33 -> 17 -> 9 -> 5 -> 3: every strided layer sees an odd size and "SAME" pads
    # symmetrically, so the mistake is invisible there: tests must use even sizes too.
    odd = rng.standard_normal((2, 65, 65, 3)).astype(np.float32)
    assert rel(wrong.predict_on_batch(odd), torch_nhwc(module, odd)) < TOL


def test_pitfall_tf_weights_need_bn_eps_1e_3():
    """tf_* weights were trained with BN eps 1e-3; the engine refuses a Keras model with torch's
    default 1e-5 (every BatchNorm is reported) instead of producing a silently-off model."""
    with pytest.raises(zoo.MappingError) as e:
        mapped("timm/tf_efficientnet_b0", bn_eps=1e-5)
    msg = str(e.value)
    assert "eps 0.001 != keras epsilon 1e-05" in msg
    assert "torch module 'bn1' -> keras layer 'stem_bn'" in msg
    assert "49 problem(s)" in msg   # stem, 16 blocks (2 or 3 BNs each), head


def test_pitfall_drop_path_is_identity_at_inference(converted_small, torch_model):
    """torchvision's stochastic depth (0.2) is kept for training as per-sample Dropout on the
    residual branches; inference must be deterministic and equal torch's eval()."""
    name = "torchvision/efficientnet_b0"
    model, _ = converted_small(name)
    drop = [layer for layer in model.layers if layer.name.endswith("_drop_path")]
    assert len(drop) == 9 and max(layer.rate for layer in drop) == pytest.approx(0.2 * 14 / 16)
    x = random_input(n=4, seed=4)
    ref = torch_nhwc(torch_model(name), x)
    first = model.predict_on_batch(x)
    np.testing.assert_array_equal(first, model.predict_on_batch(x))
    assert rel(first, ref) < TOL
    assert rel(model(x, training=False), ref) < TOL   # eager call, explicit inference mode
    # In training mode the branches really are dropped: a model that applied drop path at
    # inference would be this far off.
    assert rel(model(x, training=True), ref) > 1e-2


def test_timm_and_torchvision_widths_agree_with_their_sources():
    """B3 (width 1.2, depth 1.4): both sources' rounding of stem/stage/SE/head widths."""
    import timm
    import torchvision

    from zoo.models.efficientnet import efficientnet

    def count(keras_model):
        return sum(int(np.prod(w.shape)) for w in keras_model.weights)

    def torch_count(m):
        return sum(v.numel() for k, v in m.state_dict().items() if "num_batches" not in k)

    kw = dict(width_multiplier=1.2, depth_multiplier=1.4, input_shape=(None, None, 3))
    assert count(efficientnet(**kw)) == torch_count(timm.create_model("efficientnet_b3"))
    assert count(efficientnet(rounding="torchvision", **kw)) == \
        torch_count(torchvision.models.efficientnet_b3())
