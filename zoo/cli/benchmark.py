"""Benchmark catalogue models: conversion cost, and the latency of the converted Keras model
against the PyTorch original, measured side by side in a fresh worker process per model.

The parent imports neither torch nor TensorFlow (zoo.conversion.benchmark runs each model); it
writes OUT/results.json, OUT/BENCHMARK.md and PNG plots. Ratios of two paths timed in one process,
round-robin, are what a shared, noisy machine can report; absolute times vary from run to run.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from zoo.arguments import cli, output_root, positive_int, positive_seconds
from zoo.cli import DIST, require_convert_extra
from zoo.constants import STAGES
from zoo.worker_env import ALLOCATOR_ENV, THREAD_VARS

# What the worker exports: the default formats (their export time is part of a conversion's cost)
# and the two files whose runtimes are timed.
BENCH_FORMATS = ("weights.h5", "keras", "saved_model", "tflite")
# The Keras paths the worker times next to PyTorch eager, and their column titles.
PATHS = {"tf_function": "tf.function", "xla": "tf.function XLA",
         "folded": "folded tf.function", "folded_xla": "folded XLA",   # --inference (zoo/fold.py)
         "saved_model": "SavedModel", "tflite": "TFLite"}


def machine() -> dict:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(ram / 2**30, 1),
            "platform": platform.platform(), "load_average_before": _load()}


def _load() -> list | None:
    """1/5/15-minute load averages: on a shared machine, how busy it was during the run."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run_one(name: str, job: dict, tmp: Path, timeout: float | None, on_stage) -> dict:
    """One model in a fresh `python -m zoo.conversion.benchmark` process."""
    stem = tmp / name.replace("/", "__")
    job_path, result_path, log_path = (stem.with_suffix(s) for s in (".job.json", ".json", ".log"))
    job_path.write_text(json.dumps({**job, "name": name}))
    threads = str(job["threads"])
    # every pool of both frameworks takes --threads, whatever the caller's environment says
    # and the allocator is set as convert_all's workers have it, so peak RSS is theirs
    env = {**ALLOCATOR_ENV, **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           **dict.fromkeys(THREAD_VARS, threads)}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "zoo.conversion.benchmark", str(job_path),
                                 str(result_path)], stdout=subprocess.PIPE, stderr=log, text=True,
                                env=env)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        for line in proc.stdout:
            if line.startswith("@@stage "):
                on_stage(line.split(None, 1)[1].strip())
        proc.wait()
        if timer:
            timer.cancel()
    if result_path.is_file():
        return json.loads(result_path.read_text())
    tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
    why = (f"timed out after {timeout:g} s" if timeout and time.perf_counter() - start >= timeout
           else f"worker exited with code {proc.returncode} without a result")
    return {"name": name, "status": "failed", "error": f"{why}: {tail}"}


def _ms(s: dict) -> str:
    return f"{s['median_ms']:.1f} [{s['p10_ms']:.1f}–{s['p90_ms']:.1f}]"


def latency_table(models: dict) -> str:
    """One row per model and batch: PyTorch eager in ms, each Keras path as its ratio to it."""
    head = ["model", "batch", "PyTorch eager ms [p10–p90]", *(f"{t} / PyTorch" for t in PATHS.values())]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in sorted(models.items()):
        for batch, stats in (r.get("latency") or {}).items():
            torch_ = stats.get("torch")
            cells = [f"`{name}`", batch, _ms(torch_) if isinstance(torch_, dict) else str(torch_)]
            for path in PATHS:
                s = _stat(r, batch, path)
                why = str(stats.get(path) or "-").replace("|", "/")[:80]   # why not measured
                cells.append(f"**{s['ratio']:.2f}** ({_ms(s)} ms)" if "ratio" in s else why)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_table(models: dict, batches) -> str:
    """One row per model (the README's table): each Keras path's ratio at every batch size."""
    per = " / ".join(f"b{b}" for b in batches)
    head = ["model", "params (M)", f"PyTorch ms {per}", *(f"{t} {per}" for t in PATHS.values()),
            "conversion s", "peak RSS above baseline MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in sorted(models.items()):
        if r.get("status") != "passed":
            continue
        cells = [f"`{name}`", f"{r['params']['torch'] / 1e6:.1f}",
                 " / ".join(f"{_stat(r, b, 'torch').get('median_ms', float('nan')):.1f}"
                            for b in batches)]
        cells += [" / ".join(f"{_stat(r, b, p).get('ratio', float('nan')):.2f}" for b in batches)
                  for p in PATHS]
        cells += [f"{r['conversion_seconds']:.1f}", f"{r['rss_peak_mb'] - r['rss_baseline_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Issue 11's latency targets: the best Keras path at most as slow as PyTorch at every batch size,
# and the median of the best paths' ratios at batch 8 at most 0.8.
TARGET_RATIO, TARGET_MEDIAN_B8 = 1.0, 0.8


def best_path(r: dict, batch) -> tuple[str, float] | None:
    """The fastest measured Keras path at one batch size, as (path, ratio to PyTorch)."""
    measured = {p: s["ratio"] for p in PATHS if "ratio" in (s := _stat(r, batch, p))}
    return min(measured.items(), key=lambda kv: kv[1]) if measured else None


def target_table(models: dict, batches) -> str:
    """Per model: the best Keras path at each batch size and whether it meets TARGET_RATIO; then
    how many models meet it everywhere and the median best ratio at batch 8."""
    head = ["model", *(f"best path b{b}" for b in batches), f"<= {TARGET_RATIO:g} everywhere"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    met, b8 = 0, []
    for name, r in sorted(models.items()):
        if r.get("status") != "passed":
            continue
        best = [best_path(r, b) for b in batches]
        ok = all(x is not None and x[1] <= TARGET_RATIO for x in best)
        met += ok
        if 8 in batches and best[batches.index(8)]:
            b8.append(best[batches.index(8)][1])
        lines.append("| " + " | ".join([f"`{name}`", *(
            f"{x[1]:.2f} ({PATHS[x[0]]})" if x else "-" for x in best), "yes" if ok else "**no**"])
            + " |")
    counted = len(lines) - 2
    tail = f"\n{met} of {counted} models meet it at every batch size."
    if b8:
        tail += (f" Median of the best ratios at batch 8: {statistics.median(b8):.2f} (target <= "
                 f"{TARGET_MEDIAN_B8:g}).")
    return "\n".join(lines) + "\n" + tail + "\n"


def conversion_table(models: dict) -> str:
    head = ["model", "params (M)", *STAGES, "total s", "peak RSS MB", "above baseline MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in sorted(models.items()):
        if r.get("status") != "passed":
            continue
        t = r["timings"]
        lines.append("| " + " | ".join([
            f"`{name}`", f"{r['params']['torch'] / 1e6:.1f}",
            *(f"{t[s]:.2f}" if s in t else "-" for s in STAGES), f"{r['conversion_seconds']:.1f}",
            f"{r['rss_peak_mb']:.0f}", f"{r['rss_peak_mb'] - r['rss_baseline_mb']:.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def header(results: dict) -> str:
    m, s, v = results["machine"], results["settings"], results["versions"]
    last = max((r["measured_at"] for r in results["models"].values() if r.get("measured_at")),
               default=None)
    return (f"Run {results['date']}" + (f" (last model measured {last})" if last else "")
            + f" on {m['cpu']} ({m['cores']} cores, {m['ram_gb']} GB RAM), "
            f"{s['threads']} thread(s) for each framework, median of {s['calls']} calls after "
            f"{s['warmup']} warm-up calls, random perturbed weights, "
            f"{'input ' + str(s['input_size']) + ' px' if s['input_size'] else 'each recipe input size'}; "
            f"load average (1/5/15 min) {m.get('load_average_before')} before, "
            f"{m.get('load_average_after')} after."
            f"\nVersions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v) if v[k]) + ".\n"
            + _sources(results["models"]) + _busy_warning(m) + _busy_models(results["models"]))


def _sources(models: dict) -> str:
    """Which zoo commit each model was measured on, when a resumed run spans several."""
    by = {}
    for name, r in sorted(models.items()):
        by.setdefault(r.get("source") or "not recorded", []).append(name)
    if len(by) < 2:
        return f"zoo source: {next(iter(by), 'not recorded')}.\n" if by else ""
    return ("\n**Measured on several zoo commits** (a resumed run): " + "; ".join(
        f"{src}: {len(names)} model(s)" for src, names in by.items())
        + ". results.json records each model's `source`.\n")


def _busy_warning(m: dict) -> str:
    """Measured: with more runnable threads than cores, PyTorch's OpenMP pool slows down many
    times more than TensorFlow's thread pool (ResNet-18 b1 0.96 s instead of 37 ms at a load of
    3.6 on 2 cores), so ratios from a busy machine say little about the converted models. Only
    the load before the run counts here: once it runs, the benchmark's own threads are in the
    load average too (_busy_models measures the others' share per model)."""
    load = (m.get("load_average_before") or [None])[0]
    if load is None or load < m["cores"]:
        return ""
    return (f"\n**The machine was busy** (1-minute load {load} on {m['cores']} cores before the "
            "run): PyTorch's OpenMP threads suffer far more from sharing the cores than "
            "TensorFlow's, so these ratios favour TensorFlow; re-run on an idle machine.\n")


# a model timed while other processes took more than this share of the machine's CPU time
BUSY_SHARE = 0.25


def _busy_models(models: dict) -> str:
    """The models timed while other processes used more than BUSY_SHARE of the CPU time."""
    busy = sorted(n for n, r in models.items() if (r.get("other_cpu_share") or 0) > BUSY_SHARE)
    return ("" if not busy else f"\n**Timed while other processes used more than "
            f"{BUSY_SHARE:.0%} of the CPU time**: " + ", ".join(
                f"`{n}` ({models[n]['other_cpu_share']:.0%})" for n in busy)
            + "; their ratios favour TensorFlow.\n")


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the machine spent busy, CPU seconds of this process and its finished
    children) so far; None where /proc/stat is not there (not Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
    busy = sum(fields[:8]) - fields[3] - fields[4]
    own = sum(getattr(resource.getrusage(who), f) for who in
              (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    return busy / os.sysconf("SC_CLK_TCK"), own


def other_cpu_share(start, end, wall: float, cores: int) -> float | None:
    """Share of the machine's CPU time that other processes used between two _cpu_seconds()."""
    if start is None or end is None or wall <= 0:
        return None
    return round(max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / (wall * cores), 3)


def markdown(results: dict) -> str:
    models = results["models"]
    failed = [f"- `{n}`: {r.get('error', '')[:300]}" for n, r in sorted(models.items())
              if r.get("status") != "passed"]
    return ("# Benchmark\n\n" + header(results) +
            f"\nCommand: `{results['command']}`\n\n"
            "## Summary: latency of each Keras path / PyTorch eager (below 1: faster)\n\n"
            + summary_table(models, results["settings"]["batches"]) +
            "\n## Targets: the fastest Keras path of each model against PyTorch\n\n"
            + target_table(models, results["settings"]["batches"]) +
            "\n## Latency: each Keras path against PyTorch eager\n\n"
            "Ratio of medians (below 1: faster than PyTorch), then the path's median [p10–p90] in "
            "ms. Both timed in one process, one call of each path per round.\n\n"
            + latency_table(models) +
            "\n## Conversion (seconds per stage of zoo's pipeline) and the worker's peak memory\n\n"
            "Peak RSS is the worker's after conversion; the baseline is with torch, TensorFlow, "
            "Keras and zoo loaded and TensorFlow's runtime started.\n\n" + conversion_table(models)
            + ("\n## Failed\n\n" + "\n".join(failed) + "\n" if failed else ""))


def _stat(r: dict, batch, path: str) -> dict:
    """One path's figures at one batch size ({} when it was not measured: a why-not string)."""
    s = (r.get("latency") or {}).get(str(batch), {}).get(path)
    return s if isinstance(s, dict) else {}


def _short(name: str) -> str:
    """A plot label: the architecture without source and weight tag."""
    return name.split("/", 1)[-1].split(".", 1)[0]


def plots(results: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")   # files only: no display on a server or in CI
    import matplotlib.pyplot as plt
    import numpy as np

    models = {n: r for n, r in sorted(results["models"].items()) if r.get("status") == "passed"}
    batches = results["settings"]["batches"]
    fig, axes = plt.subplots(len(batches), 1, figsize=(max(6, 1.6 * len(models) + 2),
                                                       3.2 * len(batches)), squeeze=False)
    width = 0.8 / len(PATHS)
    for ax, batch in zip(axes[:, 0], batches):
        for i, (path, title) in enumerate(PATHS.items()):
            ratios = [_stat(r, batch, path).get("ratio", np.nan) for r in models.values()]
            ax.bar(np.arange(len(models)) + (i - (len(PATHS) - 1) / 2) * width, ratios, width,
                   label=title)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
        ax.set_xticks(np.arange(len(models)), [_short(n) for n in models], fontsize=8,
                      rotation=15)
        ax.set_ylabel("latency / PyTorch eager")
        ax.set_title(f"batch {batch}")
    axes[0, 0].legend(fontsize=8, ncol=len(PATHS))
    fig.tight_layout()
    ratio_png = out / "latency_ratio.png"
    fig.savefig(ratio_png, dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    params = [r["params"]["torch"] / 1e6 for r in models.values()]
    short = [_short(n) for n in models]
    series = [(a1, "whole pipeline", [r["conversion_seconds"] for r in models.values()]),
              (a1, "build Keras + map weights", [r["timings"]["build_keras"] + r["timings"]["map_weights"]
                                                 for r in models.values()]),
              (a2, None, [r["rss_peak_mb"] - r["rss_baseline_mb"] for r in models.values()])]
    for ax, label, ys in series:
        ax.scatter(params, ys, label=label)
        if label != "build Keras + map weights":   # near zero: its labels would pile up
            for x, y, n in zip(params, ys, short):
                ax.annotate(n, (x, y), fontsize=7)
    a1.set(xlabel="parameters (M)", ylabel="seconds", title="conversion time")
    a1.legend(fontsize=8)
    a2.set(xlabel="parameters (M)", ylabel="MB", title="worker peak RSS above import baseline")
    fig.tight_layout()
    conv_png = out / "conversion.png"
    fig.savefig(conv_png, dpi=110)
    plt.close(fig)
    return [ratio_png, conv_png]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="GLOB", help="catalogue names to include")
    p.add_argument("--exclude", nargs="+", metavar="GLOB", help="catalogue names to skip")
    p.add_argument("--batch", nargs="+", type=cli(positive_int, "--batch"), default=[1, 8],
                   help="batch sizes (default: 1 8)")
    p.add_argument("--threads", type=cli(positive_int, "--threads"), default=os.cpu_count(),
                   help="intra-op and inter-op threads of both frameworks (default: all cores)")
    p.add_argument("--calls", type=cli(positive_int, "--calls"), default=20,
                   help="timed calls per path and batch size (default: 20)")
    p.add_argument("--warmup", type=cli(positive_int, "--warmup"), default=3,
                   help="untimed calls first (tracing, XLA compilation; default: 3)")
    p.add_argument("--input-size", type=cli(positive_int, "--input-size"),
                   help="image size (default: each recipe's)")
    p.add_argument("--timeout", type=cli(positive_seconds, "--timeout"), metavar="SECONDS",
                   help="fail a model whose worker runs longer than this, and go on")
    p.add_argument("--out", default="benchmarks", type=cli(output_root, "--out"),
                   help="where results.json, BENCHMARK.md and the plots go")
    p.add_argument("--render", action="store_true",
                   help="run nothing: rewrite BENCHMARK.md and the plots from OUT/results.json")
    p.add_argument("--resume", action="store_true",
                   help="keep the models OUT/results.json already measured with the same settings "
                        "and library versions, and measure the rest of the selection")
    args = p.parse_args(argv)

    if importlib.util.find_spec("matplotlib") is None:
        print(f"error: the benchmark plots need matplotlib (not installed): pip install "
              f"'{DIST}[benchmark]'", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.render:
        if not (out / "results.json").is_file():
            print(f"error: --render: no {out / 'results.json'}", file=sys.stderr)
            return 2
        return write_report(json.loads((out / "results.json").read_text()), out)
    require_convert_extra()
    from tqdm import tqdm

    from zoo.batch import BatchError, select
    from zoo.versions import library_versions, source_revision
    try:
        names = select(args.only, args.exclude)
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not names:
        print("nothing to benchmark (selection is empty)", file=sys.stderr)
        return 0
    settings = {"batches": sorted(set(args.batch)), "threads": args.threads, "calls": args.calls,
                "warmup": args.warmup, "input_size": args.input_size,
                "formats": list(BENCH_FORMATS)}
    from zoo.export import write_json
    results = {"date": _now(), "machine": machine(), "versions": library_versions(),
               "settings": settings,
               "command": " ".join(["scripts/benchmark.py", *(argv if argv is not None
                                                               else sys.argv[1:])]),
               "models": {}}
    if args.resume:
        try:
            results = resumed(out / "results.json", results)
        except ValueError as e:
            print(f"error: --resume: {e}", file=sys.stderr)
            return 2
        kept = [n for n in names if n in results["models"]]
        names = [n for n in names if n not in results["models"]]
        print(f"--resume: {len(kept)} model(s) already measured, {len(names)} to measure",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    # a resumed run can span commits of one zoo version: each model records its code's
    revision = source_revision()
    bar = tqdm(names, desc="benchmark", unit="model")
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        for name in bar:
            bar.set_postfix_str(name)
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            r = run_one(name, settings, Path(tmp), args.timeout,
                        lambda s, name=name: bar.set_postfix_str(f"{name} [{s}]"))
            # when, and how busy the machine was with other work (a resumed run spans runs)
            r.update(measured_at=_now(), source=revision, other_cpu_share=other_cpu_share(
                cpu0, _cpu_seconds(), time.perf_counter() - t0, results["machine"]["cores"]))
            results["models"][name] = r
            results["machine"]["load_average_after"] = _load()
            # after every model: a run stopped after hours keeps what it measured (--resume)
            write_json(out / "results.json", results)
            if r.get("status") != "passed":
                tqdm.write(f"FAILED {name}: {r.get('error', '')[:500]}", file=sys.stderr)
    results["machine"]["load_average_after"] = _load()
    write_json(out / "results.json", results)
    return write_report(results, out)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def resumed(path: Path, fresh: dict) -> dict:
    """The earlier results at `path` with their passed models, to be completed by this run.
    Raises ValueError when they were measured otherwise (settings, library versions): their
    ratios would not compare with this run's."""
    if not path.is_file():
        return fresh
    try:
        old = json.loads(path.read_text())
        old_settings, old_versions = old["settings"], old["versions"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a benchmark's results.json ({e})") from None
    for what, a, b in (("settings", old_settings, fresh["settings"]),
                       ("library versions", old_versions, fresh["versions"])):
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if differ:
            raise ValueError(f"{path} was measured with other {what} ("
                             + "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now"
                                         for k in differ)
                             + "); use another --out or drop --resume")
    old["models"] = {n: r for n, r in old["models"].items() if r.get("status") == "passed"}
    old["command"] = f"{old['command']}; then {fresh['command']}"
    return old


def write_report(results: dict, out: Path) -> int:
    """BENCHMARK.md and the plots from `results`; exit code 1 if a model failed."""
    from zoo.export import write_text
    write_text(out / "BENCHMARK.md", markdown(results))
    pngs = plots(results, out)
    print(markdown(results))
    print(f"written: {out / 'BENCHMARK.md'}, {', '.join(map(str, pngs))} (from {out / 'results.json'})")
    return 0 if all(r.get("status") == "passed" for r in results["models"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
