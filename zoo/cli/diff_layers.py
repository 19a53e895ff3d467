"""Run the PyTorch and Keras models side by side and show, layer by layer, where they diverge:
python scripts/diff_layers.py NAME [--weights random|pretrained|PATH] [--num-classes N]
[--input-size S] [--json PATH]. Exit code 0 if every layer agrees, 1 otherwise."""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from zoo.arguments import cli, positive_int  # noqa: E402
from zoo.cli import require_convert_extra  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--weights", default="random")
    p.add_argument("--num-classes", type=cli(positive_int, "--num-classes"))
    p.add_argument("--in-chans", type=cli(positive_int, "--in-chans"))
    p.add_argument("--input-size", type=cli(positive_int, "--input-size"))
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    args = p.parse_args(argv)

    require_convert_extra()
    import zoo.conversion.torch_first  # noqa: F401 - torch before anything imports tensorflow
    from zoo.conversion.diff import diff_layers, format_diff
    from zoo.errors import ZooError
    try:
        result = diff_layers(args.name, args.weights, args.num_classes, args.in_chans,
                             args.input_size)
    except ZooError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(format_diff(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=float)
    return 0 if result["first_divergent"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
