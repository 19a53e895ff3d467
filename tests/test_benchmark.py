"""scripts/benchmark.py end to end on one tiny model (the real torchvision SqueezeNet 1.1 at 64 px,
3 calls at batch 1): results.json holds the machine, versions and per-path figures, every latency
is positive with p10 <= median <= p90, each ratio is the quotient of the two medians, the timed
Keras paths agree with torch (the same network was timed), BENCHMARK.md and the PNGs are written;
bad arguments are one line and exit code 2. No timing thresholds: speed is the benchmark's to
report, not a test's to assert."""
import json
import os
import subprocess

import pytest
import torch
import torchvision

from helpers import ROOT, SMALL, run_script
from zoo.constants import STAGES

MODEL = "torchvision/squeezenet1_1*"
PATHS = ("tf_function", "xla", "folded", "folded_xla", "saved_model", "tflite")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = run_script("benchmark.py", "--only", MODEL, "--input-size", SMALL, "--calls", 3,
                      "--warmup", 1, "--batch", 1, "--threads", 1, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_results_record_the_run(bench):
    _out, results = bench
    assert results["machine"]["cores"] >= 1 and results["machine"]["ram_gb"] > 0
    assert results["machine"]["cpu"]
    assert results["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert results["versions"]["tensorflow"] and results["versions"]["keras"]
    assert results["settings"]["batches"] == [1] and results["settings"]["threads"] == 1
    (name, r), = results["models"].items()
    assert name.startswith("torchvision/squeezenet1_1") and r["status"] == "passed", r
    assert set(r["timings"]) == set(STAGES) and all(t > 0 for t in r["timings"].values())
    assert r["conversion_seconds"] >= sum(r["timings"].values()) * 0.99
    assert 0 < r["rss_baseline_mb"] <= r["rss_peak_mb"] <= r["rss_end_mb"]
    last_stage, last_peak = r["peak_rss_mb_after_stage"][-1]
    assert last_stage == "reload_validate" and 0 < last_peak <= r["rss_peak_mb"]
    # counted here from torchvision itself, not by the code under test
    n = sum(p.numel() for p in torchvision.models.squeezenet1_1().parameters())
    assert r["params"] == {"torch": n, "keras": n}
    assert r["param_bytes"]["torch"] >= 4 * n
    assert r["source"] == _head(), "each model records the zoo commit it was measured on"


def _head():
    """The last commit that changed zoo/ or recipes/, asked of git here (None outside a git
    checkout)."""
    proc = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--", "zoo",
                           "recipes"], capture_output=True, text=True)
    if proc.returncode:
        return None
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "zoo", "recipes"],
                             capture_output=True, text=True).stdout.strip()
    return proc.stdout.strip() + ("+changes" if changed else "")


def test_latencies_and_ratios(bench):
    _out, results = bench
    (r,) = results["models"].values()
    stats = r["latency"]["1"]
    assert set(stats) == {"torch", *PATHS}, stats
    for path in ("torch", *PATHS):
        s = stats[path]
        assert isinstance(s, dict), (path, s)   # a string would say why it was not measured
        assert s["calls"] == 3
        assert 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"], (path, s)
    for path in PATHS:
        assert stats[path]["ratio"] == pytest.approx(stats[path]["median_ms"] /
                                                     stats["torch"]["median_ms"], rel=1e-12)
        assert stats[path]["max_rel"] < 1e-4, (path, stats[path])


def test_report_files(bench):
    out, results = bench
    (name, r), = results["models"].items()
    md = (out / "BENCHMARK.md").read_text()
    assert f"`{name}`" in md and results["machine"]["cpu"] in md and results["date"] in md
    for path in PATHS:
        assert f"**{r['latency']['1'][path]['ratio']:.2f}**" in md
    for png in ("latency_ratio.png", "conversion.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, png


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch must be a whole number >= 1, got 0"),
    (["--threads", "two"], "--threads must be a whole number >= 1, got 'two'"),
    (["--only", "timm/no_such_model"], "match(es) no catalogue model"),
    (["--redo", MODEL], "--redo needs --resume"),
    (["--resume", "--only", MODEL, "--redo", "timm/resnet50*"],
     "--redo timm/resnet50*: matches none of the selected models"),
])
def test_bad_arguments(tmp_path, args, message):
    proc = run_script("benchmark.py", *args, "--out", tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_render_rewrites_the_report_from_results(bench, tmp_path):
    out, _results = bench
    (tmp_path / "results.json").write_bytes((out / "results.json").read_bytes())
    proc = run_script("benchmark.py", "--render", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "BENCHMARK.md").read_text() == (out / "BENCHMARK.md").read_text()
    assert all((tmp_path / png).read_bytes()[:8] == PNG_MAGIC
               for png in ("latency_ratio.png", "conversion.png"))
    proc = run_script("benchmark.py", "--render", "--out", tmp_path / "empty")
    assert proc.returncode == 2 and "no " in proc.stderr and "results.json" in proc.stderr


def test_resume_keeps_what_was_measured_and_measures_the_rest(bench, tmp_path):
    """--resume after a stopped or partly failed run: a model measured with the same settings and
    versions is kept as it was, a failed one is measured again; results.json from other settings
    is refused (its ratios would not compare)."""
    out, results = bench
    (name, r), = results["models"].items()
    kept_name = "torchvision/squeezenet1_0.IMAGENET1K_V1"   # a stand-in: it must not be re-run
    stand_in = {k: v for k, v in r.items() if k != "source"}   # as measured before it was kept
    earlier = {**results, "models": {kept_name: {**stand_in,
                                                 "measured_at": "2026-01-01T00:00:00+00:00"},
                                     name: {"name": name, "status": "failed", "error": "killed"}}}
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    args = ["--only", MODEL, "torchvision/squeezenet1_0*", "--input-size", SMALL, "--calls", 3,
            "--warmup", 1, "--batch", 1, "--threads", 1, "--out", tmp_path]
    proc = run_script("benchmark.py", *args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 model(s) already measured, 1 to measure" in proc.stderr
    now = json.loads((tmp_path / "results.json").read_text())
    assert now["models"][kept_name] == earlier["models"][kept_name]
    assert now["models"][name]["status"] == "passed" and now["models"][name]["measured_at"]
    md = (tmp_path / "BENCHMARK.md").read_text()
    assert "last model measured" in md and f"`{kept_name}`" in md
    # the kept model predates source recording: the report says the run spans two
    assert f"**Measured on several zoo commits** (a resumed run): not recorded: 1 model(s); " \
        f"{_head()}: 1 model(s)" in md

    proc = run_script("benchmark.py", *[a if a != 3 else 5 for a in args], "--resume")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "other settings (calls: 3 there, 5 now)" in proc.stderr, proc.stderr


def test_other_processes_cpu_share_is_measured_and_named():
    """Per model, the share of the machine's CPU time other processes used while it was timed:
    a process spinning one core for a second shows up (its CPU time is not the benchmark's own,
    as the load average would have it), and a model timed so is named in the report."""
    import subprocess
    import sys
    import time

    from zoo.cli.benchmark import _cpu_seconds, other_cpu_share
    from zoo.cli.benchmark_report import BUSY_SHARE, _busy_models

    assert other_cpu_share((100.0, 10.0), (130.0, 25.0), 10.0, 2) == 0.75
    assert other_cpu_share((100.0, 10.0), (101.0, 12.0), 10.0, 2) == 0.0   # never negative
    start, t0 = _cpu_seconds(), time.perf_counter()
    spin = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    time.sleep(1.6)
    share = other_cpu_share(start, _cpu_seconds(), time.perf_counter() - t0, os.cpu_count())
    spin.wait()
    assert share >= 0.6 / os.cpu_count(), share   # one of the machine's cores, nearly throughout
    md = _busy_models({"a/quiet": {"other_cpu_share": 0.05},
                       "b/busy": {"other_cpu_share": BUSY_SHARE + 0.1}, "c/old": {}})
    assert "`b/busy` (35%)" in md and "a/quiet" not in md and "c/old" not in md


def test_redo_measures_a_kept_model_again_and_keeps_the_others(bench, tmp_path):
    """--resume --redo GLOB: one model that results.json already holds is measured again (to
    re-measure it after a fix) while the other kept models stay exactly as they were, which a
    run without --resume would drop."""
    out, results = bench
    (name, r), = results["models"].items()
    kept_name = "torchvision/squeezenet1_0.IMAGENET1K_V1"   # a stand-in: it must not be re-run
    old = {**r, "measured_at": "2026-01-01T00:00:00+00:00"}
    earlier = {**results, "models": {kept_name: old, name: old}}
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    proc = run_script("benchmark.py", "--input-size", SMALL, "--calls", 3, "--warmup", 1,
                      "--batch", 1, "--threads", 1, "--out", tmp_path, "--resume",
                      "--only", MODEL, "torchvision/squeezenet1_0*", "--redo", MODEL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 model(s) already measured, 1 to measure (1 again: --redo)" in proc.stderr
    now = json.loads((tmp_path / "results.json").read_text())
    assert now["models"][kept_name] == old
    assert now["models"][name]["status"] == "passed"
    assert now["models"][name]["measured_at"] != old["measured_at"]
