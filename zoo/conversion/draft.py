r"""Draft a recipe's mapping table by aligning a PyTorch state_dict with a Keras model's variables
(scripts/new_recipe.py).

1. Torch tensors are grouped by module path (the state_dict key minus its last component) and
   Keras variables by layer path (`variable.path` minus its last component).
2. A (torch module, keras layer) pair is *compatible* under a transform of zoo.transforms when the
   transform maps the module's leaves onto exactly the layer's variables with the right shapes
   (the layout function is run with the Keras target shape). The torch module type (Conv2d with
   groups == in_channels, LayerNorm, LayerNorm2d, GroupNorm, ...) and the Keras layer class narrow
   the candidates down when several transforms fit; `batchnorm` needs running statistics.
3. Compatible pairs are matched by a minimum-cost assignment (Hungarian algorithm, per connected
   group of compatible pairs) whose cost adds the distance in execution order (torch: forward
   hook order of one forward pass; keras: `model.weights` order, i.e. the functional graph's
   topological order), the dissimilarity of the normalised names (difflib; identical names get a
   bonus) and a penalty for hyper-parameters that disagree (stride, eps, groups ...): order
   decides across blocks, names inside them. A pair is "decided by name" only when its name beats
   every other candidate's clearly (NAME_MIN, NAME_MARGIN); otherwise it is "chosen by order".
   A Dense fed by a Flatten of a spatial map gets `linear_after_flatten` with its `chw`.
4. Matched pairs are generalised into regex rules: the numbers of a torch module path become
   `(\d+)` groups (or, if that gives fewer rules, its dotted segments become `(\w+)` groups) and
   the Keras template that reproduces every covered pair with `{1}`, `{2}` ... is searched for;
   where none exists, some positions are kept literal (down to one literal rule per module), or
   rules are split by torch module type (`module_type`). A rule reproduces exactly the pairs it
   covers and matches no other torch module.
5. The draft recipe marks every rule it is unsure of (chosen by order only, several transforms
   fit, hyper-parameters differ), infers `features` from Keras layers named `stage<i>` (checked by
   output shape) and the classifier, and lists the torch tensors and keras variables it could
   not match.
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field

import numpy as np
import yaml

from zoo.conversion.sources import build_source
from zoo.conversion.torch_first import torch  # before keras/tensorflow
from zoo.errors import ZooError
from zoo.transforms import TRANSFORMS

IGNORE = [r".*\.num_batches_tracked"]
NAME_RE = re.compile(r"[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+")
TRACE_SIZE = 224

# assignment cost: ORDER_WEIGHT per step of (normalised) execution-order distance, NAME_WEIGHT
# times the name dissimilarity (0..1), HPARAM_PENALTY when stride/eps/groups ... disagree.
ORDER_WEIGHT = 0.05
NAME_WEIGHT = 1.0
HPARAM_PENALTY = 1.0
SAME_NAME_BONUS = 1.0     # identical normalised names ('Mixed_5b.branch1x1' ~ 'Mixed_5b_branch1x1')
_INCOMPATIBLE = 1e6
# names decide a pair only when its name similarity is at least NAME_MIN and beats every other
# candidate's by NAME_MARGIN (one differing digit in resnet152's longest names is ~0.05)
NAME_MIN = 0.3
NAME_MARGIN = 0.02
_MAX_NAMED = 3

# torch module class (any class in its MRO) -> transforms it can use; first match wins
_TORCH_HINTS = (("GroupNorm", {"groupnorm"}), ("LayerNorm", {"layernorm"}),
                ("BatchNorm", {"batchnorm"}), ("PReLU", {"prelu"}), ("Linear", {"linear"}))
# keras layer class -> transforms
_KERAS_HINTS = (("DepthwiseConv2D", {"depthwise"}), ("Conv2D", {"conv2d"}), ("Dense", {"linear"}),
                ("BatchNormalization", {"batchnorm"}), ("LayerNormalization", {"layernorm"}),
                ("GroupNormalization", {"groupnorm"}), ("PReLU", {"prelu"}))


class DraftError(ZooError):
    """The models could not be built or compared (bad source, builder or arguments)."""


# ---------------------------------------------------------------- the two sides

@dataclass
class TorchModule:
    path: str
    leaves: dict[str, str]              # leaf -> state_dict key
    arrays: dict[str, np.ndarray]       # leaf -> array
    module: object                      # nn.Module or None
    type_name: str
    index: int                          # state_dict order
    rank: int = 0                       # execution order (see _execution_order)


@dataclass
class KerasLayer:
    path: str
    variables: dict[str, object]        # variable name -> keras variable
    layer: object                       # innermost owning keras layer or None
    class_name: str
    rank: int                           # model.weights order
    top: str                            # top-level layer name (position in model.layers)

    def shape(self, name):
        return tuple(self.variables[name].shape)


@dataclass
class Pair:
    torch: TorchModule
    keras: KerasLayer
    transform: str
    transforms: list[str]               # every transform that fits (after the type hints)
    problems: list[str]                 # hyper-parameter disagreements
    decided_by: str = "shape"           # shape | name | order
    alternatives: list[str] = field(default_factory=list)   # what else fits, for the comment
    args: dict = field(default_factory=dict)                 # transform args
    note: str | None = None


@dataclass
class DraftRule:
    torch: str                          # regex
    keras: str                          # template
    transform: str
    pairs: list[Pair]
    args: dict = field(default_factory=dict)
    module_type: str | None = None      # torch module class the rule is restricted to

    @property
    def unsure(self) -> bool:
        return any(p.decided_by == "order" or len(p.transforms) > 1 or p.problems
                   for p in self.pairs)

    @property
    def comments(self) -> list[str]:
        out = [f"note: {n}" for n in dict.fromkeys(p.note for p in self.pairs if p.note)]
        order = [p for p in self.pairs if p.decided_by == "order"]
        if order:
            head = (f"unsure: chosen by order only (names do not decide) for {len(order)} of "
                    f"{len(self.pairs)} pairs, e.g.:" if len(order) > _MAX_NAMED else
                    "unsure: chosen by order only (names do not decide):")
            out.append(head)
            out += [f"  {p.torch.path} -> {p.keras.path}; also fits: {', '.join(p.alternatives)}"
                    for p in order[:_MAX_NAMED]]
        several = [p for p in self.pairs if len(p.transforms) > 1]
        if several:
            out.append(f"unsure: several transforms fit ({', '.join(several[0].transforms)}) for "
                       + ", ".join(p.torch.path for p in several[:_MAX_NAMED])
                       + (" ..." if len(several) > _MAX_NAMED else "")
                       + f"; chose {self.transform}")
        problems = [p for p in self.pairs if p.problems]
        if problems:
            out.append("check: hyper-parameters differ (the conversion will refuse this):")
            out += [f"  {p.torch.path} -> {p.keras.path}: {'; '.join(p.problems)}"
                    for p in problems[:_MAX_NAMED]]
            if len(problems) > _MAX_NAMED:
                out.append(f"  ... and {len(problems) - _MAX_NAMED} more")
        return out


@dataclass
class Draft:
    name: str
    source: str
    builder: str
    text: str                           # the YAML draft
    rules: list[DraftRule]
    pairs: list[Pair]
    unmatched_torch: list[str]          # state_dict keys
    unmatched_keras: list[str]          # keras variable paths
    features: list[tuple[str, str]]
    notes: list[str]

    @property
    def complete(self) -> bool:
        return not (self.unmatched_torch or self.unmatched_keras)

    @property
    def unsure(self) -> list[DraftRule]:
        return [r for r in self.rules if r.unsure]

    def summary(self) -> str:
        lines = [f"{self.source} -> {self.builder}: {len(self.pairs)} torch module(s) matched, "
                 f"{len(self.rules)} rule(s), {len(self.unsure)} marked unsure"]
        for what, items in (("torch tensors", self.unmatched_torch),
                            ("keras variables", self.unmatched_keras)):
            if items:
                more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
                lines.append(f"{what} not matched ({len(items)}): {', '.join(items[:20])}{more}")
        lines += self.notes
        return "\n".join(lines)


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
    from zoo.conversion.mapping import _owners

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


# ---------------------------------------------------------------- compatibility

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


# ---------------------------------------------------------------- assignment

def _assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment of a rectangular matrix (Hungarian algorithm, potentials);
    returns (row, col) pairs, min(rows, cols) of them."""
    n, m = cost.shape
    if n > m:
        return [(r, c) for c, r in _assign(cost.T)]
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p, way = np.zeros(m + 1, dtype=int), np.zeros(m + 1, dtype=int)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv, used = np.full(m + 1, np.inf), np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    return [(int(p[j]) - 1, j - 1) for j in range(1, m + 1) if p[j]]


def _components(edges):
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for t, k in edges:
        parent[find(("t", t))] = find(("k", k))
    comps: dict = {}
    for t, k in edges:
        comps.setdefault(find(("t", t)), (set(), set()))
        comps[find(("t", t))][0].add(t)
        comps[find(("t", t))][1].add(k)
    return [(sorted(ts), sorted(ks)) for ts, ks in comps.values()]


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
    chosen = []
    for rows, cols in _components(fits):
        mat = np.full((len(rows), len(cols)), _INCOMPATIBLE)
        for a, i in enumerate(rows):
            for b, j in enumerate(cols):
                if (i, j) in costs:
                    mat[a, b] = costs[i, j]
        chosen += [(rows[a], cols[b]) for a, b in _assign(mat) if mat[a, b] < _INCOMPATIBLE]

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
                near_k = sorted(rival_k, key=lambda b: abs(kpos[b] - kpos[j]))[:_MAX_NAMED]
                near_t = sorted(rival_t, key=lambda a: abs(tpos[a] - tpos[i]))[:_MAX_NAMED]
                p.alternatives = ([f"torch {tmods[a].path}" for a in near_t]
                                  + [f"keras {klayers[b].path}" for b in near_k])
            else:
                p.decided_by = "name"
        _after_flatten(p)
        pairs.append(p)
    return pairs


def _after_flatten(pair: Pair) -> None:
    """A Dense fed by a Flatten of NHWC (H, W, C) features with H*W > 1 needs its rows reordered
    from torch's NCHW flatten order: linear_after_flatten with chw = [C, H, W]."""
    if pair.transform != "linear" or pair.keras.layer is None:
        return
    import keras

    try:
        t = pair.keras.layer.input
        while True:
            producer = t._keras_history.operation
            if isinstance(producer, keras.layers.Flatten):
                shape = tuple(producer.input.shape)
                break
            if not isinstance(producer, (keras.layers.Dropout, keras.layers.Identity,
                                         keras.layers.Activation, keras.layers.ReLU)):
                return
            t = producer.input
    except Exception:  # noqa: BLE001 - shared layers, subclassed models: leave it as linear
        return
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[1] * shape[2] == 1:
        return
    h, w, c = shape[1:]
    if "linear_after_flatten" in TRANSFORMS and c * h * w == pair.torch.arrays["weight"].shape[1]:
        pair.transform, pair.args = "linear_after_flatten", {"chw": [c, h, w]}
        pair.note = (f"{pair.keras.path} follows a Flatten of (H, W, C) = ({h}, {w}, {c}): rows "
                     f"reordered from torch's (C, H, W) flatten (linear_after_flatten)")


# ---------------------------------------------------------------- generalisation
#
# Two ways to read a torch module path as a skeleton with variable parts:
#   "numbers":  the digit runs  ('layer1.0.conv1' -> 'layer(\d+)\.(\d+)\.conv(\d+)'), the
#               template refers to the keras path's digit runs ('stage{1}_block{2}_conv{3}');
#   "segments": the dotted path segments ('Mixed_5b.branch1x1.conv' -> '(\w+)\.(\w+)\.conv'),
#               the template to the same text in the keras path ('{1}_{2}_conv').
# Both give exact rules; the draft uses the one that needs fewer rules.

_NUM = re.compile(r"\d+")
_BOUNDARY = r"(?<![A-Za-z0-9]){}(?![A-Za-z0-9])"


def _split(path, mode="numbers"):
    """(text between the variable parts, variable parts):
    numbers:  'layer1.0.conv1' -> (('layer', '.', '.conv', ''), ('1', '0', '1'));
    segments: 'layer1.0.conv1' -> (('', '.', '.', ''), ('layer1', '0', 'conv1'))."""
    if mode == "numbers":
        return tuple(_NUM.split(path)), tuple(_NUM.findall(path))
    parts = tuple(path.split("."))
    return ("",) + (".",) * (len(parts) - 1) + ("",), parts


def _regex(text, values_per_pos, literal, mode):
    """values_per_pos: the values each position takes over the rule's pairs."""
    out = [re.escape(text[0])]
    for pos, values in enumerate(values_per_pos):
        if pos in literal:
            out.append(re.escape(next(iter(values))))
        else:
            out.append(r"(\d+)" if mode == "numbers" or all(v.isdigit() for v in values)
                       else r"(\w+)")
        out.append(re.escape(text[pos + 1]))
    return "".join(out)


def _esc(text):
    return text.replace("{", "{{").replace("}", "}}")


def _numbers_template(pairs, variable):
    """Template over the keras digit runs, each either a group (a variable torch position with
    the same value in every pair) or a literal (the same value in every pair); None if some run
    is neither. Prefers groups, in order."""
    kparts = {_split(p.keras.path)[0] for p in pairs}
    if len(kparts) != 1:
        return None
    ktext = kparts.pop()
    tnums = [_split(p.torch.path)[1] for p in pairs]
    knums = [_split(p.keras.path)[1] for p in pairs]
    out, last = [_esc(ktext[0])], -1
    for r in range(len(knums[0])):
        refs = [g for g in variable if all(tn[g] == kn[r] for tn, kn in zip(tnums, knums))]
        later = [g for g in refs if g >= last]
        if refs:
            last = (later or refs)[0]
            out.append(f"{{{variable.index(last) + 1}}}")
        elif len({kn[r] for kn in knums}) == 1:
            out.append(knums[0][r])
        else:
            return None
        out.append(_esc(ktext[r + 1]))
    return "".join(out)


def _segments_template(pairs, variable):
    """Template in which each variable torch segment is found, left to right and between
    separators, in the keras path; None unless every pair gives the same template."""
    found = set()
    for p in pairs:
        values = _split(p.torch.path, "segments")[1]
        kpath, out, at = p.keras.path, [], 0
        for n, pos in enumerate(variable, start=1):
            m = re.compile(_BOUNDARY.format(re.escape(values[pos]))).search(kpath, at)
            if m is None:
                return None
            out += [_esc(kpath[at:m.start()]), f"{{{n}}}"]
            at = m.end()
        found.add("".join(out) + _esc(kpath[at:]))
    return found.pop() if len(found) == 1 else None


def _make_rule(pairs, literal, all_paths, mode, module_type=None):
    """The rule mapping exactly `pairs` (one torch skeleton) with the torch positions in
    `literal` kept literal, or None. all_paths: torch module path -> class name."""
    if len({p.transform for p in pairs}) != 1 or \
            len({repr(p.args) for p in pairs}) != 1:
        return None
    text, first = _split(pairs[0].torch.path, mode)
    values = [{_split(p.torch.path, mode)[1][pos] for p in pairs} for pos in range(len(first))]
    if len(pairs) == 1:   # one pair is no evidence of a pattern: a literal rule
        literal = tuple(range(len(first)))
    # a position with one value that the template does not need is literal as well
    literal = set(literal) | {pos for pos, v in enumerate(values) if len(v) == 1 and mode == "segments"}
    variable = [pos for pos in range(len(first)) if pos not in literal]
    template = (_numbers_template if mode == "numbers" else _segments_template)(pairs, variable)
    if template is None:
        return None
    used = {int(n) - 1 for n in re.findall(r"(?<!{){(\d+)}", template)}
    unused = [pos for i, pos in enumerate(variable) if i not in used and len(values[pos]) == 1]
    if unused:            # renumber without them
        return _make_rule(pairs, tuple(literal | set(unused)), all_paths, mode, module_type)
    regex = _regex(text, values, literal, mode)
    rx = re.compile(regex)
    covered = {p.torch.path for p in pairs}
    if any(rx.fullmatch(path) for path, typ in all_paths.items()
           if path not in covered and module_type in (None, typ)):
        return None       # it would also catch a module outside these pairs
    for p in pairs:       # and must reproduce every pair exactly
        m = rx.fullmatch(p.torch.path)
        if not m or template.format(m.group(0), *m.groups()) != p.keras.path:
            return None
    return DraftRule(regex, template, pairs[0].transform, list(pairs), pairs[0].args, module_type)


def _generalise_group(group, all_paths, mode, module_type=None):
    npos = len(_split(group[0].torch.path, mode)[1])
    rules, remaining = [], list(group)
    for k in range(npos + 1):
        while remaining:
            best = None
            for lit in itertools.combinations(range(npos), k):
                parts: dict[tuple, list[Pair]] = {}
                for p in remaining:
                    values = _split(p.torch.path, mode)[1]
                    parts.setdefault(tuple(values[q] for q in lit), []).append(p)
                made = [r for r in (_make_rule(ps, lit, all_paths, mode, module_type)
                                    for ps in parts.values()) if r is not None]
                score = (sum(len(r.pairs) for r in made), -len(made))
                if made and (best is None or score > best[0]):
                    best = (score, made)
            if best is None:
                break
            rules += best[1]
            done = {id(p) for r in best[1] for p in r.pairs}
            remaining = [p for p in remaining if id(p) not in done]
    if remaining:   # cannot happen: literal rules always fit; never drop a pair silently
        raise DraftError(f"could not write rules for {[p.torch.path for p in remaining]}")
    return rules


def generalise(pairs: list[Pair], all_paths: dict[str, str], mode: str = "numbers") -> list[DraftRule]:
    """Rules covering exactly the matched pairs: per torch skeleton, the fewest torch positions
    are made literal (partitioning the pairs by their values there) until every part has one
    template; at worst one literal rule per pair. Where torch module types tell apart what the
    path cannot (VGG's `features.<i>` convs and BatchNorms), rules per type (`module_type`) are
    used if they are fewer. No rule matches a torch module (all_paths: path -> class name)
    outside its pairs."""
    by_skeleton: dict[tuple, list[Pair]] = {}
    for p in pairs:
        by_skeleton.setdefault(_split(p.torch.path, mode)[0], []).append(p)
    rules = []
    for group in by_skeleton.values():
        plain = _generalise_group(group, all_paths, mode)
        types = sorted({p.torch.type_name for p in group})
        if len(plain) > 1 and len(types) > 1 and all(t.isidentifier() for t in types):
            typed = [r for t in types for r in _generalise_group(
                [p for p in group if p.torch.type_name == t], all_paths, mode, t)]
            if len(typed) < len(plain):
                plain = typed
        rules += plain
    rules.sort(key=lambda r: min(p.torch.index for p in r.pairs))
    return rules


def best_rules(pairs: list[Pair], all_paths: dict[str, str]) -> list[DraftRule]:
    """The shorter of the two tables (numbers first on a tie)."""
    return min((generalise(pairs, all_paths, mode) for mode in ("numbers", "segments")), key=len)


# ---------------------------------------------------------------- features and classifier

def _infer_features(model, pairs, trace, trace_size, in_chans):
    """[torch module, keras layer] for each keras layer named stage<i>, checked by output shape
    at trace_size: the outermost ancestor of the last torch module matched before the stage layer
    that holds nothing matched after it (nor before the previous stage layer); failing that, the
    last module that runs after that torch module and before the next stage's (e.g. the
    parameter-free max-pool that ends a VGG stage)."""
    import keras

    executed, shapes = trace
    names = [lay.name for lay in model.layers]
    stages = sorted((n for n in names if re.fullmatch(r"stage\d+", n)), key=lambda n: int(n[5:]))
    if not stages or not shapes:
        return [], "features: TODO (no keras layer named stage<i>, or no forward pass)"
    try:
        feat = keras.Model(model.inputs, [model.get_layer(n).output for n in stages])
        specs = feat.compute_output_spec(keras.KerasTensor((1, trace_size, trace_size, in_chans)))
        specs = specs if isinstance(specs, (list, tuple)) else [specs]
        kshapes = {n: tuple(s.shape) for n, s in zip(stages, specs)}
    except Exception:  # noqa: BLE001
        return [], "features: TODO (could not compute the keras stage shapes)"
    index = {n: i for i, n in enumerate(names)}

    def fits(path, stage):
        shp = shapes.get(path)
        return shp is not None and len(shp) == 4 and (shp[0], shp[2], shp[3], shp[1]) == kshapes[stage]

    def holds(path, paths):
        return path == "" or any(t == path or t.startswith(path + ".") for t in paths)

    out, missing, previous = [], [], -1
    for n in stages:
        at = index[n]
        seg = [p.torch.path for p in pairs if index.get(p.keras.top, -1) < at]
        later = [p.torch.path for p in pairs if index.get(p.keras.top, -1) > at]
        other = later + [p.torch.path for p in pairs if index.get(p.keras.top, -1) < previous]
        previous = at
        if not seg:
            missing.append(n)
            continue
        last = max(seg, key=lambda t: executed.get(t, -1))
        parts = last.split(".")
        found = next((c for c in (".".join(parts[:d]) for d in range(1, len(parts) + 1))
                      if not holds(c, other) and fits(c, n)), None)
        if found is None and last in executed:
            end = min((executed[t] for t in later if t in executed), default=len(executed))
            after = [t for t, i in executed.items() if executed[last] < i < end
                     and not holds(t, other) and fits(t, n)]
            found = max(after, key=executed.get, default=None)
        if found is None:
            missing.append(n)
        else:
            out.append((found, n))
    note = None
    if missing:
        note = f"features: TODO for {', '.join(missing)} (no torch module with the same output)"
    return out, note


def _num_classes(module, state_keys_2d):
    n = getattr(module, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    return state_keys_2d[-1] if state_keys_2d else None


# ---------------------------------------------------------------- the draft

def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _flow(obj) -> str:
    return yaml.safe_dump(obj, default_flow_style=True, width=1 << 20, sort_keys=False).strip()


def default_name(source: str) -> str:
    arch = re.sub(r"[^A-Za-z0-9_\-]", "_", source.split(":")[-1])
    return f"draft/{arch}"


def _yaml(name, source, source_kwargs, builder, builder_kwargs, rules, features, feature_note,
          classifier, unmatched_torch, unmatched_keras, notes, trace_size):
    arch = name.split("/", 1)[1]
    L = [f"# DRAFT written by scripts/new_recipe.py: {source} -> Keras builder {builder}.",
         "# Review every rule (comments mark those chosen by order only, with several fitting",
         "# transforms or with differing hyper-parameters), then set preprocessing, input_size,",
         "# features and tolerance. Schema: docs/recipe-format.md",
         f"family: {arch}",
         f"description: {_q(f'Draft mapping {source} -> {builder}; review before use.')}"]
    if classifier:
        L.append(f"classifier: {_q(classifier)}")
    L += ["# input_size: 224         # TODO: validation resolution",
          "# preprocessing: {...}    # TODO: mean/std/interpolation/crop_pct (timm's and "
          "torchvision's own are applied at conversion)"]
    if features:
        L.append(f"features:            # inferred: keras stage<i> layers and the torch module with "
                 f"the same output shape at {trace_size}x{trace_size}; review")
        L += [f"  - [{_q(t)}, {_q(k)}]" for t, k in features]
    if feature_note:
        L.append(f"# {feature_note}")
    L.append("ignore:")
    L += [f"  - {_q(p)}" for p in IGNORE]
    L.append("mapping:             # regex over the torch module path -> keras layer, first match wins")
    if not rules:
        L.append("  []                 # nothing could be matched")
    for r in rules:
        L += [f"  # {c}" for c in r.comments]
        args = f", args: {_flow(r.args)}" if r.args else ""
        typ = f", module_type: {r.module_type}" if r.module_type else ""
        L.append(f"  - {{torch: {_q(r.torch)}{typ}, keras: {_q(r.keras)}, transform: {r.transform}"
                 f"{args}}}")
    L.append("variants:")
    L.append(f"  {name}:")
    torch_spec = {"source": source}
    if source_kwargs:
        torch_spec["kwargs"] = source_kwargs
    keras_spec = {"builder": builder}
    if builder_kwargs:
        keras_spec["kwargs"] = builder_kwargs
    L.append(f"    torch: {_flow(torch_spec)}")
    L.append(f"    keras: {_flow(keras_spec)}")
    for n in notes:
        L.append(f"# {n}")
    if unmatched_torch or unmatched_keras:
        L.append("# NOT MATCHED: add rules (or ignore patterns) for these, or fix the Keras builder.")
        L.append(f"# torch tensors not matched ({len(unmatched_torch)}):")
        L += [f"#   {k} {list(s)}" for k, s in unmatched_torch]
        L.append(f"# keras variables not matched ({len(unmatched_keras)}):")
        L += [f"#   {k} {list(s)}" for k, s in unmatched_keras]
    else:
        L.append("# every torch tensor and every keras variable is matched")
    return "\n".join(L) + "\n"


def _self_check(text, name, module, model, complete):
    """The draft must load as a recipe, and a complete one must map every tensor (hyper-parameter
    disagreements aside: they are commented in the draft and refused at conversion)."""
    import tempfile
    from pathlib import Path

    from zoo.conversion.mapping import plan_mapping
    from zoo.errors import MappingError, RecipeError
    from zoo.recipe import load_recipe

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
    from zoo.models import BUILDERS, get_builder, is_builder_name

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
    text = _yaml(name, source, source_kwargs, builder, builder_kwargs, rules, features,
                 feature_note, classifier, unmatched_torch, unmatched_keras, notes, trace_size)
    if rules:
        _self_check(text, name, module, model, complete=not (unmatched_torch or unmatched_keras))
    return Draft(name, source, builder, text, rules, pairs, [k for k, _ in unmatched_torch],
                 [k for k, _ in unmatched_keras], features, notes + ([feature_note] if feature_note
                                                                      else []))
