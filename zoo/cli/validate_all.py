"""Re-validate every converted model in OUT from its files on disk against its golden outputs
(no torch needed). Exit code 1 if any model fails."""
import argparse
import json
import os
import sys

from zoo.constants import OK_STATUSES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs", help="output root written by convert_all.py")
    args = p.parse_args(argv)

    from pathlib import Path

    from tqdm import tqdm

    from zoo.export import is_complete
    from zoo.validate import validate_files

    dirs = sorted(c.parent for c in Path(args.out).rglob("config.json")
                  if not any(part.startswith(".") for part in c.relative_to(args.out).parts))
    if not dirs:
        print(f"no converted models under {args.out}", file=sys.stderr)
        return 1
    failed = []
    # A model the batch index lists as passed must still be on disk, complete (a run killed
    # between the two renames of a re-conversion used to leave it listed but gone).
    index_path = Path(args.out) / "index.json"
    listed = json.loads(index_path.read_text()).get("models", {}) if index_path.is_file() else {}
    for name, row in sorted(listed.items()):
        folder = Path(args.out) / name
        if row.get("status") in OK_STATUSES and not is_complete(folder):
            failed.append(name)
            print(f"FAILED {name}: listed as passed in {index_path} but {folder} is missing or "
                  "incomplete")
    for d in tqdm(dirs, desc="validate", unit="model"):
        name = d.relative_to(args.out).as_posix()
        try:
            results = validate_files(d)
        except Exception as e:  # noqa: BLE001 - a missing/corrupt file is a failure to report
            failed.append(name)
            tqdm.write(f"FAILED {name}: {type(e).__name__}: {e}")
            continue
        bad = [fmt for fmt, r in results.items() if not r["passed"]]
        worst = max(r["max_rel"] for r in results.values())
        tqdm.write(f"{'FAILED' if bad else 'ok':6s} {name}: max rel {worst:.2e}"
                   + (f" (failed: {', '.join(bad)})" if bad else ""))
        if bad:
            failed.append(name)
    total = len({d.relative_to(args.out).as_posix() for d in dirs} | set(failed))
    print(f"{total - len(failed)}/{total} models pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
