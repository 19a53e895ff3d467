"""One model of a batch, in its own process: `python -m zoo.conversion.worker JOB.json RESULT.json`.

Prints `@@stage <name>` lines for the parent's progress bar and writes a small result JSON; a
crash or an out-of-memory kill leaves no result file, which the parent reports."""
from __future__ import annotations

import json
import sys
import time
import traceback

from zoo.conversion.torch_first import torch  # noqa: F401 - before anything imports keras
from zoo.worker_env import peak_rss_mb


def resolve_weights(name: str, requested: str) -> tuple[str, list[str]]:
    """auto -> pretrained when obtainable here, else random with a loud warning."""
    if requested != "auto":
        return requested, []
    from zoo.catalog import get_variant
    from zoo.conversion.sources import pretrained_possible

    variant, tag = get_variant(name)
    if pretrained_possible(variant, tag):
        return "pretrained", []
    return "random", [f"{name}: pretrained weights cannot be obtained here (not cached, host "
                      f"unreachable): FELL BACK TO RANDOM WEIGHTS (parity test only, not for use)"]


def baseline_rss_mb() -> float:
    """Peak RSS with torch, TensorFlow, Keras and zoo loaded and TensorFlow's runtime started:
    what any process running both frameworks holds before it converts anything. Starting the
    runtime (thread pools, oneDNN) alone adds about 480 MB here; left out of the baseline, it
    would be counted as the conversion's. TensorFlow reads its thread settings at this start,
    so a caller that sets them does so before (benchmark.pin_threads)."""
    import keras
    import tensorflow as tf

    import zoo.conversion.pipeline  # noqa: F401 - the builders, layers and engine

    keras.ops.convert_to_numpy(tf.constant([1.0]) + 1.0)
    return peak_rss_mb()


def run(job: dict) -> dict:
    from zoo.conversion.pipeline import convert
    from zoo.errors import ValidationError, ZooError

    t0 = time.perf_counter()
    result = {"name": job["name"], "status": "failed", "weights_requested": job["weights"],
              "rss_baseline_mb": baseline_rss_mb()}
    try:
        weights, warnings = resolve_weights(job["name"], job["weights"])
        result["warnings"] = warnings
        _model, report = convert(job["name"], weights=weights, out_dir=job["out"],
                                 num_classes=job.get("num_classes"),
                                 input_size=job.get("input_size"), formats=job.get("formats"),
                                 inference=job.get("inference"),
                                 requested=job["weights"]
                                 if job["weights"] == "auto" else None, warnings=warnings,
                                 progress=lambda s: print(f"@@stage {s}", flush=True))
        result.update(status="passed", report=report)
        result["warnings"] = report.get("warnings", [])
    except Exception as e:  # noqa: BLE001 - a batch reports every failure and goes on
        if isinstance(e, ValidationError):
            result.update(error=str(e), report=e.report)
        elif isinstance(e, ZooError):
            result["error"] = f"{type(e).__name__}: {e}"
        else:
            result["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        # The per-model log (this process' stderr) keeps the whole error with its traceback and
        # chained causes; the summary keeps the first line.
        print(f"{job['name']}: FAILED: {type(e).__name__}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["rss_peak_mb"] = peak_rss_mb()
    return result


def main(argv=None):
    job_path, result_path = (argv or sys.argv[1:])[:2]
    with open(job_path) as f:
        job = json.load(f)
    result = run(job)
    from zoo.export import write_json
    write_json(result_path, result)
    return 0 if result["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
