"""The PyTorch forward pass with named inputs and outputs (zoo/io_spec.py): Keras-layout arrays in,
the declared outputs out, by name, in the Keras layout. Used by the pipeline, the layer diff, the
BN calibration and the recipe drafter, so the torch side is called one way everywhere."""
from __future__ import annotations

import numpy as np

from zoo.conversion.torch_first import torch
from zoo.errors import ZooError
from zoo.io_spec import DEFAULT_OUTPUTS, default_inputs, describe, to_keras, to_torch


class OutputSelectionError(ZooError):
    """The torch model's result does not fit the declared outputs (names its structure)."""


def as_inputs(inputs, specs=None) -> tuple[dict, tuple]:
    """(inputs by name, specs): a bare array is the one default image input (NHWC)."""
    if isinstance(inputs, dict):
        return inputs, specs
    return {"image": inputs}, specs or default_inputs(inputs.shape[-1])


def torch_args(inputs: dict, specs, dtype=None) -> list:
    """The torch model's positional arguments, in the declared order, in the torch layout."""
    args = []
    for spec in specs:
        arr = to_torch(np.asarray(inputs[spec.name]), spec.layout)
        if dtype is not None and np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(dtype)
        args.append(torch.from_numpy(np.ascontiguousarray(arr)))
    return args


def run(module, inputs: dict, specs, dtype=None):
    with torch.no_grad():
        return module(*torch_args(inputs, specs, dtype))


def select(result, specs=DEFAULT_OUTPUTS) -> dict:
    """{declared name: numpy array in the Keras layout} from a torch result (a tensor, or a
    tuple/list/dict of tensors). An output without `select` takes its position (tuple/list) or
    its name (dict)."""
    if torch.is_tensor(result):
        if len(specs) != 1 or specs[0].select is not None:
            raise OutputSelectionError(
                f"the torch model returns one tensor ({describe(result)}) but the recipe declares "
                f"outputs {[s.name for s in specs]}")
        return {specs[0].name: to_keras(result.detach().numpy(), specs[0].layout)}
    if not isinstance(result, (tuple, list, dict)):
        raise OutputSelectionError(f"the torch model returns {type(result).__name__}; expected a "
                                   f"tensor or a tuple/list/dict of tensors")
    if specs is DEFAULT_OUTPUTS:
        keys = list(result) if isinstance(result, dict) else list(range(len(result)))
        example = [{"name": f"out{i}", "select": k} for i, k in enumerate(keys[:3])]
        raise OutputSelectionError(
            f"the torch model returns a {describe(result)}; declare `outputs:` in the recipe, one "
            f"per tensor to compare, e.g. {example}")
    out = {}
    for i, spec in enumerate(specs):
        key = spec.select if spec.select is not None else \
            (spec.name if isinstance(result, dict) else i)
        try:
            value = result[key]
        except (KeyError, IndexError, TypeError):
            raise OutputSelectionError(f"output {spec.name!r}: the torch result has no element "
                                       f"{key!r}; it is a {describe(result)}") from None
        if not torch.is_tensor(value):
            raise OutputSelectionError(f"output {spec.name!r}: element {key!r} of the torch result "
                                       f"is {describe(value)}, not a tensor")
        out[spec.name] = to_keras(value.detach().numpy(), spec.layout)
    return out


def feature_layout(in_specs) -> str:
    """Intermediate features follow the first input's layout (image: NCHW maps -> NHWC;
    sequence: NCL -> NLC); tokens (N, L, D) and vectors stay as they are."""
    return in_specs[0].layout if in_specs else "image"


def torch_outputs(module, inputs, feature_modules: dict[str, str], in_specs=None,
                  out_specs=DEFAULT_OUTPUTS, dtype=None, layout=None) -> dict:
    """The declared outputs and the named modules' outputs from one forward pass:
    {"outputs": {name: array}, "features": {keras layer: array}}, Keras layout. layout: the
    features' torch layout when the recipe declares one (`feature_layout`)."""
    inputs, in_specs = as_inputs(inputs, in_specs)
    captured, hooks = {}, []
    for torch_name, keras_name in feature_modules.items():
        sub = module.get_submodule(torch_name)
        hooks.append(sub.register_forward_hook(
            # clone: a later in-place op (ReLU(inplace=True), x += shortcut) must not change it
            lambda _m, _i, out, k=keras_name: captured.__setitem__(k, out.detach().clone())))
    try:
        result = run(module, inputs, in_specs, dtype)
    finally:
        for h in hooks:
            h.remove()
    layout = layout or feature_layout(in_specs)
    return {"outputs": select(result, out_specs),
            "features": {k: to_keras(v.numpy(), layout) for k, v in captured.items()}}
