"""The draft's `inputs:` and `outputs:` (zoo/io_spec.py): the inputs as declared (or the default
image input), the Keras model built at them, and one output per tensor of the traced torch result,
named after the Keras model's outputs where shapes tell which is which (zoo.conversion.draft)."""
from __future__ import annotations

import dataclasses

import numpy as np

from zoo.conversion.draft.model import DraftError
from zoo.conversion.torch_first import torch
from zoo.errors import ZooError
from zoo.io_spec import DEFAULT_OUTPUTS, describe, to_keras
from zoo.models import builder_kwargs, get_builder

_DEFAULT_GENERATOR = {"image": "image", "sequence": "audio"}


def input_data(spec) -> dict:
    """One `inputs:` entry, with only the keys that differ from the defaults."""
    out = {"name": spec.name}
    if spec.layout != "tensor":
        out["layout"] = spec.layout
    out["shape"] = list(spec.shape)
    if spec.dtype != "float32":
        out["dtype"] = spec.dtype
    if spec.generator != _DEFAULT_GENERATOR.get(spec.layout, "normal"):
        out["generator"] = spec.generator
    if spec.vocab is not None:
        out["vocab"] = spec.vocab
    return out


def build_keras(builder, kwargs, classes, specs, size):
    """(model, kwargs, specs) with the builder called as the conversion will call it
    (zoo.models.builder_kwargs: classes, and input_shape for a single input). A single input with
    free axes is tried free first, then at the traced size: a builder that needs a fixed size
    (a Dense after a Flatten) gets it, and the draft declares that size."""
    attempts = [specs]
    if len(specs) == 1 and None in specs[0].shape:
        attempts.append((dataclasses.replace(specs[0], shape=specs[0].concrete(size)),))
    errors = []
    for tried in attempts:
        shape = list(tried[0].keras_shape()) if len(tried) == 1 else None
        kw = builder_kwargs(builder, kwargs, classes=classes, input_shape=shape)
        try:
            return get_builder(builder)(**kw), kw, tried
        except ZooError:
            raise
        except Exception as e:  # noqa: BLE001 - a builder rejecting its arguments
            errors.append(f"with {kw}: {type(e).__name__}: {e}")
    raise DraftError(f"Keras builder {builder!r} failed " + "; then ".join(errors))


def keras_names(model, specs) -> list[dict]:
    """Name the declared inputs like the Keras model's: a single input takes the Keras input's
    name; several must already carry the names of a dict-input Keras model."""
    if isinstance(model.input, dict):
        if set(model.input) != {s.name for s in specs}:
            raise DraftError(f"the Keras model takes inputs {sorted(model.input)}; declared: "
                             f"{[s.name for s in specs]} (--inputs must use the Keras names)")
        return list(specs)
    if len(specs) != 1:
        raise DraftError(f"{len(specs)} inputs declared but the Keras model takes one tensor")
    name = getattr(model.inputs[0], "name", None)
    return [dataclasses.replace(specs[0], name=name)] if name and name.isidentifier() \
        else list(specs)


def _elements(result):
    """[(select, tensor)] of the torch result; select None for a single tensor."""
    if torch.is_tensor(result):
        return [(None, result)]
    if isinstance(result, dict):
        items = list(result.items())
    elif isinstance(result, (list, tuple)):
        items = list(enumerate(result))
    else:
        raise DraftError(f"the torch model returns {type(result).__name__}; expected a tensor or "
                         f"a tuple/list/dict of tensors")
    bad = [k for k, v in items if not torch.is_tensor(v)]
    if bad:
        raise DraftError(f"the torch result is a {describe(result)}: element(s) {bad} are not "
                         f"tensors (nested outputs cannot be declared)")
    return items


def classification(result, module) -> tuple[set, int | None, list[str]]:
    """(selects of the classification outputs, classes, notes). An output is a classification
    when it is the only (N, num_classes) output of a model that states num_classes, or the only
    output of the model and 2-D; never guessed among several heads."""
    items = _elements(result)
    n = getattr(module, "num_classes", None)
    two_d = [(k, int(v.shape[1])) for k, v in items if v.dim() == 2 and v.shape[1] > 1]
    if isinstance(n, int) and not isinstance(n, bool):
        hits = [k for k, width in two_d if width == n]
        if len(hits) == 1:
            return {hits[0]}, n, []
        if hits:
            return set(), None, [f"outputs {hits} all have num_classes = {n} columns: none marked "
                                 f"metric: classification; mark the class scores"]
        return set(), None, []
    if len(items) == 1 and two_d:
        return {two_d[0][0]}, two_d[0][1], []
    if len(items) > 1:
        return set(), None, ["no output marked metric: classification: several outputs and no "
                             "num_classes on the torch model to tell the class scores; add "
                             "`metric: classification` to the one that is (top-k agreement is "
                             "only meaningful there)"]
    return set(), None, []


def _keras_shapes(model, inputs) -> dict | None:
    """{output key (None: a single tensor): shape with the batch} at the traced inputs."""
    import keras

    from zoo.validate import feed

    try:
        spec = model.compute_output_spec(feed(model, {k: keras.KerasTensor(v.shape, v.dtype.name)
                                                      for k, v in inputs.items()}))
    except Exception:  # noqa: BLE001 - shapes unknown: names are then not matched
        return None
    if isinstance(spec, dict):
        return {k: tuple(v.shape) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return {i: tuple(v.shape) for i, v in enumerate(spec)} if len(spec) > 1 \
            else {None: tuple(spec[0].shape)}
    return {None: tuple(spec.shape)}


def _layouts(t):
    """(layout, Keras-layout shape) a torch output could take, the plain tensor first."""
    shape = tuple(t.shape)
    out = [("tensor", shape)]
    for layout in ("image", "sequence"):
        ks = to_keras(np.empty(shape, np.float32), layout).shape
        if ks != shape:
            out.append((layout, ks))
    return out


def draft_outputs(result, model, inputs, classes_of: set) -> tuple[list[dict] | None, list[str]]:
    """(`outputs:` entries or None when the default single `logits` applies, notes)."""
    items = _elements(result)
    kshapes = _keras_shapes(model, inputs)
    notes = []
    if kshapes is None:
        notes.append("the Keras output shapes could not be computed: outputs named by position")
        kshapes = {}
    named = [k for k in kshapes if isinstance(k, str)]
    taken, out = set(), []
    for i, (select, t) in enumerate(items):
        fits = [(key, layout) for key in kshapes if key not in taken
                for layout, shape in _layouts(t) if shape == kshapes[key]]
        if isinstance(select, str) and any(key == select for key, _ in fits):
            fits = [f for f in fits if f[0] == select]
        keys = list(dict.fromkeys(k for k, _ in fits))
        if len(keys) > 1:
            notes.append(f"ambiguous: torch output {select!r} ({describe(t)}) fits Keras outputs "
                         f"{keys} by shape; took {keys[0]!r}: check `select`")
        if keys:
            key, layout = fits[0]
            taken.add(key)
        else:
            key, layout = None, "tensor"
            if kshapes:
                notes.append(f"torch output {select!r} ({describe(t)}) matches no Keras output "
                             f"by shape ({ {k: list(s) for k, s in kshapes.items()} })")
        name = key if isinstance(key, str) else (select if isinstance(select, str) and
                                                 select.isidentifier() else None)
        if name is None:
            name = ("logits" if select in classes_of else "output") if len(items) == 1 \
                else f"output{i}"
        entry = {"name": name}
        if select is not None and select != name:
            entry["select"] = select
        if layout != "tensor":
            entry["layout"] = layout
        if select in classes_of:
            entry["metric"] = "classification"
        out.append(entry)
    unused = [k for k in named if k not in taken]
    if unused:
        notes.append(f"Keras outputs {unused} match no torch output")
    default = DEFAULT_OUTPUTS[0]
    if out == [{"name": default.name, "metric": default.metric}]:
        return None, notes
    return out, notes
