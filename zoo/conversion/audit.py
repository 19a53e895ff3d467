"""Audit a PyTorch model before writing a recipe: which module types and ops does it use, and
which of them have no Keras twin in zoo (scripts/audit.py).

The model is traced by running one forward pass with three recorders, so control flow that
defeats torch.fx symbolic tracing is no obstacle:
- forward hooks on every module (types, and where each runs),
- a TorchFunctionMode (functional ops and Tensor methods, attributed to the innermost module),
- a TorchDispatchMode (every dispatched operator: namespaces other than aten/prim are custom ops
  with a C/C++ backend, e.g. torchvision::deform_conv2d, torchvision::roi_align),
and the autograd graph of the output is walked for custom autograd Functions.
"""
from __future__ import annotations

from collections import defaultdict

from torch.overrides import TorchFunctionMode  # noqa: E402 - after torch_first
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from zoo.conversion.torch_first import torch
from zoo.support import AXIS_SENSITIVE, CONTAINERS, FUNCTIONS, KERAS_TWINS, MODULES

CORE_NAMESPACES = {"aten", "prim", "prims"}
SUPPORTED, KERAS, CUSTOM, UNKNOWN = ("supported", "keras twin (no zoo block)",
                                     "custom op (C/C++ backend)", "unknown")
STATUSES = (SUPPORTED, KERAS, CUSTOM, UNKNOWN)
_BLOCKING = (CUSTOM, UNKNOWN)   # what needs a TF re-implementation; a Keras twin does not

# Compiled ops (and the torch modules that run them) that zoo re-implements in TensorFlow
# (zoo/ops/, docs/custom-ops.md): still reported as custom ops, with the zoo twin to build with;
# they no longer make the audit fail.
ZOO_OPS = {
    ("op", "torchvision::deform_conv2d"): "zoo.layers.deform_conv.DeformConv2D "
                                          "(zoo.ops.deform_conv.deform_conv2d)",
    ("module", "DeformConv2d"): "zoo.layers.deform_conv.DeformConv2D (weights: transform conv2d)",
    ("op", "torchvision::roi_align"): "zoo.ops.roi_align.roi_align",
    ("module", "RoIAlign"): "zoo.ops.roi_align.roi_align",
    ("module", "MultiScaleRoIAlign"): "zoo.ops.roi_align.MultiScaleRoIAlign",
    ("op", "torchvision::nms"): "zoo.ops.nms.nms / batched_nms",
    ("function", "grid_sample"): "zoo.ops.sampling.grid_sample",
}


def _fn_name(func) -> str:
    name = (getattr(func, "__name__", None) or repr(func)).split(".")[-1]
    # in-place variants (add_, relu_) are the same op for conversion purposes
    return name[:-1] if name.endswith("_") and not name.startswith("__") else name


class _Recorder:
    def __init__(self):
        self.stack: list[str] = []
        self.items: dict[tuple[str, str], list[str]] = defaultdict(list)   # (kind, name) -> where

    def add(self, kind, name, where=None):
        self.items[(kind, name)].append(where if where is not None else
                                        (self.stack[-1] if self.stack else "<model>"))


class _Functions(TorchFunctionMode):
    def __init__(self, rec, leaf_depth):
        super().__init__()
        self.rec, self.leaf_depth = rec, leaf_depth

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Ops inside a *known* leaf module (e.g. Conv2d's own F.conv2d) are covered by the module.
        if not self.leaf_depth[0]:
            self.rec.add("function", _fn_name(func))
        return func(*args, **(kwargs or {}))


class _Dispatch(TorchDispatchMode):
    def __init__(self, rec):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ns = getattr(func, "namespace", "aten")
        if ns not in CORE_NAMESPACES:
            self.rec.add("op", f"{ns}::{func._schema.name.split('::')[-1]}")
        return func(*args, **(kwargs or {}))


def _custom_functions(output, rec):
    """Custom autograd Functions appear in the autograd graph as BackwardCFunction nodes."""
    seen, todo = set(), [t.grad_fn for t in (output if isinstance(output, (tuple, list))
                                              else [output]) if getattr(t, "grad_fn", None)]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        cls = getattr(node, "_forward_cls", None)
        # torch._library generates Functions for registered custom ops: reported as "op" already
        if isinstance(node, torch.autograd.function.BackwardCFunction) and \
                not cls.__module__.startswith("torch."):
            rec.add("autograd", f"{node._forward_cls.__module__}.{node._forward_cls.__name__}",
                    "<autograd graph>")
        todo.extend(fn for fn, _ in node.next_functions)


def keras_twin(name: str) -> str | None:
    """The Keras layer or activation that does what torch module `name` does, if any: a known
    renaming, or the same name up to case (Conv1d / Conv1D, Softsign / softsign)."""
    if name in KERAS_TWINS:
        return KERAS_TWINS[name]
    import keras

    for namespace in ("layers", "activations"):
        found = {n.lower(): n for n in dir(getattr(keras, namespace)) if not n.startswith("_")}
        if name.lower() in found:
            return f"keras.{namespace}.{found[name.lower()]}"
    return None


def classify(kind: str, name: str) -> tuple[str, str]:
    if (kind, name) in ZOO_OPS:
        return CUSTOM, f"zoo has a TF implementation: {ZOO_OPS[(kind, name)]}"
    if kind == "composite":
        return SUPPORTED, "composite: its children and ops are audited individually"
    if kind == "module":
        if name in MODULES:
            return SUPPORTED, MODULES[name]
        if name in CONTAINERS:
            return SUPPORTED, "container"
        twin = keras_twin(name)
        if twin:
            return KERAS, f"{twin}: write it into the builder (no zoo block or transform yet)"
        return UNKNOWN, ("neither zoo nor Keras has a counterpart; re-implement it (zoo/layers/) "
                         "and prove it equal to the torch module")
    if kind == "function":
        if name in FUNCTIONS:
            note = "translate its NCHW axes to NHWC" if name in AXIS_SENSITIVE else ""
            return SUPPORTED, note
        return UNKNOWN, "functional op not covered by zoo"
    if kind == "op":
        return CUSTOM, "dispatched to a non-aten operator: needs a TF re-implementation"
    return CUSTOM, "custom torch.autograd.Function: its forward must be re-implemented in TF"


def audit_module(model, input_shape=(1, 3, 224, 224)) -> dict:
    model.eval()
    rec = _Recorder()
    leaf_depth = [0]
    hooks = []
    for path, mod in model.named_modules():
        path = path or "<model>"
        # A module with children is judged by what runs inside it, unless zoo knows it whole;
        # a leaf module is judged as a whole (its own functional ops are not listed again).
        leaf = type(mod).__name__ in MODULES or not any(True for _ in mod.children())
        kind = "module" if leaf else "composite"

        def pre(_m, _i, path=path, leaf=leaf, mod=mod, kind=kind):
            if leaf_depth[0] == 0:
                rec.add(kind, type(mod).__name__, path)
            rec.stack.append(path)
            if leaf:
                leaf_depth[0] += 1

        def post(_m, _i, _o, leaf=leaf):
            rec.stack.pop()
            if leaf:
                leaf_depth[0] -= 1
        if mod is not model:
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    x = torch.randn(*input_shape, requires_grad=True)
    try:
        with _Functions(rec, leaf_depth), _Dispatch(rec):
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    _custom_functions(out, rec)

    rows = []
    for (kind, name), where in sorted(rec.items.items()):
        status, note = classify(kind, name)
        uniq = list(dict.fromkeys(where))
        rows.append({"kind": kind, "name": name, "count": len(where), "status": status,
                     "note": note, "where": uniq[:5], "more": max(len(uniq) - 5, 0)})
    problems = [r for r in rows if r["status"] in _BLOCKING and (r["kind"], r["name"]) not in ZOO_OPS]
    return {"input_shape": list(input_shape), "rows": rows, "supported": not problems,
            "counts": {s: sum(r["status"] == s for r in rows) for s in STATUSES}}


def format_table(result: dict) -> str:
    rows = sorted(result["rows"], key=lambda r: (r["status"] == SUPPORTED, r["kind"], r["name"]))
    w = max([len(r["name"]) for r in rows] + [4])
    lines = [f"{'status':26s} {'kind':9s} {'name':{w}s} {'count':>5s}  where / note"]
    for r in rows:
        where = ", ".join(r["where"]) + (f" (+{r['more']} more)" if r["more"] else "")
        note = f"  [{r['note']}]" if r["note"] and r["status"] != SUPPORTED else ""
        lines.append(f"{r['status']:26s} {r['kind']:9s} {r['name']:{w}s} {r['count']:5d}  "
                     f"{where}{note}")
    c = result["counts"]
    lines.append(f"\n{c[SUPPORTED]} supported, {c[KERAS]} with a Keras twin, {c[CUSTOM]} custom "
                 f"op(s), {c[UNKNOWN]} unknown")
    return "\n".join(lines)
