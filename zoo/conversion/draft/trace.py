"""The two sides of a draft: torch tensors grouped by module in execution order (one traced
forward pass at the declared inputs), Keras variables grouped by layer in `model.weights` order."""
from __future__ import annotations

import re

from zoo.conversion.draft.model import DraftError, KerasLayer, TorchModule
from zoo.conversion.flatten_order import find
from zoo.conversion.forward import run
from zoo.conversion.mapping import _owners
from zoo.conversion.torch_first import torch
from zoo.io_spec import to_torch


def _torch_side(module, ignore, inputs, specs):
    """(torch modules in execution order, (executed, shapes), the torch result) from one forward
    pass at the declared inputs; each Linear after a flatten gets the flatten order it saw."""
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
    executed, shapes, result, flattened = _trace(module, named, inputs, specs)
    _execution_order(mods, executed)
    for m in mods:
        m.flatten = flattened.get(m.path)
    return mods, (executed, shapes), result


def _shapes_text(inputs, specs):
    return ", ".join(f"{s.name} {list(to_torch(inputs[s.name], s.layout).shape)}" for s in specs)


def _trace(module, named, inputs, specs):
    """One forward pass: first-call order of every module (forward hook, i.e. when its call
    ends), the output shape of every module, the result, and for each Linear fed a flattened
    4-D map, in which axis order the last 4-D tensor a module returned was flattened."""
    executed: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    flattened: dict[str, dict] = {}
    last_map = []      # the last 4-D tensor a module returned (kept by reference: one at a time)
    hooks = []

    def hook(path):
        def fn(_m, _i, out):
            if torch.is_tensor(out) and out.dim() == 4:
                last_map[:] = [out]
            if path not in executed:
                executed[path] = len(executed)
                if torch.is_tensor(out):
                    shapes[path] = tuple(out.shape)
        return fn

    def pre_hook(path):
        def fn(_m, inp):
            x = inp[0] if inp else None
            if path in flattened or not last_map or not torch.is_tensor(x) or x.dim() != 2:
                return
            found = find(last_map[0].detach().numpy(), x.detach().numpy())
            if found is not None:
                flattened[path] = found
        return fn

    for path, m in named.items():
        hooks.append(m.register_forward_hook(hook(path)))
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_pre_hook(pre_hook(path)))
    try:
        result = run(module, inputs, specs)
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward: say what to pass
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DraftError(
            f"the torch forward pass failed at the input {_shapes_text(inputs, specs)} (torch "
            f"layout, batch first): {type(e).__name__}: {first}\nIf the model takes another "
            f"input, declare it: --input-size H[xW] for one image input of another size (e.g. "
            f"--input-size 48, or 48x64), or --inputs with the recipe's `inputs:` list, e.g. "
            f"--inputs '[{{name: waveform, layout: sequence, shape: [1, 16000]}}]' "
            f"(docs/recipe-format.md)") from None
    finally:
        for h in hooks:
            h.remove()
    return executed, shapes, result, flattened


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

