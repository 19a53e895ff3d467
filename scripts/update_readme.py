#!/usr/bin/env python
"""Rewrite the README's catalogue table from the catalogue and the last convert_all.py run
(OUT/index.json): python scripts/update_readme.py [--out outputs] [--readme README.md]"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"


def table(index: dict) -> str:
    from zoo.catalog import get_variant, list_models

    rows = ["| model | PyTorch source | Keras builder | weights converted | input | max rel error "
            "| torch float32 vs float64 | tolerance | top-1 agreement |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in list_models():
        v, _ = get_variant(name)
        r = index.get(name, {})
        err = f"{r['max_rel']:.1e}" if r.get("max_rel") is not None else "not run"
        top1 = f"{r['top1']:.3f}" if r.get("top1") is not None else "-"
        status = r.get("status", "not run")
        weights = r.get("weights") or "-"
        if status not in ("passed", "up to date"):
            err = status
        size = r.get("input_size") or v.input_size
        tol = r.get("tolerance") or v.tolerance
        floor = f"{r['torch_float32_error']:.1e}" if r.get("torch_float32_error") else "-"
        rows.append(f"| `{name}` | `{v.source}` | `{v.builder}` | {weights} | {size} | {err} "
                    f"| {floor} | {tol:.0e} | {top1} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="file to rewrite")
    args = p.parse_args(argv)
    index_path = Path(args.out) / "index.json"
    index = json.loads(index_path.read_text())["models"] if index_path.is_file() else {}
    readme = Path(args.readme)
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md lacks the {START} / {END} markers", file=sys.stderr)
        return 1
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _m: f"{START}\n{table(index)}\n{END}", text, flags=re.S)
    readme.write_text(new)
    print(f"updated the catalogue table from {index_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
