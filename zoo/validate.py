"""Parity metrics and validation of converted models. NumPy + Keras only (never torch), so that
saved models can be re-validated against their golden outputs on a machine without torch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zoo.errors import ZooError
from zoo.io_spec import DEFAULT_OUTPUTS, from_config

GOLDEN = "golden.npz"


def _unordered(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ref, out) paired up regardless of the order of each sample's rows (metric `unordered`:
    detections, whose order among equal scores is the implementation's). Rows of numbers: each
    row with the nearest row (max abs) of the other side, both ways; single numbers: sorted."""
    if ref.ndim == 2:
        return np.sort(ref, 1), np.sort(out, 1)
    r, o = ref.reshape(*ref.shape[:2], -1), out.reshape(*out.shape[:2], -1)
    dist = np.abs(r[:, :, None] - o[:, None, :]).max(-1)          # (B, rows ref, rows out)
    to_out = np.take_along_axis(o, dist.argmin(2)[..., None], 1)
    to_ref = np.take_along_axis(r, dist.argmin(1)[..., None], 1)
    return np.concatenate([r, to_ref], 1), np.concatenate([to_out, o], 1)


def _sample_stats(ref: np.ndarray, out: np.ndarray, topk: bool, unordered: bool) -> dict:
    """compare's sums and extremes over one sample (a batch of one)."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if unordered and ref.ndim >= 2:
        ref, out = _unordered(ref, out)
    d = np.abs(ref - out)
    r, o = ref.ravel(), out.ravel()
    stats = {"max_abs": float(d.max()), "ref_max": float(np.abs(ref).max()),
             "sum_abs": float(d.sum()), "size": d.size, "finite": bool(np.isfinite(out).all()),
             "cosine": float(r @ o / max(np.linalg.norm(r) * np.linalg.norm(o), 1e-30))}
    if topk and ref.ndim >= 2:
        # classes on the last axis: one row per sample, or per pixel of a dense map (NHWC
        # segmentation logits), where top-1 agreement is the fraction of pixels whose class agrees
        ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        k = min(5, ref.shape[1])
        tr, to = np.argsort(-ref, 1)[:, :k], np.argsort(-out, 1)[:, :k]
        stats.update(rows=len(ref), top1=int(np.sum(ref.argmax(1) == out.argmax(1))),
                     top5=float(np.sum((tr[:, :, None] == to[:, None, :]).any(2).sum(1) / k)))
    return stats


def _sample_rows(ref: np.ndarray, out: np.ndarray, topk: bool, unordered: bool) -> list[dict]:
    return [_sample_stats(ref[i:i + 1], out[i:i + 1], topk, unordered) for i in range(len(ref))]


def _finish(samples: list[dict]) -> dict:
    """The metrics of a batch from its samples' sums and extremes."""
    max_abs = max(s["max_abs"] for s in samples)
    finite = all(s["finite"] for s in samples)
    m = {"max_abs": max_abs,
         "max_rel": max_abs / max(max(s["ref_max"] for s in samples), 1e-30),
         "mean_abs": sum(s["sum_abs"] for s in samples) / sum(s["size"] for s in samples),
         "cosine": min(s["cosine"] for s in samples), "finite": finite}
    if not finite:
        m["max_rel"] = float("inf")
    if "rows" in samples[0]:
        rows = sum(s["rows"] for s in samples)
        m["top1"] = sum(s["top1"] for s in samples) / rows
        m["top5"] = sum(s["top5"] for s in samples) / rows
    return m


def _shape_error(ref, out) -> dict | None:
    if ref.shape != out.shape:
        return {"error": f"shape {out.shape} != reference {ref.shape}", "max_rel": float("inf")}
    return None


def compare(ref: np.ndarray, out: np.ndarray, topk: bool = False, unordered: bool = False) -> dict:
    """max abs, max rel (max|d| / max|ref|), mean abs, min per-sample cosine, top-1/top-5
    agreement; unordered: each sample's rows compared as a set (`_unordered`). Computed one
    sample at a time: the float64 copies and temporaries of a whole dense batch (4 x 520 x 520 x
    21 logits and their argsort) were a conversion's peak memory."""
    ref, out = np.asarray(ref), np.asarray(out)
    return _shape_error(ref, out) or _finish(_sample_rows(ref, out, topk, unordered))


def compare_outputs(ref: dict, out: dict, tolerance: float, specs=DEFAULT_OUTPUTS) -> dict:
    """ref/out: {"outputs": {name: array}, "features": {name: array}} (`out` may lack features).

    Each output is compared by name with its own tolerance (the spec's, else `tolerance`) and,
    for a classification output, top-1/top-5 agreement; features use `tolerance`."""
    return compare_outputs_in_parts([(ref, out)], tolerance, specs)


def compare_outputs_in_parts(parts, tolerance: float, specs=DEFAULT_OUTPUTS) -> dict:
    """`compare_outputs` of a batch given as (ref, out) parts of some samples each, e.g. produced
    one sample at a time by an iterator: no part needs to outlive its turn (a float64 reference
    of a 520 px segmentation batch with its features is 1 GB)."""
    samples: dict = {}    # (group, name) -> [sample stats], or the error that ended it

    def add(key, ref, out, topk=False, unordered=False):
        if isinstance(samples.get(key), dict):
            return
        ref, out = np.asarray(ref), np.asarray(out)
        error = _shape_error(ref, out)
        if error:
            samples[key] = error
        else:
            samples.setdefault(key, []).extend(_sample_rows(ref, out, topk, unordered))

    for ref, out in parts:
        for spec in specs:
            if spec.name not in out["outputs"]:
                samples[("outputs", spec.name)] = {
                    "error": f"no output named {spec.name!r} (got {sorted(out['outputs'])})",
                    "max_rel": float("inf")}
                continue
            add(("outputs", spec.name), ref["outputs"][spec.name], out["outputs"][spec.name],
                spec.metric == "classification", spec.metric == "unordered")
        for name, arr in (out.get("features") or {}).items():
            add(("features", name), ref["features"][name], arr)
    result = {"outputs": {}, "features": {}}
    bounds = []
    for (group, name), got in samples.items():
        m = got if isinstance(got, dict) else _finish(got)
        tol = tolerance
        if group == "outputs":
            tol = next(s.tolerance for s in specs if s.name == name) or tolerance
            m["tolerance"] = tol
        result[group][name] = m
        bounds.append(m["max_rel"] / tol)
    result["max_rel"] = max(m["max_rel"] for group in ("outputs", "features")
                            for m in result[group].values())
    # NaN/inf outputs fail whatever the tolerance (NaN <= tol is False, but inf <= inf is not)
    worst = max(bounds)
    result["passed"] = bool(np.isfinite(worst) and worst <= 1.0)
    return result


def output_summary(parity: dict) -> dict:
    """{output name: worst max rel over the formats} and the lowest top-1 agreement of the
    classification outputs (None if there is none), from a report's parity section."""
    worst, top1 = {}, None
    for p in parity.values():
        for name, m in (p.get("outputs") or {}).items():
            worst[name] = max(worst.get(name, 0.0), m.get("max_rel", float("inf")))
            if "top1" in m:
                top1 = m["top1"] if top1 is None else min(top1, m["top1"])
    return {"max_rel": worst, "top1": top1}


class SignatureError(ZooError):
    """The Keras model's inputs/outputs do not carry the names the recipe declares."""


def named_outputs(model, specs) -> dict:
    """{declared name: Keras tensor} of a model's outputs. Several outputs must be a dict keyed by
    the declared names (a list would be matched by position, which no exported format keeps)."""
    outs = model.output
    names = [s.name for s in specs]
    if isinstance(outs, dict):
        if set(outs) != set(names):
            hint = ("declare `outputs:` in the recipe, one per name (without it a model has one "
                    "`logits` output)" if specs is DEFAULT_OUTPUTS else
                    "name the builder's outputs like the recipe's")
            raise SignatureError(f"the Keras model's outputs are {sorted(outs)}, the recipe declares "
                                 f"{names}: {hint}")
        return dict(outs)
    if isinstance(outs, (list, tuple)):
        if len(outs) == 1 and len(names) == 1:
            return {names[0]: outs[0]}
        raise SignatureError(f"the Keras model returns a {type(outs).__name__} of {len(outs)} "
                             f"outputs; return a dict keyed by the declared names {names} "
                             f"(keras.Model(inputs, {{name: tensor, ...}}))")
    if len(names) != 1:
        raise SignatureError(f"the Keras model has one output, the recipe declares {names}")
    return {names[0]: outs}


def feed(model, inputs: dict):
    """The `inputs` dict in the structure the Keras model takes: a dict (named inputs), or the one
    array of a single-input model. A bare array is passed through (a single image input)."""
    if not isinstance(inputs, dict):
        return inputs
    if isinstance(model.input, dict):
        missing = sorted(set(model.input) - set(inputs))
        if missing:
            raise SignatureError(f"the Keras model takes inputs {sorted(model.input)}; the recipe "
                                 f"declares {sorted(inputs)}")
        return {k: inputs[k] for k in model.input}
    if len(inputs) != 1:
        raise SignatureError(f"the recipe declares inputs {sorted(inputs)} but the Keras model "
                             f"takes one tensor; build it with a dict of keras.Input, one per name")
    return next(iter(inputs.values()))


def sample(data, i: int):
    """Sample `i` of `data` as a batch of one: an array, or {name: array or nested dict} with
    each array sliced (inputs by name, or {"outputs": {...}, "features": {...}} results)."""
    if isinstance(data, dict):
        return {k: sample(v, i) for k, v in data.items()}
    return data[i:i + 1]


def by_sample(run, inputs) -> dict:
    """`run` on each sample of `inputs` ({name: array} or one array, batch first), its
    {"outputs": {...}, "features": {...}} results concatenated: what one batched call gives for
    a model whose samples do not interact (any model in inference), with the activations of one
    sample in memory instead of the batch's (the validation batch of a 520 px segmentation net
    was a conversion's peak memory). ValueError when a result is not one row per sample."""
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    n, merged = len(first), None
    for i in range(n):
        part = run(sample(inputs, i))
        if merged is None:   # the batch's arrays, filled row by row: no second copy at the end
            merged = {group: {key: np.empty((n, *np.shape(a)[1:]), np.asarray(a).dtype)
                              for key, a in part[group].items() if np.ndim(a)}
                      for group in ("outputs", "features")}
        for group, arrays in merged.items():
            for key, a in part[group].items():
                if key not in arrays or np.shape(a) != (1, *arrays[key].shape[1:]):
                    raise ValueError(f"{group} {key!r} is not one row per sample")
                arrays[key][i] = a[0]
    return merged


def per_sample_or_batch(run, inputs) -> dict:
    """`by_sample`, or `run` on the whole batch when a result is not one row per sample."""
    try:
        return by_sample(run, inputs)
    except ValueError:
        return run(inputs)


class KerasProbe:
    """A Keras model's named outputs and its named layers' outputs, run one sample at a time
    (`per_sample_or_batch`). Built and traced once, and run as often as needed: a conversion runs
    the same probe for its in-memory validation and, once the written `.weights.h5` is loaded back
    into the model's variables, for the reload validation. A second probe there was a second
    functional graph and a second trace of it (issue 11: DenseNet-121's reload stage +33 MiB)."""

    def __init__(self, model, feature_layers, specs=DEFAULT_OUTPUTS):
        import keras

        self.model, self.feature_layers, self.specs = model, list(feature_layers), specs
        self._probe = keras.Model(model.input, {
            "outputs": named_outputs(model, specs),
            "features": {n: model.get_layer(n).output for n in self.feature_layers}})

    def __call__(self, inputs: dict) -> dict:
        def run(batch):
            res = self._probe.predict_on_batch(feed(self.model, batch))
            return {"outputs": {k: np.asarray(v) for k, v in res["outputs"].items()},
                    "features": {k: np.asarray(v) for k, v in res["features"].items()}}
        return per_sample_or_batch(run, inputs)

    def traces(self) -> int:
        """How many times its predict function was traced (0 before the first call)."""
        fn = self._probe.predict_function
        return 0 if fn is None else fn.experimental_get_tracing_count()


def keras_outputs(model, inputs: dict, feature_layers: list[str], specs=DEFAULT_OUTPUTS) -> dict:
    """The named outputs and the named layers' outputs of a Keras model (a one-off KerasProbe)."""
    return KerasProbe(model, feature_layers, specs)(inputs)


def _match_inputs(path, names, inputs: dict) -> dict:
    """{runtime's input name: array}: by name, or the one input of a one-input model (a runtime
    may call it something else, e.g. ONNX's `input_0`)."""
    names = sorted(names)
    if len(names) == 1 and len(inputs) == 1:
        return {names[0]: next(iter(inputs.values()))}
    if set(names) == set(inputs):
        return dict(inputs)
    raise SignatureError(f"{path}: the exported model takes {names}, the model declares "
                         f"{sorted(inputs)}")


def _named_outputs(res: dict, specs) -> dict:
    """The runtime's outputs by declared name. A one-output model's output may carry a runtime
    name (`output_0`); several outputs are matched by name only, never by position."""
    names = [s.name for s in specs]
    if len(res) == 1 and len(names) == 1:
        return {"outputs": {names[0]: np.asarray(next(iter(res.values())))}}
    return {"outputs": {k: np.asarray(v) for k, v in res.items()}}


def saved_model_outputs(path, inputs: dict, specs=DEFAULT_OUTPUTS) -> dict:
    """Run the SavedModel's serving signature; inputs and outputs are matched by name (the
    signature's output order is not stable across processes)."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    feed_ = _match_inputs(path, fn.structured_input_signature[1], inputs)
    return _named_outputs(fn(**{k: tf.constant(v) for k, v in feed_.items()}), specs)


def _tflite_interpreter(path):
    """TensorFlow's LiteRT interpreter: unlike the standalone ai_edge_litert it links the TF
    select-ops (Flex) delegate, which Keras' export uses for ops TFLite has no builtin for. It
    warns that it moves to ai_edge_litert; that is all the warning says."""
    import warnings

    import tensorflow as tf
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "(?s).*tf.lite.Interpreter is deprecated")
        return tf.lite.Interpreter(model_path=str(path))


def tflite_outputs(path, inputs: dict, specs=DEFAULT_OUTPUTS) -> dict:
    """Run a LiteRT/TFLite file with the interpreter, through its signature runner: inputs fed
    and outputs read by name. The file stores batch 1 (its other axes are fixed at the validation
    size, see zoo.export); the runner resizes each input tensor to the array it is given, here the
    golden input's shape, and re-allocates before invoking (tests/test_formats.py checks it)."""
    runner = _tflite_interpreter(path).get_signature_runner()
    details = runner.get_input_details()
    feed_ = _match_inputs(path, details, inputs)
    return _named_outputs(runner(**{k: np.asarray(v, details[k]["dtype"])
                                    for k, v in feed_.items()}), specs)


def onnx_outputs(path, inputs: dict, specs=DEFAULT_OUTPUTS) -> dict:
    """Run an ONNX file with onnxruntime (CPU); inputs and outputs matched by name."""
    try:
        import onnxruntime as ort
    except ImportError:
        from zoo.cli import DIST
        raise SignatureError(f"{path}: validating ONNX needs onnxruntime: pip install "
                             f"'{DIST}[onnx]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed_ = _match_inputs(path, [i.name for i in session.get_inputs()], inputs)
    names = [o.name for o in session.get_outputs()]
    res = session.run(names, {k: np.asarray(v, np.float32) for k, v in feed_.items()})
    return _named_outputs(dict(zip(names, res)), specs)


# {format: run(path, inputs by name, output specs) -> {"outputs": {name: array}}} of the formats
# that are not Keras files
RUNNERS = {"saved_model": saved_model_outputs, "tflite": tflite_outputs, "onnx": onnx_outputs}


def load_golden(model_dir) -> tuple[dict, dict]:
    """(inputs by name, {"outputs", "features"}) as converted; also reads the first format
    (one `inputs` array and `logits`)."""
    with np.load(Path(model_dir) / GOLDEN) as z:
        files = z.files
        part = lambda prefix: {k[len(prefix):]: z[k] for k in files if k.startswith(prefix)}
        inputs = part("input/") or {"image": z["inputs"]}
        outputs = part("output/") or {"logits": z["logits"]}
        return inputs, {"outputs": outputs, "features": part("feature/")}


def save_golden(model_dir, inputs: dict, ref: dict) -> None:
    arrays = {f"input/{k}": v for k, v in inputs.items()}
    arrays.update({f"output/{k}": v for k, v in ref["outputs"].items()})
    arrays.update({f"feature/{k}": v for k, v in ref["features"].items()})
    np.savez(Path(model_dir) / GOLDEN, **arrays)


def validate_files(model_dir, inputs=None, ref=None, probe: KerasProbe | None = None) -> dict:
    """Re-run every exported file in `model_dir` (the formats its config.json records) and compare
    with the golden reference, output by output by name.

    probe: a KerasProbe of the Keras model the files were just written from (the conversion). Its
    `.weights.h5` is then loaded back into that model and run through the same probe, instead of
    into a second build of the same builder call: the file is what is validated, and a rebuild
    would hold a third copy of the weights at the worker's peak (issue 11). Without it
    (validate_all, long after) the recorded builder rebuilds the model. Returns {format:
    comparison}, each with "passed"; used right after export and by scripts/validate_all.py,
    without torch."""
    from zoo.constants import FORMAT_FILES
    from zoo.export import written_formats

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if inputs is None:
        inputs, ref = load_golden(model_dir)
    _, specs = from_config(config)
    tol = config["tolerance"]
    feats = [f for f in config.get("feature_layers", []) if f in ref["features"]]
    if probe is not None and (probe.feature_layers, [s.name for s in probe.specs]) != \
            (feats, [s.name for s in specs]):   # not this folder's outputs: probe them anew
        probe = KerasProbe(probe.model, feats, specs)
    results = {}
    for fmt in written_formats(config):
        path = model_dir / FORMAT_FILES[fmt]
        if fmt == "weights.h5" and probe is not None:
            probe.model.load_weights(path)
            out = probe(inputs)
        elif fmt in ("weights.h5", "keras"):
            loaded = _load_keras(config, path)
            out = keras_outputs(loaded, inputs, feats, specs)
            del loaded
        else:
            out = RUNNERS[fmt](path, inputs, specs)
        results[fmt] = compare_outputs(ref, out, tol, specs)
    return results


def _load_keras(config: dict, path: Path):
    """The Keras model of a `.weights.h5` (rebuilt with the recorded builder) or a `.keras` file."""
    import keras

    import zoo.layers  # noqa: F401 - registers custom layers for .keras loading
    from zoo.models import build

    if path.suffix == ".keras":
        return keras.saving.load_model(path, safe_mode=True)
    model = build(config["builder"], config["builder_kwargs"])
    model.load_weights(path)
    return model
