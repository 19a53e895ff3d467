"""Parity metrics and validation of converted models. NumPy + Keras only (never torch), so that
saved models can be re-validated against their golden outputs on a machine without torch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GOLDEN = "golden.npz"


def make_inputs(size: int, in_chans: int, preprocessing: dict, seed: int = 0) -> np.ndarray:
    """Fixed NHWC batch: two N(0, 1) images and two smooth, image-like ones, normalised with the
    model's mean/std (random noise alone misses errors that only show on natural statistics)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((2, size, size, in_chans)).astype(np.float32)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
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


def compare(ref: np.ndarray, out: np.ndarray, topk: bool = False) -> dict:
    """max abs, max rel (max|d| / max|ref|), mean abs, min per-sample cosine, top-1/top-5 agreement."""
    ref = np.asarray(ref, np.float64)
    out = np.asarray(out, np.float64)
    if ref.shape != out.shape:
        return {"error": f"shape {out.shape} != reference {ref.shape}", "max_rel": float("inf")}
    finite = bool(np.isfinite(out).all())
    d = np.abs(ref - out)
    r = ref.reshape(len(ref), -1)
    o = out.reshape(len(out), -1)
    cos = np.sum(r * o, 1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1), 1e-30)
    m = {"max_abs": float(d.max()), "max_rel": float(d.max() / max(np.abs(ref).max(), 1e-30)),
         "mean_abs": float(d.mean()), "cosine": float(cos.min()), "finite": finite}
    if not finite:
        m["max_rel"] = float("inf")
    if topk and ref.ndim == 2:
        k = min(5, ref.shape[1])
        m["top1"] = float(np.mean(ref.argmax(1) == out.argmax(1)))
        tr, to = np.argsort(-ref, 1)[:, :k], np.argsort(-out, 1)[:, :k]
        m["top5"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(tr, to)]))
    return m


def compare_outputs(ref: dict, out: dict, tolerance: float) -> dict:
    """ref/out: {"logits": array, "features": {name: array}} (features may be absent in `out`)."""
    result = {"logits": compare(ref["logits"], out["logits"], topk=True), "features": {}}
    for name, arr in (out.get("features") or {}).items():
        result["features"][name] = compare(ref["features"][name], arr)
    worst = max([result["logits"]["max_rel"]] +
                [f["max_rel"] for f in result["features"].values()])
    result["max_rel"] = worst
    # NaN/inf outputs fail whatever the tolerance (NaN <= tol is False, but inf <= inf is not)
    result["passed"] = bool(np.isfinite(worst) and worst <= tolerance)
    return result


def keras_outputs(model, inputs: np.ndarray, feature_layers: list[str]) -> dict:
    """Logits and the named layers' outputs of a Keras model, in one forward pass."""
    import keras

    outs = [model.outputs[0]] + [model.get_layer(n).output for n in feature_layers]
    probe = keras.Model(model.inputs, outs)
    res = probe.predict_on_batch(inputs)
    res = res if isinstance(res, (list, tuple)) else [res]
    return {"logits": np.asarray(res[0]),
            "features": {n: np.asarray(a) for n, a in zip(feature_layers, res[1:])}}


def saved_model_outputs(path, inputs: np.ndarray) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    (arg,) = fn.structured_input_signature[1].keys()
    res = fn(**{arg: tf.constant(inputs)})
    return {"logits": np.asarray(next(iter(res.values())))}


def load_golden(model_dir) -> tuple[np.ndarray, dict]:
    with np.load(Path(model_dir) / GOLDEN) as z:
        inputs = z["inputs"]
        ref = {"logits": z["logits"],
               "features": {k[len("feature/"):]: z[k] for k in z.files if k.startswith("feature/")}}
    return inputs, ref


def save_golden(model_dir, inputs, ref) -> None:
    arrays = {"inputs": inputs, "logits": ref["logits"]}
    arrays.update({f"feature/{k}": v for k, v in ref["features"].items()})
    np.savez(Path(model_dir) / GOLDEN, **arrays)


def validate_files(model_dir, inputs=None, ref=None) -> dict:
    """Re-run every exported file in `model_dir` and compare with the golden reference.

    Returns {format: comparison}, each with "passed"; used right after export and by
    scripts/validate_all.py long after, without torch."""
    import keras

    import zoo.layers  # noqa: F401 - registers custom layers for .keras loading
    from zoo.models import get_builder

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if inputs is None:
        inputs, ref = load_golden(model_dir)
    tol = config["tolerance"]
    feats = [f for f in config.get("feature_layers", []) if f in ref["features"]]
    results = {}

    model = get_builder(config["builder"])(**config["builder_kwargs"])
    model.load_weights(model_dir / "model.weights.h5")
    results["weights.h5"] = compare_outputs(ref, keras_outputs(model, inputs, feats), tol)
    del model

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    results["keras"] = compare_outputs(ref, keras_outputs(model, inputs, feats), tol)
    del model

    results["saved_model"] = compare_outputs(ref, saved_model_outputs(model_dir / "saved_model",
                                                                      inputs), tol)
    return results
