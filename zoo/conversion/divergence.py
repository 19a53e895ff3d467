"""Find where a converted model diverges: compare every mapped PyTorch module's output with its
Keras counterpart (the correspondence comes from the mapping table), in execution order, and
test a few hypotheses on the first layer that exceeds the tolerance.

Used by zoo.conversion.pipeline (a failed conversion reports its first divergent layer) and by
zoo.conversion.diff (scripts/diff_layers.py); it imports neither, so they do not import each other.
"""
from __future__ import annotations

import numpy as np

from zoo.conversion.flatten_order import CHW, HWC, describe, find, keras_permute, same
from zoo.conversion.forward import as_inputs, feature_layout, run
from zoo.conversion.torch_first import torch
from zoo.io_spec import LAYOUTS, to_torch
from zoo.validate import compare, feed

F = torch.nn.functional
# hypotheses are accepted when they explain the keras output this well
EXPLAINED = 1e-3


def _keras_input(layer):
    """The tensor a mapped layer consumes, looking through explicit padding layers (the torch
    module pads internally, so its input is the unpadded tensor)."""
    import keras

    pads = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
    t = layer.input
    while True:
        producer = t._keras_history.operation if hasattr(t, "_keras_history") else None
        if isinstance(producer, pads):
            t = producer.input
        else:
            return t


def _pairs(plan):
    seen, pairs = set(), []
    for a in plan:
        pair = (a.torch_key.rpartition(".")[0], a.keras_path.rpartition("/")[0])
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def _rel(ref, out):
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        return float("inf")
    return float(np.abs(ref - out).max() / max(np.abs(ref).max(), 1e-30))


def _same_pads(size, k, s, d):
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _torch_activation(op):
    """The torch function of an op that _Consumers recorded (softmax over channels, as the Keras
    layer's softmax over its last axis), or the identity."""
    if op is None:
        return lambda z: z
    if op == "softmax":
        return lambda z: F.softmax(z, 1)
    return getattr(F, op, None) or getattr(torch, op, None) or (lambda z: z)


def _layer_hypotheses(module, x, y_keras, baseline, post=lambda z: z):
    """What single mistake in this layer reproduces the Keras output (given the right input)?
    A hypothesis counts when it explains the Keras output far better than the correct layer does
    (baseline: the error of the torch output); the best fits come first. post: the activation
    the Keras layer fuses, applied to each hypothesis."""
    x = torch.from_numpy(np.ascontiguousarray(x))
    fits = []

    def test(label, fn):
        with torch.no_grad():
            try:
                y = post(fn()).numpy()
            except RuntimeError:
                return
        err = _rel(y, y_keras)
        if err < min(EXPLAINED, 0.1 * baseline):
            fits.append((err, label))

    if isinstance(module, torch.nn.Conv2d):
        w, b = module.weight, module.bias
        st, pd, dl, g = module.stride, module.padding, module.dilation, module.groups
        if w.shape[2] == w.shape[3] and w.shape[2] > 1:
            test("transposed kernel: kh and kw swapped (kernel layout)",
                 lambda: F.conv2d(x, w.transpose(2, 3), b, st, pd, dl, g))
        if any(p > 0 for p in pd) or any(s > 1 for s in st):
            (t, bo) = _same_pads(x.shape[2], w.shape[2], st[0], dl[0])
            (le, r) = _same_pads(x.shape[3], w.shape[3], st[1], dl[1])
            test("wrong padding: TF 'same' (extra row/column at the end) instead of torch's "
                 f"symmetric padding={tuple(pd)}",
                 lambda: F.conv2d(F.pad(x, (le, r, t, bo)), w, b, st, 0, dl, g))
        if w.shape[2] > 1:
            test("wrong stride", lambda: F.conv2d(x, w, b, 1, pd, dl, g)[..., ::st[0], ::st[1]]
                 if st != (1, 1) else F.conv2d(x, w, b, 2, pd, dl, g))
    elif isinstance(module, torch.nn.Conv1d) and module.weight.shape[2] > 1:
        test("kernel taps reversed (the kernel's length axis flipped)",
             lambda: F.conv1d(x, module.weight.flip(2), module.bias, module.stride,
                              module.padding, module.dilation, module.groups))
    elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        for eps in (1e-3, 1e-5, 1e-6, 1e-12, 1.001e-5):
            if not np.isclose(eps, module.eps):
                test(f"wrong eps: keras uses {eps:g}, torch {module.eps:g}",
                     lambda eps=eps: F.batch_norm(x, module.running_mean, module.running_var,
                                                  module.weight, module.bias, False, 0.0, eps))
        test("running_mean and running_var swapped",
             lambda: F.batch_norm(x, module.running_var, module.running_mean, module.weight,
                                  module.bias, False, 0.0, module.eps))
    elif isinstance(module, torch.nn.LayerNorm):
        for eps in (1e-3, 1e-5, 1e-6, 1e-12):
            if not np.isclose(eps, module.eps):
                test(f"wrong eps: keras uses {eps:g}, torch {module.eps:g}",
                     lambda eps=eps: F.layer_norm(x, module.normalized_shape, module.weight,
                                                  module.bias, eps))
    fits.sort()
    # several eps values can fit; the best one is the answer
    best = [label for _, label in fits]
    eps = [b for b in best if b.startswith("wrong eps")]
    return [b for b in best if not b.startswith("wrong eps")] + eps[:1]


ACTIVATIONS = {
    "identity": lambda z: z, "relu": F.relu, "relu6": F.relu6, "silu": F.silu,
    "gelu (exact)": F.gelu, "gelu (tanh approximation)": lambda z: F.gelu(z, approximate="tanh"),
    "hardswish": F.hardswish, "sigmoid": torch.sigmoid, "leaky_relu(0.01)": F.leaky_relu,
    "leaky_relu(0.1)": lambda z: F.leaky_relu(z, 0.1), "mish": F.mish, "tanh": torch.tanh,
}


def _between_hypotheses(z_torch, x_torch, x_keras):
    """The error entered between two compared layers: an unmapped elementwise op (activation)?
    z: previous compared output (agrees); x: this layer's input on each side."""
    if z_torch is None or np.shape(z_torch) != np.shape(x_torch):
        return []
    z = torch.from_numpy(np.ascontiguousarray(z_torch))
    with torch.no_grad():
        acts = {k: f(z).numpy() for k, f in ACTIVATIONS.items()}
    t_err = sorted((_rel(a, x_torch), k) for k, a in acts.items())
    k_err = sorted((_rel(a, x_keras), k) for k, a in acts.items())
    (te, t_act), (ke, k_act) = t_err[0], k_err[0]
    if te < EXPLAINED and ke < EXPLAINED and t_act != k_act and ke < 0.1 * _rel(x_torch, x_keras):
        return [f"wrong activation: torch applies {t_act}, keras {k_act}"]
    return []


def _flatten_hypotheses(maps, x_torch, x_keras, tolerance):
    """A Linear's input differs: does it hold the last compared 4-D map's values (torch layout,
    agreeing on both sides) flattened in another axis order on each side?"""
    if maps is None or x_torch is None or np.ndim(x_torch) != 2 or np.shape(x_torch) != np.shape(x_keras):
        return []
    t, k = find(maps, x_torch, tolerance), find(maps, x_keras, tolerance)
    if not (t and k and t["orders"] and k["orders"]):
        return []
    (to, *_), (ko, *_), chw = t["orders"], k["orders"], t["chw"]
    if same(to, ko, chw):
        return []
    if same(to, CHW, chw) and same(ko, HWC, chw):
        fix = (f"use transform linear_after_flatten (args: {{chw: {list(chw)}}}) for the Linear, "
               f"or add keras.layers.Permute({keras_permute(to)}) before the Flatten")
    else:
        fix = (f"add keras.layers.Permute({keras_permute(to)}) before the Flatten (then transform "
               f"linear): no transform reorders rows between these orders")
    return [f"flatten order: torch flattens {describe(to)}, the Keras model {describe(ko)}: {fix}"]


# ops that pass a tensor on unchanged at inference: the activation after a mapped module is the
# first other op that consumes it
_PASS_THROUGH = {"detach", "clone", "contiguous", "dropout", "alpha_dropout", "feature_dropout",
                 "feature_alpha_dropout", "to", "cpu", "float", "__get__"}


class _Consumers(torch.overrides.TorchFunctionMode):
    """During the torch forward pass, the first op applied to each watched tensor (a mapped
    module's output whose Keras twin fuses an activation), whether a module (nn.Softmax) or a
    call (torch.relu) applies it: {torch module: (result, op name)}."""

    def __init__(self):
        super().__init__()
        self.watch, self.found = {}, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        entry = self.watch.get(id(args[0])) if args else None
        if entry is not None and entry[0] is args[0] and torch.is_tensor(out) \
                and out.shape == args[0].shape:
            name = getattr(func, "__name__", str(func))
            if name in _PASS_THROUGH:
                self.watch[id(out)] = (out, entry[1])
            elif entry[1] not in self.found:
                self.found[entry[1]] = (out.detach().clone().numpy(), name)
        return out


def _fused_activation(layer):
    """The activation a Keras layer applies after its weights (Dense/Conv activation=...), or
    None."""
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", None)
    return None if act is None or name in (None, "linear") else name


def _norm_output_module(module):
    """Where a module's own output appears. timm's BatchNormAct2d/GroupNormAct apply their
    activation inside forward(), while the Keras twin is the norm alone with the activation as the
    next layer: their norm output is what leaves the (identity unless training) `drop` submodule."""
    drop, act = getattr(module, "drop", None), getattr(module, "act", None)
    norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)
    if isinstance(module, norms) and isinstance(drop, torch.nn.Module) and act is not None:
        return drop
    return module


# torch's convolution and normalisation kernels take and give channels-first tensors (NCHW,
# NCL) whatever layout a model keeps between them: timm Swin's patch embedding is an NCHW conv
# whose output is then permuted to the NHWC of every later module (`feature_layout: tensor`)
_CHANNELS_FIRST = (torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._BatchNorm,
                   torch.nn.GroupNorm, torch.nn.modules.instancenorm._InstanceNorm)
_CHANNELS_FIRST_LAYOUT = {4: "image", 3: "sequence"}


def _module_layout(module, ndim, declared):
    """The torch layout of a module's input and output: channels-first for the modules above,
    else the recipe's (`feature_layout`, or the first input's)."""
    if isinstance(module, _CHANNELS_FIRST) and ndim in _CHANNELS_FIRST_LAYOUT:
        return _CHANNELS_FIRST_LAYOUT[ndim]
    return declared


def _as_torch(keras_array, torch_array, preferred):
    """A Keras tensor laid out as its torch twin: in the preferred layout when the shapes then
    agree; else in the layout that makes them agree (torch permutes between modules: ConvNeXt's
    NHWC Linear blocks in an NCHW model); else reshaped row-major to torch's shape when the sizes
    and the channel (last) axis agree: torch merges axes that Keras keeps apart, which moves no
    value (Swin's (B*windows, N, C) windows and (B, H*W, C) tokens against Keras'
    (B, nh, nw, N, C) and (B, H, W, C)). Otherwise in the preferred layout (shapes differ)."""
    keras_array = np.asarray(keras_array)
    if torch_array is None:
        return to_torch(keras_array, preferred)
    shape = np.shape(torch_array)
    for layout in (preferred, *LAYOUTS):
        arr = to_torch(keras_array, layout)
        if arr.shape == shape:
            return arr
    if keras_array.size == np.size(torch_array) and keras_array.shape[-1:] == shape[-1:]:
        return keras_array.reshape(shape)
    return to_torch(keras_array, preferred)


def _containers(pairs, layers) -> dict:
    """Torch modules that run compared submodules and whose Keras twin sits between the twins of
    two of them: timm Swin's `attn` owns the position-bias table and runs qkv, the attention and
    proj, its Keras twin is the attention core alone. {module: (before, after)}: the twin reads
    what the twin of `before` gives (None: not a compared layer) and gives what the twin of
    `after` reads, so it is compared with torch's tensors there, not with the module's output
    (proj's, compared on its own row)."""
    found = {}
    for tname, kname in pairs:
        inner = [(t, layers[k]) for t, k in pairs if t.startswith(tname + ".")]
        twin = layers[kname]
        after = next((t for t, layer in inner if _keras_input(layer) is twin.output), None)
        if after is not None:
            found[tname] = (next((t for t, layer in inner
                                  if layer.output is _keras_input(twin)), None), after)
    return found


def _execution_order(order, inside, captured) -> list:
    """Torch's hook order, each container's row moved to just before the submodule that reads
    its twin's output (the container's own hook fires last, after that submodule's)."""
    ahead = {after: t for t, (_, after) in inside.items()}
    sequence = []
    for tname in order:
        if tname in inside:
            continue
        if tname in ahead and ahead[tname] in captured:
            sequence.append(ahead[tname])
        sequence.append(tname)
    return sequence


def layer_diff(tm, model, plan, inputs, tolerance, in_specs=None, layout=None) -> dict:
    """Per-layer comparison in torch execution order; the first divergent layer and a diagnosis.
    layout: the torch layout of the layer outputs when the recipe declares one
    (`feature_layout`; Swin's maps are NHWC in torch); convs and norms are read channels-first
    whatever it says, and any row in the layout its shapes fit (`_as_torch`)."""
    import keras

    inputs, in_specs = as_inputs(inputs, in_specs)
    layout = layout or feature_layout(in_specs)
    pairs = _pairs(plan)
    modules = dict(tm.module.named_modules())
    layers = {kname: model.get_layer(kname) for _, kname in pairs}
    fused = {t: a for t, k in pairs if (a := _fused_activation(layers[k]))}
    consumers = _Consumers()
    captured, order, hooks, consumed = {}, [], [], {}
    for tname, _ in pairs:
        # copies: in-place activations (ReLU(inplace=True)) overwrite these tensors later
        def pre_hook(_m, inp, tname=tname):
            if tname not in consumed:
                consumed[tname] = inp[0].detach().clone().numpy() if inp else None

        def hook(_m, _inp, out, tname=tname):
            if tname not in captured:
                order.append(tname)
                captured[tname] = (consumed.get(tname), out.detach().clone().numpy())
                if tname in fused:   # compare with what torch applies next, as Keras fuses it
                    consumers.watch[id(out)] = (out, tname)
        module = modules[tname]
        hooks.append(module.register_forward_pre_hook(pre_hook))
        hooks.append(_norm_output_module(module).register_forward_hook(hook))
    try:
        with consumers:
            run(tm.module, inputs, in_specs)
    finally:
        for h in hooks:
            h.remove()

    outs = [t for k in layers for t in (_keras_input(layers[k]), layers[k].output)]
    res = keras.Model(model.input, outs).predict_on_batch(feed(model, inputs))
    kres = {k: (res[2 * i], res[2 * i + 1]) for i, k in enumerate(layers)}   # Keras layout

    by_torch = dict(pairs)
    # containers whose inner submodule never ran as a module (a functional F.linear) keep the
    # module's own tensors
    inside = {t: c for t, c in _containers(pairs, layers).items() if c[1] in consumed}
    rows, first, prev_out, last_map = [], None, None, None
    for tname in _execution_order(order, inside, captured):
        kname = by_torch[tname]
        x_t, y_t = captured[tname]
        if tname in inside:
            before, after = inside[tname]
            x_t = captured[before][1] if before in captured else x_t
            y_t = consumed[after]
        own = _module_layout(modules[tname], np.ndim(y_t), layout)
        x_k, y_k = (_as_torch(a, t, own) for a, t in zip(kres[kname], (x_t, y_t)))
        op = None
        if tname in fused:
            y_t, op = consumers.found.get(tname, (y_t, None))
        m = compare(y_t, y_k)
        row = {"torch": tname, "keras": kname, "type": type(modules[tname]).__name__,
               "max_abs": m.get("max_abs"), "max_rel": m["max_rel"], "cosine": m.get("cosine"),
               "input_max_rel": _rel(x_t, x_k) if x_t is not None else None}
        if tname in fused:
            row["fused"] = {"keras": fused[tname], "torch": op}
        if tname in inside:
            row["torch_tensor"] = f"the input of {inside[tname][1]}"
        row["ok"] = bool(m["max_rel"] <= tolerance)
        rows.append(row)
        if first is None and not row["ok"]:
            first = row
            input_ok = row["input_max_rel"] is not None and row["input_max_rel"] <= tolerance
            if input_ok:
                found = _layer_hypotheses(modules[tname], x_t, y_k, row["max_rel"],
                                          _torch_activation(op))
                where = f"in layer {kname!r} itself (its input agrees, its output does not)"
            else:
                found = (_flatten_hypotheses(last_map, x_t, x_k, tolerance)
                         or _between_hypotheses(prev_out, x_t, x_k))
                where = (f"before layer {kname!r}: its input already differs, so an op without "
                         f"weights between the previous compared layer and it is wrong "
                         f"(activation, pooling, padding, reshape/permute axes)")
            if tname in fused and not found:
                found = [f"the Keras layer applies {fused[tname]} after its weights; torch applies "
                         + (f"{op} to the module's output" if op else "nothing that was traced")]
            first["where"] = where
            first["diagnosis"] = found or ["no single known mistake reproduces it: compare the "
                                           "builder's block with the torch forward()"]
        prev_out = y_t
        if np.ndim(y_t) == 4:
            last_map = y_t
    return {"tolerance": tolerance, "rows": rows, "first_divergent": first}


def format_diff(result: dict) -> str:
    lines = [f"{'':2s}{'torch module':34s} {'keras layer':30s} {'max abs':>10s} {'max rel':>10s} "
             f"{'cosine':>9s}"]
    first = result["first_divergent"]
    for r in result["rows"]:
        mark = ">>" if first is not None and r is first or (first and r["torch"] == first["torch"]) \
            else ("  " if r["ok"] else " !")
        torch_name = r["torch"] + (f" +{r['fused']['torch']}" if r.get("fused", {}).get("torch")
                                   else "")
        if r["max_abs"] is None:   # not comparable (shapes differ): compare() gave no numbers
            lines.append(f"{mark}{torch_name[:34]:34s} {r['keras'][:30]:30s} "
                         f"{'shapes differ':>31s}")
            continue
        lines.append(f"{mark}{torch_name[:34]:34s} {r['keras'][:30]:30s} {r['max_abs']:10.2e} "
                     f"{r['max_rel']:10.2e} {r['cosine']:9.6f}")
    if first is None:
        lines.append(f"\nevery layer agrees within {result['tolerance']:g}")
    else:
        lines.append(f"\nfirst divergent layer: torch {first['torch']!r} ({first['type']}) -> keras "
                     f"{first['keras']!r}: max rel {first['max_rel']:.2e} > {result['tolerance']:g}")
        lines.append(f"the error enters {first['where']}")
        lines += [f"  likely: {d}" for d in first["diagnosis"]]
    return "\n".join(lines)
