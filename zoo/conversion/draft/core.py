"""Build both models and draft the recipe that maps one onto the other (see the package
docstring for the steps)."""
from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

from zoo.conversion.draft.align import align
from zoo.conversion.draft.emit import IGNORE, draft_text, recipe_data
from zoo.conversion.draft.features import _infer_features
from zoo.conversion.draft.generalise import best_rules
from zoo.conversion.draft.io import build_keras, classification, draft_outputs, input_data, keras_names
from zoo.conversion.draft.model import Draft, DraftError
from zoo.conversion.draft.trace import _keras_side, _torch_side
from zoo.conversion.mapping import plan_mapping
from zoo.conversion.sources import build_source
from zoo.conversion.torch_first import torch  # before keras/tensorflow
from zoo.errors import MappingError, RecipeError, ZooError
from zoo.io_spec import default_inputs, make_inputs, to_torch
from zoo.models import BUILDERS, is_builder_name
from zoo.recipe import load_recipe

NAME_RE = re.compile(r"[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+")
TRACE_SIZE = 224


def default_name(source: str) -> str:
    arch = re.sub(r"[^A-Za-z0-9_\-]", "_", source.split(":")[-1])
    return f"draft/{arch}"


def _self_check(text, name, module, model, complete):
    """The draft must load as a recipe, and a complete one must map every tensor (hyper-parameter
    disagreements aside: they are commented in the draft and refused at conversion)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "draft.yaml"
        path.write_text(text)
        try:
            recipe = load_recipe(path)
        except RecipeError as e:
            raise DraftError(f"internal error: the draft does not load as a recipe: {e}") from None
    if complete:
        variant = recipe.variants[name]
        state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        try:
            plan_mapping(state, model, variant.rules, recipe.ignore,
                         modules=dict(module.named_modules()), check_hparams=False)
        except MappingError as e:
            raise DraftError(f"internal error: the draft's table does not map the model: {e}") \
                from None


def draft_recipe(source: str, builder: str, builder_kwargs: dict | None = None,
                 source_kwargs: dict | None = None, name: str | None = None,
                 trace_size: int | tuple[int, int] = TRACE_SIZE, inputs=None) -> Draft:
    """Build both models (random init) and draft the recipe that maps one onto the other.
    inputs: declared InputSpecs (zoo.io_spec.parse_inputs; None: one image input); trace_size:
    the size of their free axes, or (H, W) of the default image input."""
    builder_kwargs, source_kwargs = dict(builder_kwargs or {}), dict(source_kwargs or {})
    name = name or default_name(source)
    if not NAME_RE.fullmatch(name):
        raise DraftError(f"catalogue name {name!r} must look like '<source>/<arch>' "
                         "(letters, digits, _ and -)")
    if not is_builder_name(builder):
        raise DraftError(f"unknown Keras builder {builder!r}; known: {sorted(BUILDERS)} or "
                         "python:<module>:<callable>")
    try:
        with torch.random.fork_rng(devices=[]):   # deterministic init, caller's RNG untouched
            torch.manual_seed(0)
            module = build_source(source, source_kwargs)
    except ZooError:
        raise
    except Exception as e:  # noqa: BLE001 - a factory rejecting its arguments
        raise DraftError(f"building {source} with {source_kwargs} failed: "
                         f"{type(e).__name__}: {e}") from None
    module.eval()
    in_chans = int(source_kwargs.get("in_chans", 3))
    size, declared = _trace_specs(trace_size, inputs, in_chans)
    # two samples (a noise and a smooth one) of the validation batch: enough for shapes and for
    # telling flatten orders apart
    traced = {k: v[:2] for k, v in make_inputs(declared, size, {}).items()}
    tmods, trace, result = _torch_side(module, IGNORE, traced, declared)
    classes_of, classes, out_notes = classification(result, module)
    model, _kwargs, specs = build_keras(builder, builder_kwargs, classes, declared, size)
    specs = keras_names(model, specs)
    traced = {s.name: traced[d.name] for s, d in zip(specs, declared)}
    outputs, more = draft_outputs(result, model, traced, classes_of)
    out_notes += more
    klayers = _keras_side(model)

    pairs = align(tmods, klayers)
    rules = best_rules(pairs, {m.path: m.type_name for m in tmods})
    matched_t = {p.torch.path for p in pairs}
    matched_k = {p.keras.path for p in pairs}
    unmatched_torch = [(k, m.arrays[leaf].shape) for m in tmods if m.path not in matched_t
                       for leaf, k in m.leaves.items()]
    unmatched_keras = [(v.path, tuple(v.shape)) for lay in klayers if lay.path not in matched_k
                       for v in lay.variables.values()]
    image = len(specs) == 1 and specs[0].layout == "image"
    kshape = traced[specs[0].name].shape if image else None
    features, feature_note = _infer_features(model, pairs, trace, kshape)
    clf = [p for p in pairs if p.transform == "linear" or p.torch.type_name == "Linear"]
    clf = [p for p in clf if classes is not None and p.torch.arrays["weight"].shape[0] == classes]
    classifier = max(clf, key=lambda p: p.torch.rank).torch.path if clf else None
    io, in_notes = _io_data(specs, outputs, size, in_chans, declared)
    notes = [f"inputs: {n}" for n in in_notes if "inputs" not in io] + \
        [f"outputs: {n}" for n in out_notes if "outputs" not in io]
    data = recipe_data(name, source, source_kwargs, builder, builder_kwargs, rules, features,
                       classifier, io)
    text = draft_text(data, rules, source, builder, _shapes(traced, specs), feature_note, notes,
                      unmatched_torch, unmatched_keras, {"inputs": in_notes, "outputs": out_notes})
    if rules:   # zoo.recipe refuses an empty mapping: a draft without rules is only a report
        _self_check(text, name, module, model, complete=not (unmatched_torch or unmatched_keras))
    return Draft(name, source, builder, text, data, rules, pairs, [k for k, _ in unmatched_torch],
                 [k for k, _ in unmatched_keras], features,
                 notes + in_notes + out_notes + ([feature_note] if feature_note else []))


def _trace_specs(trace_size, inputs, in_chans):
    """(size of the free axes, the declared input specs): `inputs` as given, else the default
    image input, with a fixed (H, W) when trace_size is a pair."""
    if inputs:
        if not isinstance(trace_size, int):
            raise DraftError("an input size H x W is for the default image input; with declared "
                             "inputs, give their shapes in `inputs` (the size fills free axes)")
        return trace_size, tuple(inputs)
    if isinstance(trace_size, int):
        return trace_size, default_inputs(in_chans)
    h, w = trace_size
    spec = default_inputs(in_chans)[0]
    return h, (dataclasses.replace(spec, shape=(in_chans, h, w)),)


def _shapes(inputs, specs):
    return ", ".join(f"{s.name} {list(to_torch(inputs[s.name], s.layout).shape[1:])}"
                     for s in specs)


def _io_data(specs, outputs, size, in_chans, declared):
    """The draft's input_size / inputs / outputs keys (only where they differ from the defaults),
    and the notes about the inputs."""
    io, notes = {}, []
    default = default_inputs(in_chans)[0]
    plain = len(specs) == 1 and dataclasses.replace(specs[0], name=default.name) == default
    if size != TRACE_SIZE and any(None in s.shape for s in declared):
        io["input_size"] = size
    if not plain:
        io["inputs"] = [input_data(s) for s in specs]
        if declared[0].shape != specs[0].shape:
            notes.append(f"the Keras builder needs a fixed input size: declared at the traced "
                         f"size {list(specs[0].shape)}")
    if outputs is not None:
        io["outputs"] = outputs
    return io, notes
