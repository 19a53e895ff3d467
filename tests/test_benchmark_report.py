"""The benchmark's report from results.json alone: issue 11's targets (the fastest Keras path
per model, the plain tf.function path, the conversion-cost checks) and the README's latest-run
section written by scripts/update_readme.py. The results here are written by hand, and every
expected figure is worked out in the test's own comments."""
import json

from helpers import run_script
from zoo.catalog import list_models
from zoo.cli.benchmark_report import conversion_checks, conversion_summary, readme_section, target_table

MiB = 2**20


def _model(b1, b8, **extra):
    return {"status": "passed", "latency": {"1": b1, "8": b8}, **extra}


MODELS = {
    "a": _model({"torch": {"median_ms": 10.0}, "tf_function": {"ratio": 1.2},
                 "tflite": {"ratio": 0.6}, "xla": "skipped"},
                {"torch": {"median_ms": 70.0}, "tf_function": {"ratio": 0.9},
                 "tflite": {"ratio": 0.7}}),
    "b": _model({"torch": {"median_ms": 20.0}, "tf_function": {"ratio": 1.1}},
                {"torch": {"median_ms": 90.0}, "tf_function": {"ratio": 0.9}}),
    "c": {"status": "failed"},
}


def test_targets_name_each_models_fastest_path():
    """The smallest ratio among the measured Keras paths (a path not measured holds a why-not
    string); whether every batch size is at most 1.0; the median of the batch-8 best ratios
    (0.7 and 0.9: 0.80); the plain tf.function path counted on its own (b1: 1.2 and 1.1, none;
    b8: 0.9 and 0.9, both). A failed model is left out."""
    table = target_table(MODELS, [1, 8])
    assert "| `a` | 0.60 (TFLite) | 0.70 (TFLite) | yes |" in table
    assert "| `b` | 1.10 (tf.function) | 0.90 (tf.function) | **no** |" in table
    assert "`c`" not in table
    assert "1 of 2 models meet it at every batch size" in table
    assert "Median of the best ratios at batch 8: 0.80" in table
    assert "On the plain tf.function path: 0 of 2 at batch 1, 2 of 2 at batch 8." in table


def test_conversion_checks_compare_mapping_with_building_and_rss_with_parameters():
    """100 MiB of parameters in each framework: the limit is 3 x 200 = 600 MiB above the
    baseline. 1500 - 1000 = 500 is within it, 1000 - 300 = 700 is not; mapping 0.2 s against
    building 0.8 s is the cheaper step, 0.9 against 0.8 is not."""
    def r(map_s, peak, base):
        return {"timings": {"map_weights": map_s, "build_keras": 0.8}, "rss_peak_mb": peak,
                "rss_baseline_mb": base, "param_bytes": {"torch": 100 * MiB, "keras": 100 * MiB}}

    ok = conversion_checks(r(0.2, 1500.0, 1000.0))
    assert ok["map_cheaper"] and ok["rss_within"]
    assert ok["rss_above_mb"] == 500.0 and ok["rss_limit_mb"] == 600.0
    bad = conversion_checks(r(0.9, 1000.0, 300.0))
    assert not bad["map_cheaper"] and not bad["rss_within"]
    assert ok["rss_before_export_mb"] is None   # no per-stage peaks recorded


def test_conversion_checks_read_the_peak_before_the_first_export():
    """Per-stage peaks, baseline 1000, limit 600: through the second validate the peak is
    1450 (450 above, within); the export takes it to 1900 (900, over). The check before export
    takes the last part before "export", not the largest rise."""
    r = {"timings": {"map_weights": 0.1, "build_keras": 0.8}, "rss_baseline_mb": 1000.0,
         "rss_peak_mb": 1900.0, "param_bytes": {"torch": 100 * MiB, "keras": 100 * MiB},
         "peak_rss_mb_after_stage": [["load_torch", 1200.0], ["validate", 1400.0],
                                     ["build_keras", 1400.0], ["map_weights", 1410.0],
                                     ["validate", 1450.0], ["export", 1900.0],
                                     ["reload_validate", 1900.0]]}
    c = conversion_checks(r)
    assert c["rss_above_mb"] == 900.0 and not c["rss_within"]
    assert c["rss_before_export_mb"] == 450.0 and c["rss_before_export_within"]
    assert c["biggest_rise"] == ("export", 450.0)
    summary = conversion_summary({"m": {**r, "status": "passed"}})
    assert "within 3x both models' parameter bytes for 0 of 1" in summary, summary
    assert "before the first export, for 1 of the 1 whose peak" in summary, summary


def _results():
    conv = {"timings": {"map_weights": 0.1, "build_keras": 0.5}, "rss_baseline_mb": 1000.0,
            "param_bytes": {"torch": 10 * MiB, "keras": 10 * MiB}}
    models = {"a": {**MODELS["a"], **conv, "rss_peak_mb": 1050.0, "source": "abc1234",
                    "measured_at": "2026-12-01T20:05:00+00:00"},
              "b": {**MODELS["b"], **conv, "rss_peak_mb": 1100.0,
                    "measured_at": "2026-12-01T14:44:00+00:00"}}
    return {"date": "2026-12-01T14:40:00+00:00", "models": models,
            "machine": {"cpu": "Test CPU", "cores": 2, "ram_gb": 8.0},
            "settings": {"batches": [1, 8], "threads": 2, "input_size": None,
                         "formats": ["weights.h5", "tflite"]}}


def test_readme_section_rows_and_targets():
    """One row per passed model: PyTorch's medians, the plain path's ratios, the best paths,
    the commit (or that none was recorded); when and where; the targets. Limits: 3 x 20 = 60 MiB;
    a is 50 above its baseline (within), b 100 (over)."""
    md = readme_section(_results(), "benchmarks/run/BENCHMARK.md", 104)
    assert md.startswith("Latest run: 2026-12-01 14:44 UTC to 2026-12-01 20:05 UTC, Test CPU "
                         "(2 cores, 8.0 GB RAM), 2 thread(s) for each framework")
    assert "2 of the catalogue's 104 models measured ([benchmarks/run/BENCHMARK.md]" in md
    assert "abc1234: 1 model(s); not recorded: 1 model(s)" in md
    assert "| `a` | 10.0 / 70.0 | 1.20 / 0.90 | 0.60 (TFLite) | 0.70 (TFLite) | abc1234 |" in md
    assert "| `b` | 20.0 / 90.0 | 1.10 / 0.90 | 1.10 (tf.function) | 0.90 (tf.function) " \
           "| not recorded |" in md
    assert "`c`" not in md
    assert "1 of 2 models meet it at every batch size" in md
    assert "building the Keras model for 2 of 2 models" in md
    assert "within 3x both models' parameter bytes for 1 of 2 (the conversion exported " \
           "weights.h5, tflite)" in md


def test_update_readme_rewrites_only_the_sections_asked_for(tmp_path):
    """--sections benchmark replaces what lies between the benchmark markers and leaves the
    rest, the catalogue table's markers included, as it was; a README without the markers, or
    a benchmark directory without results.json, is refused with the reason."""
    bench = tmp_path / "benchmarks" / "run"
    bench.mkdir(parents=True)
    (bench / "results.json").write_text(json.dumps(_results()))
    readme = tmp_path / "README.md"
    before = ("# t\n<!-- catalogue:start -->\nhand-kept\n<!-- catalogue:end -->\n"
              "<!-- benchmark:start -->\nold table\n<!-- benchmark:end -->\nafter\n")
    readme.write_text(before)
    proc = run_script("update_readme.py", "--sections", "benchmark", "--benchmark", bench,
                      "--readme", readme)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert "old table" not in text and "hand-kept" in text and text.endswith("after\n")
    assert "models measured ([benchmarks/run/BENCHMARK.md]" in text
    assert f"of the catalogue's {len(list_models())} models" in text

    proc = run_script("update_readme.py", "--sections", "benchmark", "--benchmark",
                      tmp_path / "none", "--readme", readme)
    assert proc.returncode != 0 and "no " in proc.stderr and "results.json" in proc.stderr
    readme.write_text("# no markers\n")
    proc = run_script("update_readme.py", "--sections", "benchmark", "--benchmark", bench,
                      "--readme", readme)
    assert proc.returncode != 0 and "lacks the <!-- benchmark:start -->" in proc.stderr
    assert readme.read_text() == "# no markers\n"


def test_biggest_rise_names_the_stage_that_raised_the_peak_most():
    """Peaks after each part from a 1000 MiB baseline: load_torch +200, validate (torch side)
    +50, build_keras +30, validate +0, export +700: export. Without the record: None."""
    from zoo.cli.benchmark_report import biggest_rise

    r = {"rss_baseline_mb": 1000.0, "peak_rss_mb_after_stage": [
        ["load_torch", 1200.0], ["validate", 1250.0], ["build_keras", 1280.0],
        ["validate", 1280.0], ["export", 1980.0]]}
    assert biggest_rise(r) == ("export", 700.0)
    assert biggest_rise({"rss_baseline_mb": 1000.0}) is None
