"""In which axis order a feature map was flattened before a Linear/Dense.

torch flattens an NCHW map in (C, H, W) order unless its forward permutes first (MTCNN-style
heads flatten `x.permute(0, 3, 2, 1)`, i.e. (W, H, C)); a Keras model flattens its NHWC map in
(H, W, C) order unless a Permute layer comes first. The drafter (zoo.conversion.draft) reads the
orders off a traced forward pass and the Keras graph to pick the transform; the layer diff
(zoo.conversion.divergence) names a flatten-order mistake from the numbers.

Orders are tuples of the torch axis names "C", "H", "W". NumPy only; Keras inside functions.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy.stats import spearmanr

CHW = ("C", "H", "W")            # torch's own flatten of an NCHW map
HWC = ("H", "W", "C")            # Keras' flatten of an NHWC map
# exact agreement, in max|d| / max|ref|: float32 copies of the same values
EXACT = 1e-6
# when no order is exact (an elementwise op such as torch.relu ran between the map and the
# flatten), the rank correlation (Spearman: ties, such as ReLU's zeros, share a rank) that lets
# one order explain the flattened values; x against relu(x) is ~0.93, unrelated orders ~0
CORRELATED = 0.85


def describe(order) -> str:
    return f"({', '.join(order)})"


def orders(chw) -> dict[tuple, np.ndarray]:
    """{order: flat index} for every axis order of a (C, H, W) map that gives a distinct
    flattening (map.transpose(order).reshape(-1) == map.reshape(-1)[index]); when sizes of 1
    make several orders equal, the first of CHW, HWC, then the others names them."""
    grid = np.arange(int(np.prod(chw))).reshape(tuple(chw))
    out: dict[tuple, np.ndarray] = {}
    perms = [CHW, HWC] + [p for p in itertools.permutations(CHW) if p not in (CHW, HWC)]
    for order in perms:
        index = grid.transpose([CHW.index(a) for a in order]).reshape(-1)
        if not any(np.array_equal(index, seen) for seen in out.values()):
            out[order] = index
    return out


def same(a, b, chw) -> bool:
    """Whether two orders flatten a map of this (C, H, W) shape identically."""
    grid = np.arange(int(np.prod(chw))).reshape(tuple(chw))
    flat = [grid.transpose([CHW.index(x) for x in o]).reshape(-1) for o in (a, b)]
    return bool(np.array_equal(*flat))


def _rel(ref, out):
    return float(np.abs(ref - out).max() / max(np.abs(ref).max(), 1e-30))


def find(maps, flat, tol: float = EXACT) -> dict | None:
    """Which orders of `maps` (N, C, H, W) give `flat` (N, C*H*W), the values a Linear consumed:
    {"orders": [...], "exact": bool, "chw": (C, H, W)}, or None when the sizes do not fit.
    Orders equal within `tol` (max rel) first; otherwise the order whose values are
    monotonically related to `flat` (an activation between the map and the flatten) if exactly
    one is; else no order."""
    maps, flat = np.asarray(maps, np.float64), np.asarray(flat, np.float64)
    if maps.ndim != 4 or flat.ndim != 2 or maps[0].size != flat.shape[1] or len(maps) != len(flat):
        return None
    chw = tuple(int(d) for d in maps.shape[1:])
    base = maps.reshape(len(maps), -1)
    candidates = orders(chw)
    exact = [o for o, idx in candidates.items() if _rel(flat, base[:, idx]) < tol]
    if exact:
        return {"orders": exact, "exact": True, "chw": chw}
    # the first sample only: validation batches start with a noise image, whose flattened values
    # are nearly uncorrelated between wrong orders (smooth images are not)
    score = {o: float(spearmanr(base[0, idx], flat[0])[0]) for o, idx in candidates.items()}
    fitting = [o for o, s in score.items() if s > CORRELATED]
    return {"orders": fitting if len(fitting) == 1 else [], "exact": False, "chw": chw}


def keras_permute(order) -> tuple:
    """Permute dims that make a Keras NHWC map flatten in `order`."""
    return tuple(1 + HWC.index(a) for a in order)


def keras_flatten(layer) -> tuple[tuple, tuple] | None:
    """(order, (H, W, C)) if `layer` (a Dense) consumes a Flatten of a 4-D NHWC map, looking
    through Dropout/Identity/activations between them and Permute layers before the Flatten;
    None otherwise (no Flatten, shared layers, subclassed models)."""
    import keras

    passthrough = (keras.layers.Dropout, keras.layers.Identity, keras.layers.Activation,
                   keras.layers.ReLU)
    try:
        t = layer.input
        producer = t._keras_history.operation
        while isinstance(producer, passthrough):
            t = producer.input
            producer = t._keras_history.operation
        if not isinstance(producer, keras.layers.Flatten):
            return None
        t = producer.input
        permutes = []
        while isinstance(t._keras_history.operation, keras.layers.Permute):
            permutes.append(t._keras_history.operation.dims)
            t = t._keras_history.operation.input
    except (AttributeError, ValueError):
        return None
    shape = tuple(t.shape)
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    order = HWC
    for dims in reversed(permutes):          # applied from the map towards the Flatten
        order = tuple(order[d - 1] for d in dims)
    return order, shape[1:]
