"""Apply a recipe's mapping table strictly.

Every PyTorch tensor is consumed exactly once unless ignored, every Keras variable is assigned
exactly once, every shape is checked after its transform, and module hyper-parameters that shapes
cannot reveal (BN eps/momentum, conv strides) are compared. All problems are collected and raised
together as one MappingError. `plan_mapping` assigns nothing unless the whole plan is clean;
with assign=True (the pipeline's) it assigns as it checks, and a model it raises on is discarded.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

import numpy as np

from zoo.errors import MappingError
from zoo.recipe import Rule
from zoo.templates import TemplateError, parse_template, render_template
from zoo.transforms import ALIGNMENT, TRANSFORMS

MAX_REPORTED = 40


@dataclass(frozen=True)
class Assignment:
    torch_key: str
    keras_path: str
    rule: Rule
    array: np.ndarray
    # the array is the transform's own (shares no memory with the torch state): apply_plan may
    # hand its buffer to the Keras variable instead of copying it
    owned: bool = False


def keras_layer_path(rule: Rule, match) -> str:
    """The rule's Keras template filled for one torch module (`match` of its regex)."""
    try:
        template = parse_template(rule.keras)
        missing = sorted(template.tables - set(rule.tables))
        if missing:   # the loader checks this for recipe rules; a hand-made Rule may lack them
            raise TemplateError(f"table(s) {missing} are not given")
        return render_template(template, match, rule.tables)
    except (TemplateError, IndexError) as e:   # IndexError: a group the regex does not have
        raise MappingError(f"torch module {match.group(0)!r}: {rule.describe()}: {e}") from None


def _owners(model):
    """keras variable path -> the innermost layer that owns it."""
    owner = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for v in layer.weights:
            owner[v.path] = layer
    return owner


def match_module(module: str, rules: list[Rule], modules: dict | None = None):
    """First rule whose regex full-matches `module` (and whose module_type fits, if set)."""
    for rule in rules:
        m = rule.torch.fullmatch(module)
        if not m:
            continue
        if rule.module_type:
            if modules is None:
                raise MappingError(f"{rule.describe()} has module_type {rule.module_type!r}: "
                                   "the torch modules are needed to apply it")
            if type(modules.get(module)).__name__ != rule.module_type:
                continue
        return rule, m
    return None, None


def plan_mapping(state: dict[str, np.ndarray], model, rules: list[Rule], ignore, *,
                 modules: dict | None = None, context: str = "",
                 check_hparams: bool = True, assign: bool = False) -> list[Assignment]:
    """state: torch state_dict as NumPy; modules: torch module path -> nn.Module (module_type
    rules and hyper-parameter checks). check_hparams=False lets scripts/diff_layers.py show a
    hyper-parameter mistake numerically instead of stopping at it.

    assign: each array goes into its variable as soon as it is checked, and the plan keeps only
    the names. A plan holding every converted array beside the torch weights and the variables'
    initial values was a third copy of the weights at the conversion's peak (ResNet-50: +100 MiB).
    Any problem still raises MappingError after the whole model is checked; the partly assigned
    model is then the caller's to discard."""
    kvars = {v.path: v for v in model.weights}
    owner = _owners(model)
    errors: list[str] = []
    assigned: dict[str, str] = {}
    plan: list[Assignment] = []

    by_module: dict[str, dict[str, str]] = {}
    for key in state:
        if any(p.fullmatch(key) for p in ignore):
            continue
        module, _, leaf = key.rpartition(".")
        by_module.setdefault(module, {})[leaf] = key

    for module, leaves in by_module.items():
        rule, m = match_module(module, rules, modules)
        if rule is None:
            errors.append(f"no mapping rule matches torch module {module!r} "
                          f"(tensors: {', '.join(leaves.values())})")
            continue
        t = TRANSFORMS[rule.transform]
        try:
            layer_path = keras_layer_path(rule, m)
        except MappingError as e:
            errors.append(str(e))
            continue
        for leaf, key in leaves.items():
            spec = t.leaf(leaf)
            if spec is None:
                errors.append(f"{key}: {rule.describe()}: transform {t.name!r} has no tensor "
                              f"{leaf!r} (it maps {sorted(t.leaves)}); add an ignore pattern or "
                              f"another rule")
                continue
            kname, fn = spec
            path = f"{layer_path}/{kname}"
            var = kvars.get(path)
            if var is None:
                close = difflib.get_close_matches(path, list(kvars), n=3, cutoff=0.6)
                errors.append(f"{key}: {rule.describe()}: keras variable {path!r} does not exist"
                              + (f"; close: {close}" if close else ""))
                continue
            if path in assigned:
                errors.append(f"{key}: {rule.describe()}: keras variable {path!r} is already "
                              f"assigned from {assigned[path]!r} (duplicate assignment)")
                continue
            src = state[key]
            try:
                arr = np.ascontiguousarray(fn(src, target_shape=tuple(var.shape), **rule.args))
            except Exception as e:  # noqa: BLE001 - report, with context, whatever the layout fn hit
                errors.append(f"{key} {tuple(src.shape)} -> {path} {tuple(var.shape)}: "
                              f"{rule.describe()}: transform failed: {e}")
                continue
            if tuple(arr.shape) != tuple(var.shape):
                errors.append(f"shape mismatch: torch {key} {tuple(src.shape)} -> {t.name} -> "
                              f"{tuple(arr.shape)}, but keras {path} is {tuple(var.shape)} "
                              f"({rule.describe()})")
                continue
            assigned[path] = key
            a = Assignment(key, path, rule, arr, owned=not np.may_share_memory(arr, src))
            if assign:
                _assign(a, var)
                a = replace(a, array=None)
            plan.append(a)
        if t.check and check_hparams and modules is not None and module in modules:
            layer = next((owner[p] for p in kvars if p.startswith(layer_path + "/")), None)
            if layer is not None:
                for problem in t.check(modules[module], layer, rule.args):
                    errors.append(f"torch module {module!r} -> keras layer {layer_path!r}: "
                                  f"{problem} ({rule.describe()})")

    for path in kvars:
        if path not in assigned:
            errors.append(f"keras variable {path!r} {tuple(kvars[path].shape)} is never assigned "
                          f"(no torch tensor maps to it)")
    if errors:
        head = f"weight mapping failed{' for ' + context if context else ''} " \
               f"({len(errors)} problem(s)):"
        shown = errors[:MAX_REPORTED] + ([f"... and {len(errors) - MAX_REPORTED} more"]
                                         if len(errors) > MAX_REPORTED else [])
        raise MappingError("\n  ".join([head] + shown))
    return plan


def _handover(a: Assignment, var):
    """The array as a tensor sharing its buffer, when that is safe: the transform made it (no
    torch tensor aliases it), nothing else will write to it (the plan drops its arrays once
    applied), and it is laid out as TensorFlow's kernels assume. Assigning a NumPy array costs a
    copy into fresh pages, which for VGG's 0.5 GB of kernels took longer than building the
    model; assigning a tensor lets the variable adopt its buffer."""
    arr = a.array
    if (a.owned and arr.flags.c_contiguous and arr.flags.writeable and arr.size
            and arr.ctypes.data % ALIGNMENT == 0 and arr.dtype == np.dtype(var.dtype)):
        import tensorflow as tf
        return tf.experimental.dlpack.from_dlpack(arr.__dlpack__())
    return arr


def _assign(a: Assignment, var) -> None:
    var.assign(_handover(a, var))


def apply_plan(model, plan: list[Assignment]) -> None:
    """Assign the plan. Its owned arrays may become the variables' storage: drop them after."""
    kvars = {v.path: v for v in model.weights}
    for a in plan:
        _assign(a, kvars[a.keras_path])
