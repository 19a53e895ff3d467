"""Each zoo.ops function converts to TFLite with builtin ops only (no SELECT_TF_OPS) and the
interpreter reproduces torch, including free box counts and empty box sets: what
docs/custom-ops.md states about TFLite."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision before tensorflow)

# isort: split

import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F
import torchvision

from zoo.ops.deform_conv import deform_conv2d
from zoo.ops.nms import batched_nms, nms
from zoo.ops.roi_align import roi_align
from zoo.ops.sampling import grid_sample, interpolate

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 12, 15, 4)).astype(np.float32)


def _nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


def _boxes(n):
    xy = RNG.uniform(0, 60, (n, 2))
    return np.concatenate([xy, xy + RNG.uniform(1, 25, (n, 2))], 1).astype(np.float32)


def _rois(k):
    xy = RNG.uniform(-5, 55, (k, 2))
    return np.concatenate([RNG.integers(0, 2, (k, 1)), xy, xy + RNG.uniform(0, 30, (k, 2))],
                          1).astype(np.float32)


def _run_tflite(fn, specs, argsets):
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(fn).get_concrete_function(*specs)])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    outs = []
    for args in argsets:
        inputs = interpreter.get_input_details()
        for d, a in zip(inputs, args):
            interpreter.resize_tensor_input(d["index"], a.shape)
        interpreter.allocate_tensors()
        for d, a in zip(inputs, args):
            interpreter.set_tensor(d["index"], a)
        interpreter.invoke()
        outs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return outs


def _nms_case():
    sets = [(_boxes(n), RNG.random(n).astype(np.float32)) for n in (0, 6, 200)]
    want = [torchvision.ops.nms(torch.from_numpy(b), torch.from_numpy(s), 0.5).numpy()
            for b, s in sets]
    return (lambda b, s: nms(b, s, 0.5)), [tf.TensorSpec([None, 4]), tf.TensorSpec([None])], \
        sets, want


def _batched_nms_case():
    sets = [(_boxes(n), RNG.random(n).astype(np.float32), RNG.integers(0, 4, n).astype(np.int32))
            for n in (0, 50, 1100)]   # 1100: torchvision's per-class path
    want = [torchvision.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s),
                                        torch.from_numpy(i.astype(np.int64)), 0.5).numpy()
            for b, s, i in sets]
    specs = [tf.TensorSpec([None, 4]), tf.TensorSpec([None]), tf.TensorSpec([None], tf.int32)]
    return (lambda b, s, i: batched_nms(b, s, i, 0.5)), specs, sets, want


def _roi_align_case():
    sets = [(X, _rois(k)) for k in (0, 25)]
    want = [_nhwc(torchvision.ops.roi_align(_nchw(a), torch.from_numpy(r), 3, 0.25, -1, True))
            for a, r in sets]
    specs = [tf.TensorSpec(X.shape), tf.TensorSpec([None, 5])]
    return (lambda a, r: roi_align(a, r, 3, 0.25, -1, True)), specs, sets, want


def _deform_case():
    kernel = RNG.standard_normal((3, 3, 4, 5)).astype(np.float32)
    offset = (2 * RNG.standard_normal((2, 12, 15, 18))).astype(np.float32)
    mask = RNG.uniform(0, 1, (2, 12, 15, 9)).astype(np.float32)
    want = _nhwc(torchvision.ops.deform_conv2d(_nchw(X), _nchw(offset),
                                               torch.from_numpy(kernel.transpose(3, 2, 0, 1)),
                                               padding=1, mask=_nchw(mask)))
    specs = [tf.TensorSpec([None, 12, 15, 4]), tf.TensorSpec([None, 12, 15, 18]),
             tf.TensorSpec([None, 12, 15, 9])]
    return (lambda a, o, m: deform_conv2d(a, o, kernel, padding=1, mask=m)), specs, \
        [(X, offset, mask)], [want]


def _grid_sample_case():
    grid = RNG.uniform(-1.2, 1.2, (2, 5, 7, 2)).astype(np.float32)
    want = _nhwc(F.grid_sample(_nchw(X), torch.from_numpy(grid), align_corners=False))
    return (lambda a, g: grid_sample(a, g)), [tf.TensorSpec(X.shape), tf.TensorSpec(grid.shape)], \
        [(X, grid)], [want]


def _interpolate_case(mode, antialias, size):
    def case():
        kw = {"antialias": True} if antialias else {}
        want = _nhwc(F.interpolate(_nchw(X), size=size, mode=mode, **kw))
        return (lambda a: interpolate(a, size, mode=mode, **kw)), [tf.TensorSpec(X.shape)], \
            [(X,)], [want]
    return case


CASES = {"nms": _nms_case, "batched_nms": _batched_nms_case, "roi_align": _roi_align_case,
         "deform_conv2d": _deform_case, "grid_sample": _grid_sample_case,
         "interpolate_bilinear": _interpolate_case("bilinear", False, (20, 31)),
         "interpolate_nearest": _interpolate_case("nearest", False, (20, 31)),
         "interpolate_bicubic": _interpolate_case("bicubic", False, (20, 31)),
         "interpolate_antialias": _interpolate_case("bicubic", True, (5, 7))}


@pytest.mark.parametrize("name", list(CASES))
def test_runs_in_tflite_with_builtin_ops_only(name):
    fn, specs, argsets, want = CASES[name]()
    for got, expected in zip(_run_tflite(fn, specs, argsets), want):
        if "nms" in name:
            np.testing.assert_array_equal(got, expected)
        else:   # TFLite's resize kernels round differently from TF's: 1e-5 measured
            np.testing.assert_allclose(got, expected, atol=3e-5, rtol=0)
