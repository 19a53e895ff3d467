"""Validation one sample at a time (zoo/validate.py `by_sample`, `compare`): the same numbers as
the whole batch, from the real torch and Keras models, computed here with plain numpy."""
import zoo.conversion.torch_first  # noqa: F401  (torch before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch

import zoo
from helpers import SMALL, rel
from zoo.validate import compare, keras_outputs

RNG = np.random.default_rng(8)


@pytest.mark.parametrize("shape, topk", [((4, 1000), True), ((3, 9, 11, 21), True),
                                         ((2, 7, 5, 16), False), ((5,), False)])
def test_compare_one_sample_at_a_time_is_the_batch_formula(shape, topk):
    ref = RNG.standard_normal(shape)
    out = (ref + 1e-3 * RNG.standard_normal(shape)).astype(np.float32)
    out.flat[3] += 0.5     # one clear outlier, so that the maximum has a single place
    d = np.abs(ref - out.astype(np.float64))
    m = compare(ref, out, topk=topk)
    assert m["max_abs"] == pytest.approx(d.max(), rel=1e-12)
    assert m["max_rel"] == pytest.approx(d.max() / np.abs(ref).max(), rel=1e-12)
    assert m["mean_abs"] == pytest.approx(d.mean(), rel=1e-9)
    r, o = ref.reshape(len(ref), -1), out.reshape(len(out), -1).astype(np.float64)
    cos = (r * o).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1))
    assert m["cosine"] == pytest.approx(cos.min(), rel=1e-12)
    if topk:
        flat_r, flat_o = ref.reshape(-1, shape[-1]), out.reshape(-1, shape[-1])
        assert m["top1"] == pytest.approx(np.mean(flat_r.argmax(1) == flat_o.argmax(1)))
        top5 = [len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5
                for a, b in zip(flat_r, flat_o)]
        assert m["top5"] == pytest.approx(np.mean(top5))
    bad = out.copy()
    bad.flat[1] = np.nan
    assert compare(ref, bad)["max_rel"] == float("inf") and not compare(ref, bad)["finite"]


def test_keras_outputs_one_sample_at_a_time_are_the_batch_pass():
    model = zoo.create_model("timm/resnet18", input_shape=(SMALL, SMALL, 3))
    rng = np.random.default_rng(9)
    for v in model.weights:   # perturbed, at a trained model's scale (BN variances positive)
        w = v.numpy()
        v.assign(rng.uniform(0.5, 1.5, w.shape) if "variance" in v.path else
                 w + 0.02 * rng.standard_normal(w.shape))
    x = rng.standard_normal((3, SMALL, SMALL, 3)).astype(np.float32)
    got = keras_outputs(model, x, ["stage2"])
    batch = keras.Model(model.input, [model.output, model.get_layer("stage2").output])(x)
    assert got["outputs"]["logits"].shape == batch[0].shape
    assert 1e-2 < np.abs(batch[0]).max() < 1e4    # a trained model's scale, not an overflow
    # float32 rounding: oneDNN picks other kernels for one image than for three
    assert rel(got["outputs"]["logits"], batch[0]) < 1e-5
    assert rel(got["features"]["stage2"], batch[1]) < 1e-5


def test_float64_error_one_sample_at_a_time_is_the_batch_comparison():
    """torch's float32-vs-float64 error is measured one image at a time (a 520 px segmentation
    net's float64 pass and outputs were a conversion's peak memory): the same numbers as the
    float64 pass over the whole batch compared at once."""
    import copy

    import torchvision

    from zoo.conversion.forward import torch_outputs
    from zoo.conversion.pipeline import float32_error
    from zoo.validate import compare_outputs

    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.mul_(1 + 0.1 * torch.randn_like(t))
    x = np.random.default_rng(3).standard_normal((3, SMALL, SMALL, 3)).astype(np.float32)
    feats = {"layer1": "stage1", "layer4": "stage4"}
    ref32 = torch_outputs(module, x, feats)
    got = float32_error(module, x, feats, ref32, 1e-4, None, zoo.io_spec.DEFAULT_OUTPUTS)
    whole = compare_outputs(torch_outputs(copy.deepcopy(module).double(), x, feats,
                                          dtype=np.float64), ref32, 1e-4)
    assert got["features"].keys() == whole["features"].keys() == {"stage1", "stage4"}
    for group in ("outputs", "features"):
        for name, m in whole[group].items():
            for metric in ("max_abs", "max_rel", "mean_abs"):
                assert 0 < got[group][name][metric] == pytest.approx(m[metric], rel=1e-3)


def test_float64_pass_runs_on_the_module_itself_and_gives_back_its_exact_weights():
    """float32_error converts the module to float64 in place (a deep copy kept a third copy of
    the weights at the peak) and must hand it back bit-identical, every tensor in its own dtype:
    the mapping reads these weights afterwards."""
    from zoo.conversion.forward import torch_outputs
    from zoo.conversion.pipeline import float32_error, in_float64

    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    module.register_buffer("scale16", torch.randn(3).half())   # not float32: kept as it was
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.add_(0.3 * torch.randn_like(t.float()).to(t.dtype))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 3)).astype(np.float32)
    ref32 = torch_outputs(module, x, {})
    with in_float64(module) as m64:
        assert m64 is module and module[0].weight.dtype == torch.float64
    floor = float32_error(module, x, {}, ref32, 1e-4, None, zoo.io_spec.DEFAULT_OUTPUTS)
    assert "error" not in floor and 0 < floor["max_rel"] < 1e-5
    after = module.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    np.testing.assert_array_equal(torch_outputs(module, x, {})["outputs"]["logits"],
                                  ref32["outputs"]["logits"])


def test_float64_pass_that_fails_still_gives_the_module_back_in_float32():
    """A custom op without a float64 kernel is reported, not raised, and the module must come
    back in float32 all the same (the conversion goes on with it)."""
    from zoo.conversion.forward import torch_outputs
    from zoo.conversion.pipeline import float32_error

    class NoFloat64(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            if x.dtype == torch.float64:
                raise RuntimeError("no float64 kernel")
            return self.fc(x.mean(dim=(2, 3)))

    module = NoFloat64().eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = np.random.default_rng(6).standard_normal((2, 4, 4, 3)).astype(np.float32)
    floor = float32_error(module, x, {}, torch_outputs(module, x, {}), 1e-4, None,
                          zoo.io_spec.DEFAULT_OUTPUTS)
    assert "no float64 kernel" in floor["error"]
    for k, v in module.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), k


def test_float64_error_of_a_batch_level_output_uses_the_whole_batch():
    """An output that is not one row per sample (here the batch mean) cannot be measured image
    by image: the error floor then runs the float64 pass over the whole batch."""
    from zoo.conversion.forward import torch_outputs
    from zoo.conversion.pipeline import float32_error

    class BatchMean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(0, 2, 3))

    module = BatchMean().eval()
    x = np.random.default_rng(4).standard_normal((4, 8, 8, 3)).astype(np.float32)
    floor = float32_error(module, x, {}, torch_outputs(module, x, {}), 1e-4, None,
                          zoo.io_spec.DEFAULT_OUTPUTS)
    assert "error" not in floor and 0 < floor["max_rel"] < 1e-5
