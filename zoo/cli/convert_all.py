"""Convert, validate and export the whole catalogue (or a selection), one worker process per model.
The parent imports neither torch nor tensorflow."""
import argparse
import sys

from zoo.arguments import cli, output_root, positive_int, positive_seconds
from zoo.cli.convert import add_formats_argument, check_export_arguments


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="GLOB", help="catalogue names to include")
    p.add_argument("--exclude", nargs="+", metavar="GLOB", help="catalogue names to skip")
    p.add_argument("--weights", default="auto",
                   help="auto (pretrained where obtainable, else random with a warning), "
                        "pretrained, random, or a DIR holding DIR/<name>.{safetensors,pth,pt,bin}")
    p.add_argument("--jobs", type=cli(positive_int, "--jobs"), default=1, help="models converted in parallel")
    p.add_argument("--shard", metavar="K/N", help="convert only shard K of N (deterministic)")
    p.add_argument("--resume", action="store_true",
                   help="skip models whose outputs are complete and up to date")
    p.add_argument("--out", default="outputs", type=cli(output_root, "--out"), help="output root")
    p.add_argument("--input-size", type=cli(positive_int, "--input-size"),
                   help="validation resolution (default: each recipe's)")
    p.add_argument("--timeout", type=cli(positive_seconds, "--timeout"), metavar="SECONDS",
                   help="fail a model whose worker runs longer than this, and go on")
    add_formats_argument(p)
    args = p.parse_args(argv)
    check_export_arguments(p, args)

    from zoo.batch import BatchError, run_batch, select, summary_table
    try:
        names = select(args.only, args.exclude, args.shard)
        if not names:
            print("nothing to convert (selection is empty)", file=sys.stderr)
            return 0
        rows, code = run_batch(names, weights=args.weights, jobs=args.jobs, out=args.out,
                               resume=args.resume, input_size=args.input_size,
                               timeout=args.timeout, formats=args.formats,
                               inference=args.inference)
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(rows))
    print(f"summary: {args.out}/SUMMARY.md, {args.out}/index.json")
    return code


if __name__ == "__main__":
    sys.exit(main())
