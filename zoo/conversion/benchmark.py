"""One model of a benchmark, in its own process: `python -m zoo.conversion.benchmark JOB RESULT`.

The model is converted through zoo's own pipeline (perturbed random weights, every stage timed,
the formats whose latency is measured exported into a temporary folder), the worker's peak RSS is
read, then the PyTorch original and every Keras path are timed on the same input. The paths are
timed round-robin, one call of each per round, so that load from other processes on a shared
machine falls on all of them alike and the ratios stay meaningful when the absolute times do not.
Prints `@@stage <name>` lines for the parent's progress bar (like zoo.conversion.worker).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from zoo.conversion.torch_first import torch  # before anything imports keras
from zoo.conversion.worker import baseline_rss_mb
from zoo.worker_env import peak_rss_mb, restore_steady_allocator


def pin_threads(n: int) -> None:
    """Both frameworks on `n` intra-op and `n` inter-op threads. TensorFlow accepts this only
    before its runtime starts, so this runs before anything builds a tensor (it raises if not)."""
    torch.set_num_threads(n)
    torch.set_num_interop_threads(n)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)


def batch_inputs(inputs: dict, batch: int) -> dict:
    """zoo's validation inputs (a fixed batch of noise and image-like samples) repeated or cut to
    `batch` samples."""
    out = {}
    for k, a in inputs.items():
        reps = -(-batch // len(a))
        out[k] = np.ascontiguousarray(np.concatenate([a] * reps)[:batch])
    return out


def stats_ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "calls": len(ms)}


def _saved_model_call(folder, inputs: dict, threads: int):
    import tensorflow as tf

    from zoo.validate import _match_inputs

    sig = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    fed = {k: tf.constant(v) for k, v in
           _match_inputs("saved_model", sig.structured_input_signature[1], inputs).items()}
    return lambda: sig(**fed)


def _tflite_call(folder, inputs: dict, threads: int):
    """TensorFlow's interpreter (it links the Flex delegate Keras' export may need, see
    zoo.validate), on `threads` threads; its signature runner resizes the batch-1 file's input
    to the batch given."""
    import warnings

    import tensorflow as tf

    from zoo.validate import _match_inputs
    with warnings.catch_warnings():   # "moves to ai_edge_litert": that is all it says
        warnings.filterwarnings("ignore", "(?s).*tf.lite.Interpreter is deprecated")
        interp = tf.lite.Interpreter(model_path=str(folder / "model.tflite"), num_threads=threads)
    runner = interp.get_signature_runner()
    details = runner.get_input_details()
    fed = {k: np.asarray(v, details[k]["dtype"])
           for k, v in _match_inputs("tflite", details, inputs).items()}
    return lambda: runner(**fed)


def _runners(model, tm, folder, exports, specs, inputs: dict, threads: int) -> dict:
    """{path: (call() -> result, result -> {output name: array})} for one batch of inputs; a path
    that cannot be measured is a string saying why."""
    import tensorflow as tf

    from zoo.conversion.forward import select, torch_args
    from zoo.fold import fold_for_inference
    from zoo.validate import _named_outputs, feed

    in_specs, out_specs = specs
    args = torch_args(inputs, in_specs)

    def torch_call():
        with torch.inference_mode():
            return tm.module(*args)

    def keras_named(res):
        return _named_outputs(res if isinstance(res, dict) else {"out": res}, out_specs)["outputs"]

    x = tf.nest.map_structure(tf.constant, feed(model, inputs))
    runners = {"torch": (torch_call, lambda res: select(res, out_specs))}
    # the copy --inference exports: BatchNorm and layer scale folded into the preceding layer
    folded, _counts = fold_for_inference(model)
    for path, net, jit in (("tf_function", model, False), ("xla", model, True),
                           ("folded", folded, False), ("folded_xla", folded, True)):
        fn = tf.function(lambda t, net=net: net(t, training=False), jit_compile=jit)
        runners[path] = (lambda fn=fn: fn(x), keras_named)
    for fmt, make in (("saved_model", _saved_model_call), ("tflite", _tflite_call)):
        why = exports.get(fmt, {"skipped": "not exported (--formats)"}).get("skipped")
        runners[fmt] = f"not measured: {why}" if why else (make(folder, inputs, threads), keras_named)
    return runners


def time_paths(runners: dict, calls: int, warmup: int) -> tuple[dict, dict]:
    """Round-robin timing; returns ({path: stats or why not}, {path: outputs of its last call})."""
    live = {p: r for p, r in runners.items() if not isinstance(r, str)}
    last, why = {}, {p: r for p, r in runners.items() if isinstance(r, str)}
    for path, (call, _) in list(live.items()):
        try:
            for _ in range(warmup):   # the first calls trace, compile (XLA) and allocate
                last[path] = call()
        except Exception as e:  # noqa: BLE001 - a path that cannot run is reported, others go on
            why[path] = f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            del live[path]
    seconds = {p: [] for p in live}
    for _ in range(calls):
        for path, (call, _) in live.items():
            t0 = time.perf_counter()
            last[path] = call()
            seconds[path].append(time.perf_counter() - t0)
    stats = {p: stats_ms(seconds[p]) if p in live else why[p] for p in runners}
    return stats, {p: named(last[p]) for p, (_, named) in live.items()}


def measure(model, tm, folder, exports, specs, base_inputs, batch, threads, calls, warmup) -> dict:
    from zoo.validate import compare

    inputs = batch_inputs(base_inputs, batch)
    runners = _runners(model, tm, folder, exports, specs, inputs, threads)
    stats, outputs = time_paths(runners, calls, warmup)
    if "torch" in outputs:   # the Keras paths against PyTorch, when PyTorch ran
        for path in outputs.keys() - {"torch"}:
            # the same network was timed: its outputs agree with torch's on this input
            stats[path]["max_rel"] = max(compare(outputs["torch"][k], v)["max_rel"]
                                         for k, v in outputs[path].items())
            stats[path]["ratio"] = stats[path]["median_ms"] / stats["torch"]["median_ms"]
    return stats


def run(job: dict) -> dict:
    result = {"name": job["name"], "status": "failed"}
    try:
        pin_threads(job["threads"])
        result["rss_baseline_mb"] = baseline_rss_mb()
        result.update(_run(job))
        result["status"] = "passed"
    except Exception as e:  # noqa: BLE001 - the parent reports every failure and goes on
        result["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
    return result


def _run(job: dict) -> dict:
    from zoo.catalog import get_variant
    from zoo.conversion.pipeline import convert
    from zoo.conversion.sources import load_torch_model
    from zoo.io_spec import make_inputs

    name = job["name"]
    variant, tag = get_variant(name)
    size = job.get("input_size") or variant.input_size
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        t0 = time.perf_counter()
        model, report = convert(name, weights="random", out_dir=tmp, input_size=size,
                                formats=job["formats"],
                                progress=lambda s: print(f"@@stage {s}", flush=True))
        out = {"conversion_seconds": round(time.perf_counter() - t0, 3),
               "timings": report["timings"], "rss_peak_mb": peak_rss_mb(), "input_size": size,
               "peak_rss_mb_after_stage": report["peak_rss_mb_after_stage"],
               "exports": report["exports"], "family": variant.recipe.family}
        print("@@stage latency", flush=True)
        # the conversion ran with convert_all's allocator (its peak RSS is recorded above); the
        # timing runs with a long-running process's, which PyTorch's speed depends on
        out["steady_allocator"] = restore_steady_allocator()
        # the torch original again: random weights are seeded, so this is the module the Keras
        # model was mapped from (measure() checks the outputs agree)
        tm = load_torch_model(variant, tag, "random")
        out["params"] = {"torch": sum(p.numel() for p in tm.module.parameters()),
                         "keras": int(model.count_params())}
        out["param_bytes"] = report["parameter_bytes"]   # counted once, by the pipeline
        specs = (variant.input_specs(), variant.output_specs())
        base = make_inputs(specs[0], size, tm.preprocessing)
        folder = Path(report["output_dir"])
        out["latency"] = {str(b): measure(model, tm, folder, report["exports"], specs, base, b,
                                          job["threads"], job["calls"], job["warmup"])
                          for b in job["batches"]}
    out["rss_end_mb"] = peak_rss_mb()
    return out


def main(argv=None):
    job_path, result_path = (argv or sys.argv[1:])[:2]
    with open(job_path) as f:
        job = json.load(f)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(job)
    from zoo.export import write_json
    write_json(result_path, result)
    return 0 if result["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
