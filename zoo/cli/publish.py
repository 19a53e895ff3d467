"""Assemble a release of converted models: python scripts/publish.py [--out outputs ...]
--release DIR [--to hf://org/repo] [--version V] [--allow-random] [--saved-model]"""
import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", action="append", help="output root(s) of convert_all.py; repeat to "
                                                   "merge shards (default: outputs)")
    p.add_argument("--release", required=True, help="release folder (static, servable by HTTP)")
    p.add_argument("--to", help="upload target, hf://org/repo (needs HF credentials)")
    p.add_argument("--version", help="release version recorded in index.json")
    p.add_argument("--allow-random", action="store_true",
                   help="also publish models converted from random weights (marked as such)")
    p.add_argument("--saved-model", action="store_true", help="include saved_model.tar.gz")
    args = p.parse_args(argv)

    from zoo.publish import PublishError, build_release, upload
    try:
        index, refused = build_release(args.out or ["outputs"], args.release, args.version,
                                       args.allow_random, args.saved_model)
        for name, why in refused.items():
            print(f"refused {name}: {why}", file=sys.stderr)
        print(f"release {args.release}: {len(index['models'])} model(s) in index.json")
        if args.to:
            print(upload(args.release, args.to))
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
