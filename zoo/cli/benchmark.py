"""Benchmark catalogue models: conversion cost, and the latency of the converted Keras model
against the PyTorch original, measured side by side in a fresh worker process per model.

The parent imports neither torch nor TensorFlow (zoo.conversion.benchmark runs each model); it
writes OUT/results.json, OUT/BENCHMARK.md and PNG plots. Ratios of two paths timed in one process,
round-robin, are what a shared, noisy machine can report; absolute times vary from run to run.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from zoo.arguments import cli, output_root, positive_int, positive_seconds
from zoo.cli import DIST, require_convert_extra
from zoo.cli.benchmark_report import markdown, plots
from zoo.worker_env import ALLOCATOR_ENV, THREAD_VARS

# What the worker exports: the default formats (their export time is part of a conversion's cost)
# and the two files whose runtimes are timed.
BENCH_FORMATS = ("weights.h5", "keras", "saved_model", "tflite")


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
    p.add_argument("--redo", nargs="+", metavar="GLOB",
                   help="with --resume: measure these selected models again though "
                        "OUT/results.json has them (their earlier figures stay until the new "
                        "ones are written)")
    args = p.parse_args(argv)

    if args.redo and not args.resume:
        print("error: --redo needs --resume (without it every selected model is measured, and "
              "results.json keeps only the selection)", file=sys.stderr)
        return 2
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
    redo = {n for n in names for g in args.redo or () if fnmatch.fnmatchcase(n, g)}
    idle = [g for g in args.redo or () if not any(fnmatch.fnmatchcase(n, g) for n in names)]
    if idle:
        print(f"error: --redo {' '.join(idle)}: matches none of the selected models (the "
              f"catalogue, or --only / --exclude)", file=sys.stderr)
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
        kept = [n for n in names if n in results["models"] and n not in redo]
        again = sum(n in results["models"] for n in redo)
        names = [n for n in names if n not in kept]
        print(f"--resume: {len(kept)} model(s) already measured, {len(names)} to measure"
              + (f" ({again} again: --redo)" if again else ""), file=sys.stderr)
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
