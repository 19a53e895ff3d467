"""The benchmark's report, rendered from results.json alone (no torch, no TensorFlow): the
tables of BENCHMARK.md, the plots, the targets of issue 11, and the README's latest-run section
(written by scripts/update_readme.py)."""
from __future__ import annotations

import statistics
from pathlib import Path

from zoo.constants import STAGES
from zoo.worker_env import RSS_LIMIT_FACTOR, rss_limit_mb

# The Keras paths the worker times next to PyTorch eager, and their column titles.
PATHS = {"tf_function": "tf.function", "xla": "tf.function XLA",
         "folded": "folded tf.function", "folded_xla": "folded XLA",   # --inference (zoo/fold.py)
         "saved_model": "SavedModel", "tflite": "TFLite"}


def _passed(models: dict) -> dict:
    """The models a run measured, by name (a failed one has no figures to report)."""
    return {n: r for n, r in sorted(models.items()) if r.get("status") == "passed"}


def _per_batch(r: dict, batches, path: str, key: str, fmt: str) -> str:
    """One path's figure at each batch size, 'b1 / b8' (nan where it was not measured)."""
    return " / ".join(format(_stat(r, b, path).get(key, float("nan")), fmt) for b in batches)


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
    """One row per model: each Keras path's ratio at every batch size."""
    per = " / ".join(f"b{b}" for b in batches)
    head = ["model", "params (M)", f"PyTorch ms {per}", *(f"{t} {per}" for t in PATHS.values()),
            "conversion s", "peak RSS above baseline MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in _passed(models).items():
        cells = [f"`{name}`", f"{r['params']['torch'] / 1e6:.1f}",
                 _per_batch(r, batches, "torch", "median_ms", ".1f")]
        cells += [_per_batch(r, batches, p, "ratio", ".2f") for p in PATHS]
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


def targets(models: dict, batches) -> dict:
    """Issue 11's latency targets over the passed models: {"best": {name: [(path, ratio) or None
    per batch size]}, "met": names whose best path is at most TARGET_RATIO at every batch size,
    "plain": {batch: how many are, on the plain tf.function path}, "median_b8": the median best
    ratio at batch 8 (None without batch 8)}."""
    passed = _passed(models)
    best = {n: [best_path(r, b) for b in batches] for n, r in passed.items()}
    met = [n for n, bs in best.items() if all(x is not None and x[1] <= TARGET_RATIO for x in bs)]
    plain = {b: sum(_stat(r, b, "tf_function").get("ratio", float("inf")) <= TARGET_RATIO
                    for r in passed.values()) for b in batches}
    b8 = [bs[batches.index(8)][1] for bs in best.values() if 8 in batches and bs[batches.index(8)]]
    return {"best": best, "met": met, "plain": plain,
            "median_b8": statistics.median(b8) if b8 else None}


def target_summary(t: dict, batches) -> str:
    """One sentence per target, from `targets`."""
    n = len(t["best"])
    line = f"{len(t['met'])} of {n} models meet it at every batch size."
    if t["median_b8"] is not None:
        line += (f" Median of the best ratios at batch 8: {t['median_b8']:.2f} (target <= "
                 f"{TARGET_MEDIAN_B8:g}).")
    return line + " On the plain tf.function path: " + ", ".join(
        f"{t['plain'][b]} of {n} at batch {b}" for b in batches) + "."


def _best_cell(x) -> str:
    return f"{x[1]:.2f} ({PATHS[x[0]]})" if x else "-"


def target_table(models: dict, batches) -> str:
    """Per model: the best Keras path at each batch size and whether it meets TARGET_RATIO; then
    `target_summary`."""
    t = targets(models, batches)
    head = ["model", *(f"best path b{b}" for b in batches), f"<= {TARGET_RATIO:g} everywhere"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, best in t["best"].items():
        lines.append("| " + " | ".join([f"`{name}`", *map(_best_cell, best),
                                         "yes" if name in t["met"] else "**no**"]) + " |")
    return "\n".join(lines) + "\n\n" + target_summary(t, batches) + "\n"


# Issue 11's conversion-cost targets: mapping the weights costs less than building the Keras
# model, and the worker's peak RSS above its import baseline stays under RSS_LIMIT_FACTOR x both
# models' parameter bytes.


def conversion_checks(r: dict) -> dict:
    """Whether one passed model meets each conversion-cost target, with the figures compared."""
    t, above = r["timings"], r["rss_peak_mb"] - r["rss_baseline_mb"]
    limit = rss_limit_mb(sum(r["param_bytes"].values()))
    before = rss_before_export(r)
    return {"map_s": t["map_weights"], "build_s": t["build_keras"],
            "map_cheaper": t["map_weights"] < t["build_keras"],
            "rss_above_mb": above, "rss_limit_mb": limit, "rss_within": above <= limit,
            "rss_before_export_mb": before,
            "rss_before_export_within": None if before is None else before <= limit,
            "biggest_rise": biggest_rise(r)}


def rss_before_export(r: dict) -> float | None:
    """Peak RSS above the baseline through validation, before the first format is exported (MiB):
    what a conversion costs apart from the formats the run asked for (the TFLite converter alone
    adds about 6x the parameters, docs/performance.md). None for results from before the
    pipeline recorded the peak after each stage."""
    before = None
    for stage, peak in r.get("peak_rss_mb_after_stage") or []:
        if stage == "export":
            break
        before = peak
    return None if before is None else before - r["rss_baseline_mb"]


def biggest_rise(r: dict) -> tuple[str, float] | None:
    """The stage (part) that raised the worker's peak RSS most, and by how much (MiB), from the
    peak after each part the pipeline recorded (None for results from before it did)."""
    steps = r.get("peak_rss_mb_after_stage")
    if not steps:
        return None
    prev, rises = r["rss_baseline_mb"], []
    for stage, peak in steps:
        rises.append((stage, peak - prev))
        prev = peak
    return max(rises, key=lambda x: x[1])


def conversion_summary(models: dict, formats=None) -> str:
    """How many passed models meet each conversion-cost target (the conversion exporting
    `formats`), naming those whose mapping is not the cheaper step."""
    checks = {n: conversion_checks(r) for n, r in _passed(models).items()}

    def misses(key):
        return [n for n, c in checks.items() if not c[key]]
    n, slow, heavy = len(checks), misses("map_cheaper"), misses("rss_within")
    staged = [c["rss_before_export_within"] for c in checks.values()
              if c["rss_before_export_within"] is not None]
    return (f"Mapping the weights cost less than building the Keras model for {n - len(slow)} of "
            f"{n} models" + (" (not: " + ", ".join(f"`{m}`" for m in slow) + ")" if slow else "")
            + f"; the worker's peak RSS above its baseline was within {RSS_LIMIT_FACTOR}x both "
            f"models' parameter bytes for {n - len(heavy)} of {n}"
            + (f" (the conversion exported {', '.join(formats)})" if formats else "")
            + (f"; through validation, before the first export, for {sum(staged)} of the "
               f"{len(staged)} whose peak after each stage was recorded" if staged else "")
            + ".\n")


def conversion_table(models: dict, formats=None) -> str:
    head = ["model", "params (M)", *STAGES, "total s", "peak RSS MiB", "above baseline MiB",
            f"limit ({RSS_LIMIT_FACTOR}x params) MiB", "before export MiB",
            "largest rise: stage MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in _passed(models).items():
        t, c = r["timings"], conversion_checks(r)
        lines.append("| " + " | ".join([
            f"`{name}`", f"{r['params']['torch'] / 1e6:.1f}",
            *(f"{t[s]:.2f}" if s in t else "-" for s in STAGES), f"{r['conversion_seconds']:.1f}",
            f"{r['rss_peak_mb']:.0f}", f"{c['rss_above_mb']:.0f}",
            f"{c['rss_limit_mb']:.0f}" + ("" if c["rss_within"] else " **over**"),
            "-" if c["rss_before_export_mb"] is None else f"{c['rss_before_export_mb']:.0f}"
            + ("" if c["rss_before_export_within"] else " **over**"),
            "{} {:.0f}".format(*c["biggest_rise"]) if c["biggest_rise"] else "-"]) + " |")
    return "\n".join(lines) + "\n\n" + conversion_summary(models, formats)


def _minute(timestamp: str) -> str:
    """'2026-12-01T18:39:37+00:00' -> '2026-12-01 18:39 UTC' (other offsets kept as written)."""
    offset = timestamp[19:]
    return timestamp[:16].replace("T", " ") + (" UTC" if offset in ("+00:00", "Z") else offset)


def readme_section(results: dict, link: str, catalogue_size: int) -> str:
    """The README's latest-run section: where and how the run was made, one row per measured
    model (PyTorch's latency, the plain tf.function's ratio, the best Keras path's), the targets.
    `link` is the run's BENCHMARK.md as the README links it."""
    m, s, models = results["machine"], results["settings"], results["models"]
    batches, t = s["batches"], targets(models, s["batches"])
    times = sorted(r["measured_at"] for r in models.values() if r.get("measured_at"))
    when = f"{_minute(times[0])} to {_minute(times[-1])}" if times else _minute(results["date"])
    per = " / ".join(f"b{b}" for b in batches)
    intro = (f"Latest run: {when}, {m['cpu']} ({m['cores']} cores, {m['ram_gb']} GB RAM), "
             f"{s['threads']} thread(s) for each framework, "
             + (f"{s['input_size']} px" if s["input_size"] else "each recipe's input size")
             + f"; {len(t['best'])} of the catalogue's {catalogue_size} models measured "
             f"([{link}]({link})).")
    # the report's notes on commits and busy models, as plain sentences in the paragraph
    notes = [_sources(models), _busy_models(models),
             "Each ratio is a Keras path's latency over PyTorch eager's (below 1: faster)."]
    lines = [" ".join([intro, *(n.strip().replace("**", "") for n in notes if n.strip())]), "",
             f"| model | PyTorch ms {per} | tf.function {per} | "
             + " | ".join(f"best Keras path b{b}" for b in batches) + " | zoo commit |",
             "|---|---|---|" + "---|" * len(batches) + "---|"]
    for name, best in t["best"].items():
        r = models[name]
        lines.append("| " + " | ".join([
            f"`{name}`", _per_batch(r, batches, "torch", "median_ms", ".1f"),
            _per_batch(r, batches, "tf_function", "ratio", ".2f"),
            *map(_best_cell, best), r.get("source") or "not recorded"]) + " |")
    return ("\n".join(lines) + "\n\nTargets (issue 11, best Keras path <= "
            f"{TARGET_RATIO:g} at every batch size): " + target_summary(t, batches) + " "
            + conversion_summary(models, s.get("formats")).strip())


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
            "Keras and zoo loaded and TensorFlow's runtime started. The largest rise is the "
            "stage whose part raised the peak most (the first `validate` part is the torch side: "
            "the reference and float64 passes, before the Keras model is built).\n\n"
            + conversion_table(models, results["settings"].get("formats"))
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

    models = _passed(results["models"])
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
    a2.set(xlabel="parameters (M)", ylabel="MiB", title="worker peak RSS above import baseline")
    fig.tight_layout()
    conv_png = out / "conversion.png"
    fig.savefig(conv_png, dpi=110)
    plt.close(fig)
    return [ratio_png, conv_png]


