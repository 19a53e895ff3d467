"""Build both models and draft the recipe that maps one onto the other (see the package
docstring for the steps)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from zoo.conversion.draft.align import align
from zoo.conversion.draft.emit import IGNORE, draft_text, recipe_data
from zoo.conversion.draft.features import _infer_features, _num_classes
from zoo.conversion.draft.generalise import best_rules
from zoo.conversion.draft.model import Draft, DraftError
from zoo.conversion.draft.trace import _keras_side, _torch_side
from zoo.conversion.mapping import plan_mapping
from zoo.conversion.sources import build_source
from zoo.conversion.torch_first import torch  # before keras/tensorflow
from zoo.errors import MappingError, RecipeError, ZooError
from zoo.models import BUILDERS, get_builder, is_builder_name
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
                 trace_size: int = TRACE_SIZE) -> Draft:
    """Build both models (random init) and draft the recipe that maps one onto the other."""
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
    tmods, trace, trace_note = _torch_side(module, IGNORE, trace_size, in_chans)
    two_d = [m.arrays["weight"].shape[0] for m in tmods if m.arrays.get("weight") is not None
             and m.arrays["weight"].ndim == 2]
    classes = _num_classes(module, two_d)
    kwargs = dict(builder_kwargs)
    if classes is not None:
        kwargs.setdefault("classes", classes)
    kwargs.setdefault("input_shape", [None, None, in_chans])
    try:
        model = get_builder(builder)(**kwargs)
    except ZooError:
        raise
    except Exception as e:  # noqa: BLE001 - a builder rejecting its arguments
        raise DraftError(f"Keras builder {builder!r} failed with {kwargs}: "
                         f"{type(e).__name__}: {e}") from None
    klayers = _keras_side(model)

    pairs = align(tmods, klayers)
    rules = best_rules(pairs, {m.path: m.type_name for m in tmods})
    matched_t = {p.torch.path for p in pairs}
    matched_k = {p.keras.path for p in pairs}
    unmatched_torch = [(k, m.arrays[leaf].shape) for m in tmods if m.path not in matched_t
                       for leaf, k in m.leaves.items()]
    unmatched_keras = [(v.path, tuple(v.shape)) for lay in klayers if lay.path not in matched_k
                       for v in lay.variables.values()]
    features, feature_note = _infer_features(model, pairs, trace, trace_size, in_chans)
    clf = [p for p in pairs if p.transform == "linear" or p.torch.type_name == "Linear"]
    clf = [p for p in clf if classes is not None and p.torch.arrays["weight"].shape[0] == classes]
    classifier = max(clf, key=lambda p: p.torch.rank).torch.path if clf else None
    notes = [trace_note] if trace_note else []
    data = recipe_data(name, source, source_kwargs, builder, builder_kwargs, rules, features,
                       classifier)
    text = draft_text(data, rules, source, builder, trace_size, feature_note, notes,
                      unmatched_torch, unmatched_keras)
    if rules:   # zoo.recipe refuses an empty mapping: a draft without rules is only a report
        _self_check(text, name, module, model, complete=not (unmatched_torch or unmatched_keras))
    return Draft(name, source, builder, text, data, rules, pairs, [k for k, _ in unmatched_torch],
                 [k for k, _ in unmatched_keras], features,
                 notes + ([feature_note] if feature_note else []))

