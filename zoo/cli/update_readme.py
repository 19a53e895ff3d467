"""Rewrite the README's generated sections: the catalogue table from the catalogue and the last
convert_all.py run (OUT/index.json), "What we test against" from the last test run
(outputs/robustness.json, written by tests/robustness.py), and the benchmark's latest run from
BENCH/results.json:
python scripts/update_readme.py [--out outputs] [--benchmark benchmarks/catalogue]
                                [--sections catalogue robustness benchmark] [--readme README.md]"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

from zoo.constants import OK_STATUSES

ROOT = Path(__file__).resolve().parents[2]   # the checkout (zoo/cli/ -> zoo/ -> root)
START, END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"
ROBUST_START, ROBUST_END = "<!-- robustness:start -->", "<!-- robustness:end -->"
ROBUSTNESS = ROOT / "outputs" / "robustness.json"
BENCH_START, BENCH_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
SECTIONS = ("catalogue", "robustness", "benchmark")


def table(index: dict) -> str:
    from zoo.batch import input_cell, parity_cell
    from zoo.catalog import get_variant, list_models

    rows = ["| model | PyTorch source | Keras builder | weights converted | input | max rel error "
            "| torch float32 vs float64 | tolerance | top-1 agreement |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in list_models():
        v, _ = get_variant(name)
        r = _row(index, name, v)
        err = parity_cell(r.get("max_rel"), r.get("outputs"), ".1e") \
            if r.get("max_rel") is not None else "not run"
        top1 = f"{r['top1']:.3f}" if r.get("top1") is not None else "-"
        status = r.get("status", "not run")
        weights = r.get("weights") or "-"
        if status not in OK_STATUSES:
            err = status
        size = input_cell(r, v.input_size)
        tol = r.get("tolerance") or v.tolerance
        floor = f"{r['torch_float32_error']:.1e}" if r.get("torch_float32_error") else "-"
        rows.append(f"| `{name}` | `{v.source}` | `{v.builder}` | {weights} | {size} | {err} "
                    f"| {floor} | {tol:.0e} | {top1} |")
    return "\n".join(rows)


def _row(index: dict, name: str, variant) -> dict:
    """The index row of `name`; for a default tag without one, the row of its bare name (runs
    from before weight tags, or `convert timm/resnet50`), which converted the same weight set."""
    if name in index:
        return index[name]
    if variant.tags and name == f"{variant.name}.{variant.default_tag}":
        return index.get(variant.name, {})
    return {}


def robustness(results: dict) -> str:
    """One table per category: what was tried and how it ended, as the tests recorded it."""
    if not results:
        return "_No results yet: run the test suite, then this script._"
    lines = []
    by_cat: dict[str, list] = {}
    for r in results.values():
        by_cat.setdefault(r["category"], []).append(r)
    for cat in sorted(by_cat):
        rows = sorted(by_cat[cat], key=lambda r: r["test"])
        passed = sum(r["outcome"] == "passed" for r in rows)
        lines += [f"**{cat}** ({passed}/{len(rows)} cases pass)", "",
                  "| what was tried | outcome | test |", "|---|---|---|"]
        for r in rows:
            ex = r.get("examples")
            outcome = r["outcome"] + (" — " + ", ".join(f"{n} × {o}" for o, n in ex.items())
                                      if ex else "")
            what = r["what"].replace("|", "\\|")
            lines.append(f"| {what} | {outcome} | `{r['test'].split('[')[0]}` |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _replace(text, start, end, body):
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the {start} / {end} markers")
    return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _m: f"{start}\n{body}\n{end}",
                  text, flags=re.S)


def benchmark(bench_dir: Path, readme: Path) -> str:
    """The latest-run section from a benchmark's results.json, linking its BENCHMARK.md."""
    from zoo.catalog import list_models
    from zoo.cli.benchmark_report import readme_section

    results_path = bench_dir / "results.json"
    if not results_path.is_file():
        raise SystemExit(f"--benchmark: no {results_path} (run scripts/benchmark.py --out "
                         f"{bench_dir} first, or leave 'benchmark' out of --sections)")
    link = Path(os.path.relpath(bench_dir.resolve() / "BENCHMARK.md", readme.resolve().parent))
    return readme_section(json.loads(results_path.read_text()), link.as_posix(),
                          len(list_models()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs")
    p.add_argument("--benchmark", default=str(ROOT / "benchmarks" / "catalogue"),
                   help="the benchmark run whose results.json fills the latest-run section")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="which generated sections to rewrite (default: all)")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="file to rewrite")
    args = p.parse_args(argv)
    readme = Path(args.readme)
    text, done = readme.read_text(), []
    if "catalogue" in args.sections:
        index_path = Path(args.out) / "index.json"
        index = json.loads(index_path.read_text())["models"] if index_path.is_file() else {}
        text = _replace(text, START, END, table(index))
        done.append(f"the catalogue table from {index_path}")
    if "robustness" in args.sections:
        results = json.loads(ROBUSTNESS.read_text()) if ROBUSTNESS.is_file() else {}
        text = _replace(text, ROBUST_START, ROBUST_END, robustness(results))
        done.append(f"'What we test against' from {ROBUSTNESS}")
    if "benchmark" in args.sections:
        text = _replace(text, BENCH_START, BENCH_END, benchmark(Path(args.benchmark), readme))
        done.append(f"the benchmark's latest run from {Path(args.benchmark) / 'results.json'}")
    readme.write_text(text)
    print("updated " + ", ".join(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
