"""Which (torch module, Keras layer) pairs are compatible, and the minimum-cost assignment that
picks one Keras layer per torch module (order, names, hyper-parameters; zoo.conversion.draft)."""
from __future__ import annotations

import difflib
import re

import numpy as np
from scipy.optimize import linear_sum_assignment

from zoo.conversion.draft.model import MAX_NAMED, KerasLayer, Pair, TorchModule
from zoo.conversion.flatten_order import CHW, HWC, describe, keras_flatten, keras_permute, same
from zoo.conversion.torch_first import torch
from zoo.transforms import TRANSFORMS

# assignment cost: ORDER_WEIGHT per step of (normalised) execution-order distance, NAME_WEIGHT
# times the name dissimilarity (0..1), HPARAM_PENALTY when stride/eps/groups ... disagree.
ORDER_WEIGHT = 0.05
NAME_WEIGHT = 1.0
HPARAM_PENALTY = 1.0
SAME_NAME_BONUS = 1.0     # identical normalised names ('Mixed_5b.branch1x1' ~ 'Mixed_5b_branch1x1')
# cost of an incompatible pair: above any total of compatible costs (ORDER_WEIGHT * scale is at
# most ~0.05 per module), so the assignment first matches as many compatible pairs as it can
_INCOMPATIBLE = 1e6
# names decide a pair only when its name similarity is at least NAME_MIN and beats every other
# candidate's by NAME_MARGIN (one differing digit in resnet152's longest names is ~0.05)
NAME_MIN = 0.3
NAME_MARGIN = 0.02

# torch module class (any class in its MRO) -> transforms it can use; first match wins
_TORCH_HINTS = (("GroupNorm", {"groupnorm"}), ("LayerNorm", {"layernorm"}),
                ("BatchNorm", {"batchnorm"}), ("PReLU", {"prelu"}), ("Linear", {"linear"}),
                ("Conv1d", {"conv1d"}))
# keras layer class -> transforms
_KERAS_HINTS = (("DepthwiseConv2D", {"depthwise"}), ("Conv2D", {"conv2d"}), ("Conv1D", {"conv1d"}),
                ("Dense", {"linear"}),
                ("BatchNormalization", {"batchnorm"}), ("LayerNormalization", {"layernorm"}),
                ("GroupNormalization", {"groupnorm"}), ("PReLU", {"prelu"}))


def _mro_names(obj):
    return [c.__name__ for c in type(obj).__mro__] if obj is not None else []


def _torch_hint(mod: TorchModule) -> set[str]:
    names = _mro_names(mod.module)
    m = mod.module
    if isinstance(m, torch.nn.Conv2d):
        depthwise = m.groups > 1 and m.groups == m.in_channels
        return {"depthwise", "conv2d"} if depthwise else {"conv2d"}
    for key, hint in _TORCH_HINTS:
        if any(key in n for n in names):
            return hint
    return set()


def _keras_hint(layer: KerasLayer) -> set[str]:
    names = _mro_names(layer.layer)
    for key, hint in _KERAS_HINTS:
        if key in names:
            return hint
    return set()


def _transform_fits(name, mod: TorchModule, layer: KerasLayer) -> bool:
    t = TRANSFORMS[name]
    if t.required_args:            # e.g. linear_after_flatten needs chw: never guessed
        return False
    if t.passthrough and set(mod.leaves) != set(layer.variables):
        return False
    if name == "batchnorm" and "running_mean" not in mod.leaves and \
            "batchnorm" not in _torch_hint(mod):
        return False               # weight + bias alone is a norm/affine, not a BatchNorm
    targets = {}
    for leaf in mod.leaves:
        spec = t.leaf(leaf)
        if spec is None:
            return False
        targets[leaf] = spec
    if sorted(k for k, _ in targets.values()) != sorted(layer.variables):
        return False
    for leaf, (kname, fn) in targets.items():
        want = layer.shape(kname)
        try:
            got = np.shape(fn(mod.arrays[leaf], target_shape=want))
        except Exception:  # noqa: BLE001 - a layout that does not fit is just not compatible
            return False
        if tuple(got) != want:
            return False
    return True


def _fitting(mod, layer):
    """Transforms that fit (mod, layer), narrowed by the torch type, then the keras class."""
    fits = [n for n in TRANSFORMS if _transform_fits(n, mod, layer)]
    for hint in (_torch_hint(mod), _keras_hint(layer)):
        narrowed = [n for n in fits if n in hint]
        if narrowed:
            fits = narrowed
    return fits


def _problems(name, mod, layer):
    t = TRANSFORMS[name]
    if t.check is None or mod.module is None or layer.layer is None:
        return []
    try:
        return list(t.check(mod.module, layer.layer, {}))
    except Exception:  # noqa: BLE001 - a check that cannot run says nothing
        return []


def normalise_name(name: str) -> str:
    """'layer1.0.conv1' -> 'layer.1.0.conv.1'; 'stage1_block0_conv1' -> 'stage.1.block.0.conv.1'."""
    s = re.sub(r"(\d+)", r".\1.", name.lower())
    return ".".join(t for t in re.split(r"[^a-z0-9]+", s) if t)


def name_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, normalise_name(a), normalise_name(b),
                                   autojunk=False).ratio()


def assign(costs: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """One-to-one choice of compatible (torch, keras) index pairs, `costs` giving each compatible
    pair's cost: as many pairs as possible, then the least total cost (scipy's
    linear_sum_assignment; an incompatible pair costs more than any set of compatible ones, and is
    never returned)."""
    if not costs:
        return []
    rows = sorted({i for i, _ in costs})
    cols = sorted({j for _, j in costs})
    at_row, at_col = {i: a for a, i in enumerate(rows)}, {j: b for b, j in enumerate(cols)}
    mat = np.full((len(rows), len(cols)), _INCOMPATIBLE)
    for (i, j), c in costs.items():
        mat[at_row[i], at_col[j]] = c
    chosen = zip(*linear_sum_assignment(mat))
    return [(rows[a], cols[b]) for a, b in chosen if mat[a, b] < _INCOMPATIBLE]


def align(tmods: list[TorchModule], klayers: list[KerasLayer]) -> list[Pair]:
    """Match torch modules to keras layers (see the module docstring); one Pair per match."""
    cache: dict = {}
    tsig = [(m.type_name, tuple(sorted(_torch_hint(m))),
             tuple((k, a.shape) for k, a in m.arrays.items())) for m in tmods]
    ksig = [(lay.class_name, tuple((k, lay.shape(k)) for k in lay.variables)) for lay in klayers]
    fits: dict[tuple[int, int], list[str]] = {}
    for i, mod in enumerate(tmods):
        for j, lay in enumerate(klayers):
            key = (tsig[i], ksig[j])
            if key not in cache:
                cache[key] = _fitting(mod, lay)
            if cache[key]:
                fits[i, j] = cache[key]
    nt, nk = len(tmods), len(klayers)
    scale = max(nt, nk)
    tpos = [m.rank / max(nt - 1, 1) for m in tmods]
    kpos = [lay.rank / max(nk - 1, 1) for lay in klayers]
    sims, probs = {}, {}

    def cost(i, j):
        sims[i, j] = name_similarity(tmods[i].path, klayers[j].path)
        # of several fitting transforms, the first whose hyper-parameter check passes
        checked = [(t, _problems(t, tmods[i], klayers[j])) for t in fits[i, j]]
        fits[i, j] = [t for t, pr in checked if not pr] + [t for t, pr in checked if pr]
        probs[i, j] = next(pr for t, pr in checked if t == fits[i, j][0])
        return (ORDER_WEIGHT * abs(tpos[i] - kpos[j]) * scale + NAME_WEIGHT * (1 - sims[i, j])
                - SAME_NAME_BONUS * (sims[i, j] == 1.0) + HPARAM_PENALTY * bool(probs[i, j]))

    costs = {ij: cost(*ij) for ij in fits}
    chosen = assign(costs)

    by_t: dict[int, list[int]] = {}
    by_k: dict[int, list[int]] = {}
    for i, j in fits:
        by_t.setdefault(i, []).append(j)
        by_k.setdefault(j, []).append(i)
    pairs = []
    for i, j in sorted(chosen, key=lambda ij: tmods[ij[0]].index):
        f = fits[i, j]
        p = Pair(tmods[i], klayers[j], f[0], f, probs[i, j])
        alt_k = [b for b in by_t[i] if b != j]
        alt_t = [a for a in by_k[j] if a != i]
        if alt_k or alt_t:
            s = sims[i, j]
            rival_k = [b for b in alt_k if sims[i, b] > s - NAME_MARGIN or s < NAME_MIN]
            rival_t = [a for a in alt_t if sims[a, j] > s - NAME_MARGIN or s < NAME_MIN]
            if rival_k or rival_t:
                p.decided_by = "order"
                near_k = sorted(rival_k, key=lambda b: abs(kpos[b] - kpos[j]))[:MAX_NAMED]
                near_t = sorted(rival_t, key=lambda a: abs(tpos[a] - tpos[i]))[:MAX_NAMED]
                p.alternatives = ([f"torch {tmods[a].path}" for a in near_t]
                                  + [f"keras {klayers[b].path}" for b in near_k])
            else:
                p.decided_by = "name"
        _after_flatten(p)
        pairs.append(p)
    return pairs


def _after_flatten(pair: Pair) -> None:
    """A Dense fed by a Flatten of a spatial map: the transform follows the two flatten orders,
    torch's as traced (its forward may permute first) and the Keras graph's (a Permute before
    the Flatten): the same order -> linear; torch (C, H, W) and Keras (H, W, C) ->
    linear_after_flatten with chw; anything else no transform reorders: say so."""
    if pair.transform != "linear" or pair.keras.layer is None:
        return
    found = keras_flatten(pair.keras.layer)
    if found is None:
        return
    korder, (h, w, c) = found
    if h * w == 1 or c * h * w != pair.torch.arrays["weight"].shape[1]:
        return
    chw, k = (c, h, w), pair.keras.path
    traced = pair.torch.flatten
    torder = traced["orders"][0] if traced and traced["orders"] and traced["chw"] == chw else None
    if torder is None:
        why = ("the traced values fit no single axis order" if traced and traced["chw"] == chw
               else "no flattened 4-D map of that shape was traced before it")
        if same(korder, HWC, chw):
            pair.transform, pair.args = "linear_after_flatten", {"chw": list(chw)}
        pair.doubt = (f"{k} follows a Flatten of {describe(korder)}, but torch's flatten order is "
                      f"unknown ({why}); chose {pair.transform} assuming torch flattens NCHW "
                      f"directly, i.e. {describe(CHW)}")
    elif same(torder, korder, chw):
        how = "" if same(torder, CHW, chw) else " (its forward permutes first)"
        pair.note = (f"torch flattens {describe(torder)}{how} and the Keras model's Flatten "
                     f"before {k} does too: plain linear")
    elif same(torder, CHW, chw) and same(korder, HWC, chw):
        pair.transform, pair.args = "linear_after_flatten", {"chw": list(chw)}
        pair.note = (f"{k} follows a Flatten of (H, W, C) = ({h}, {w}, {c}): rows reordered from "
                     f"torch's (C, H, W) flatten (linear_after_flatten)")
    else:
        pair.doubt = (f"torch flattens {describe(torder)}, the Keras model {describe(korder)}; no "
                      f"transform reorders rows between these: add "
                      f"keras.layers.Permute({keras_permute(torder)}) right before the Flatten "
                      f"feeding {k} (then transform linear)")
