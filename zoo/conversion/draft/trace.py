"""The two sides of a draft: torch tensors grouped by module in execution order (one traced
forward pass), Keras variables grouped by layer in `model.weights` order."""
from __future__ import annotations

import re

from zoo.conversion.draft.model import KerasLayer, TorchModule
from zoo.conversion.mapping import _owners
from zoo.conversion.torch_first import torch


def _torch_side(module, ignore, trace_size, in_chans):
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    named = dict(module.named_modules())
    groups: dict[str, TorchModule] = {}
    for key, arr in state.items():
        if any(re.fullmatch(p, key) for p in ignore):
            continue
        path, _, leaf = key.rpartition(".")
        if path not in groups:
            mod = named.get(path)
            groups[path] = TorchModule(path, {}, {}, mod, type(mod).__name__ if mod is not None
                                       else "?", len(groups))
        groups[path].leaves[leaf] = key
        groups[path].arrays[leaf] = arr
    mods = list(groups.values())
    executed, shapes, note = _trace(module, named, trace_size, in_chans)
    _execution_order(mods, executed)
    return mods, (executed, shapes), note


def _trace(module, named, size, in_chans):
    """One forward pass: first-call order of every module (forward hook, i.e. when its call
    ends) and the output shape of every module."""
    executed: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    hooks = []

    def hook(path):
        def fn(_m, _i, out):
            if path not in executed:
                executed[path] = len(executed)
                if torch.is_tensor(out):
                    shapes[path] = tuple(out.shape)
        return fn

    for path, m in named.items():
        hooks.append(m.register_forward_hook(hook(path)))
    note = None
    try:
        with torch.no_grad():
            module(torch.zeros(1, in_chans, size, size))
    except Exception as e:  # noqa: BLE001 - any model failure: fall back to state_dict order
        note = (f"note: the forward pass at {size}x{size} failed ({type(e).__name__}: {e}); "
                f"torch modules were ordered by state_dict order instead of execution order")
        executed.clear()
        shapes.clear()
    finally:
        for h in hooks:
            h.remove()
    return executed, shapes, note


def _execution_order(mods, executed):
    """rank = forward-hook order; modules that never ran keep their state_dict neighbours'."""
    last, keys = -1.0, {}
    for m in mods:
        if m.path in executed:
            last = keys[m.path] = float(executed[m.path])
        else:
            last = keys[m.path] = last + 1e-3
    for rank, m in enumerate(sorted(mods, key=lambda m: (keys[m.path], m.index))):
        m.rank = rank


def _keras_side(model):
    owner = _owners(model)
    layers: dict[str, KerasLayer] = {}
    for v in model.weights:
        path, _, name = v.path.rpartition("/")
        if path not in layers:
            lay = owner.get(v.path)
            layers[path] = KerasLayer(path, {}, lay, type(lay).__name__ if lay is not None else "?",
                                      len(layers), path.split("/", 1)[0])
        layers[path].variables[name] = v
    return list(layers.values())

