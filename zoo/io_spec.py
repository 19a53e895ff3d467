"""Named inputs and outputs of a model, as recipe data (`inputs:` / `outputs:`).

An image classifier needs neither: it has one image input (NCHW in torch, NHWC in Keras) and one
`logits` output. Anything else declares them, and every stage (torch forward, Keras forward, the
golden file, each exported format, the report) addresses tensors by these names, never by position.

Pure Python (NumPy only for the validation inputs, imported when they are made): recipes are
parsed without torch, TensorFlow or NumPy, so `import zoo` stays fast.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from zoo.checks import positive_number

if TYPE_CHECKING:
    import numpy as np

LAYOUTS = ("image", "sequence", "tensor")   # torch NCHW->NHWC, NCL->NLC, as is
GENERATORS = ("image", "audio", "tokens", "normal")
DTYPES = ("float32", "int32", "int64")
METRICS = ("classification", "regression", "unordered")
_RANK = {"image": 3, "sequence": 2}        # axes without the batch axis
BATCH = 4                                    # validation batch: two noise + two natural samples

_INPUT_KEYS = {"name", "shape", "dtype", "layout", "generator", "vocab"}
_OUTPUT_KEYS = {"name", "select", "layout", "metric", "tolerance"}


@dataclass(frozen=True)
class InputSpec:
    """shape: torch layout without the batch axis; None is a free axis (validated at the
    variant's input_size)."""
    name: str
    shape: tuple
    dtype: str = "float32"
    layout: str = "tensor"
    generator: str = "normal"
    vocab: int | None = None

    def keras_shape(self) -> tuple:
        return _permute_shape(self.shape, self.layout)

    def concrete(self, size: int) -> tuple:
        """The torch-layout validation shape: free axes take `size`."""
        return tuple(size if d is None else d for d in self.shape)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class OutputSpec:
    """select: index (tuple/list output) or key (dict output) of the torch result; None for a
    single tensor. tolerance None: the variant's."""
    name: str
    select: int | str | None = None
    layout: str = "tensor"
    metric: str = "regression"
    tolerance: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def default_inputs(in_chans: int = 3) -> tuple[InputSpec, ...]:
    return (InputSpec("image", (in_chans, None, None), "float32", "image", "image"),)


DEFAULT_OUTPUTS = (OutputSpec("logits", None, "tensor", "classification"),)


# ---------------------------------------------------------------- layouts

def _permute_shape(shape, layout):
    if layout == "image":
        return (*shape[1:], shape[0])
    if layout == "sequence":
        return (shape[1], shape[0])
    return tuple(shape)


# batched axis orders: torch layout -> Keras layout (channels last), by layout and rank
_TO_KERAS = {("image", 4): (0, 2, 3, 1), ("sequence", 3): (0, 2, 1)}
_TO_TORCH = {key: tuple(sorted(range(len(p)), key=p.__getitem__)) for key, p in _TO_KERAS.items()}


def to_keras(array, layout: str):
    """A batched torch-layout array in the Keras layout (channels last)."""
    axes = _TO_KERAS.get((layout, array.ndim))
    return array if axes is None else array.transpose(axes)


def to_torch(array, layout: str):
    axes = _TO_TORCH.get((layout, array.ndim))
    return array if axes is None else array.transpose(axes)


# ---------------------------------------------------------------- parsing

def _name(value, where):
    if not (isinstance(value, str) and value.isidentifier()):
        raise ValueError(f"{where}.name: expected an identifier (it names a Keras input/output and "
                         f"a SavedModel signature key), got {value!r}")
    return value


def _choice(data, key, options, default, where):
    value = data.get(key, default)
    if value not in options:
        raise ValueError(f"{where}.{key}: expected one of {list(options)}, got {value!r}")
    return value


def _list_of_mappings(data, where, allowed):
    if not (isinstance(data, list) and data):
        raise ValueError(f"{where}: expected a non-empty list of mappings")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{where}[{i}]: expected a mapping, got {item!r}")
        unknown = sorted(set(item) - allowed, key=str)
        if unknown:
            raise ValueError(f"{where}[{i}]: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        if "name" not in item:
            raise ValueError(f"{where}[{i}]: missing required key 'name'")
    names = [item["name"] for item in data]
    dup = sorted({n for n in names if names.count(n) > 1}, key=str)
    if dup:
        raise ValueError(f"{where}: duplicate name(s) {dup}")


def parse_inputs(data, where="inputs") -> tuple[InputSpec, ...]:
    """Recipe `inputs:` -> specs; ValueError naming the entry and the problem."""
    _list_of_mappings(data, where, _INPUT_KEYS)
    specs = []
    for i, item in enumerate(data):
        at = f"{where}[{i}]"
        name = _name(item["name"], at)
        layout = _choice(item, "layout", LAYOUTS, "tensor", at)
        shape = item.get("shape")
        if not (isinstance(shape, list) and shape and all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and 0 < d < 1 << 20)
                for d in shape)):
            raise ValueError(f"{at}.shape: expected a list of positive whole numbers or null (a "
                             f"free axis), without the batch axis, in the torch layout; got {shape!r}")
        if layout in _RANK and len(shape) != _RANK[layout]:
            raise ValueError(f"{at}.shape: {'an' if layout == 'image' else 'a'} {layout} input has "
                             f"{_RANK[layout]} axes without the "
                             f"batch ({'[C, H, W]' if layout == 'image' else '[C, L]'}), got {shape!r}")
        dtype = _choice(item, "dtype", DTYPES, "float32", at)
        generator = _choice(item, "generator", GENERATORS,
                            {"image": "image", "sequence": "audio"}.get(layout, "normal"), at)
        vocab = item.get("vocab")
        if generator == "tokens":
            if dtype == "float32":
                raise ValueError(f"{at}: token ids need an integer dtype (int32 or int64)")
            if not (isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0):
                raise ValueError(f"{at}.vocab: token ids need the vocabulary size (a positive "
                                 f"whole number), got {vocab!r}")
        elif vocab is not None:
            raise ValueError(f"{at}.vocab: only the tokens generator takes a vocabulary size")
        elif dtype != "float32":
            raise ValueError(f"{at}: the {generator} generator gives float32 values; integer "
                             f"inputs use generator: tokens")
        if generator == "image" and layout != "image":
            raise ValueError(f"{at}: the image generator needs layout: image")
        specs.append(InputSpec(name, tuple(shape), dtype, layout, generator, vocab))
    return tuple(specs)


def parse_outputs(data, where="outputs") -> tuple[OutputSpec, ...]:
    _list_of_mappings(data, where, _OUTPUT_KEYS)
    specs = []
    for i, item in enumerate(data):
        at = f"{where}[{i}]"
        name = _name(item["name"], at)
        select = item.get("select")
        if select is not None and not (isinstance(select, str) or
                                       (isinstance(select, int) and not isinstance(select, bool))):
            raise ValueError(f"{at}.select: expected an index (tuple/list output) or a key (dict "
                             f"output), got {select!r}")
        tol = item.get("tolerance")
        if tol is not None:
            try:
                positive_number(tol)
            except ValueError as e:
                raise ValueError(f"{at}.tolerance: {e}") from None
        specs.append(OutputSpec(name, select, _choice(item, "layout", LAYOUTS, "tensor", at),
                                _choice(item, "metric", METRICS, "regression", at),
                                None if tol is None else float(tol)))
    return tuple(specs)


def from_config(config: dict) -> tuple[tuple[InputSpec, ...], tuple[OutputSpec, ...]]:
    """The specs a converted model's config.json records (older configs: the image defaults)."""
    if "inputs" in config:
        ins = tuple(InputSpec(**dict(d, shape=tuple(d["shape"]))) for d in config["inputs"])
    else:
        shape = config.get("builder_kwargs", {}).get("input_shape") or [None, None, 3]
        ins = default_inputs(shape[-1])
    outs = tuple(OutputSpec(**d) for d in config["outputs"]) if "outputs" in config \
        else DEFAULT_OUTPUTS
    return ins, outs


# ---------------------------------------------------------------- validation inputs

def image_batch(size, in_chans: int, preprocessing: dict, seed: int = 0,
                height: int | None = None) -> "np.ndarray":
    """Fixed NHWC batch: two N(0, 1) images and two smooth, image-like ones, normalised with the
    model's mean/std (random noise alone misses errors that only show on natural statistics)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = height or size, size
    noise = rng.standard_normal((2, h, w, in_chans)).astype(np.float32)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    smooth = []
    for k in range(2):
        chans = []
        for _ in range(in_chans):
            f1, f2, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
            img = 0.5 + 0.25 * np.sin(2 * np.pi * (f1 * xx + f2 * yy) + ph) + 0.2 * (xx - yy) * (k - .5)
            chans.append(np.clip(img + 0.02 * rng.standard_normal(img.shape), 0, 1))
        smooth.append(np.stack(chans, -1))
    smooth = np.stack(smooth).astype(np.float32)
    mean, std = preprocessing.get("mean", [0.5]), preprocessing.get("std", [0.25])
    if len(mean) != in_chans:
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    smooth = (smooth - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.concatenate([noise[:1], smooth[:1], noise[1:], smooth[1:]]).astype(np.float32)


def _audio(rng, shape):
    """Speech/music-like signals in [-1, 1]: a few harmonics with slow amplitude envelopes plus a
    little noise, on the last axis (white noise alone has none of the low-frequency energy a
    trained audio model's filters respond to)."""
    import numpy as np

    n = shape[-1]
    t = np.arange(n) / n
    out = np.empty(shape, np.float64)
    for idx in np.ndindex(*shape[:-1]):
        f0 = rng.uniform(2, max(3, n / 16))
        sig = sum(rng.uniform(0.2, 1) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3))
                  for k in range(1, 5))
        env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6.3))
        out[idx] = sig * env + 0.05 * rng.standard_normal(n)
    return (0.9 * out / max(np.abs(out).max(), 1e-12)).astype(np.float32)


def make_input(spec: InputSpec, size: int, preprocessing: dict, seed: int = 0) -> "np.ndarray":
    """A fixed validation batch for one input, in the Keras layout."""
    import numpy as np

    shape = spec.concrete(size)
    if spec.generator == "image":
        return image_batch(shape[2], shape[0], preprocessing, seed, height=shape[1])
    # each input gets its own stream: two inputs of one model must not be identical
    rng = np.random.default_rng([seed, *spec.name.encode()])
    if spec.generator == "tokens":
        arr = rng.integers(0, spec.vocab, (BATCH, *shape)).astype(spec.dtype)
    elif spec.generator == "audio":
        arr = _audio(rng, (BATCH, *shape))
    else:
        arr = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    return np.ascontiguousarray(to_keras(arr, spec.layout))


def make_inputs(specs, size: int, preprocessing: dict, seed: int = 0) -> "dict[str, np.ndarray]":
    return {s.name: make_input(s, size, preprocessing, seed) for s in specs}


def describe(value, depth=0) -> str:
    """A torch/Keras output structure in one line, for error messages: `tuple(3): [2x4, 2x10, 2]`."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in list(value.items())[:8])
        return f"dict {{{inner}}}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe(v, depth + 1) for v in value[:8])
        return f"{type(value).__name__}({len(value)}): [{inner}]"
    shape = getattr(value, "shape", None)
    return "x".join(str(d) for d in shape) if shape is not None else type(value).__name__
