"""Convert one catalogue model: python scripts/convert.py NAME [--weights random|pretrained|PATH]
[--num-classes N] [--in-chans C] [--out DIR] [--input-size S] [--formats LIST]"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from zoo.arguments import (  # noqa: E402
    InvalidArgumentError,  # noqa: E402
    cli,
    output_root,
    positive_int,
)
from zoo.cli import require_convert_extra  # noqa: E402
from zoo.constants import DEFAULT_FORMATS, FORMATS, INFERENCE_MODES  # noqa: E402
from zoo.export import parse_formats, parse_inference  # noqa: E402


def add_formats_argument(p: argparse.ArgumentParser) -> None:
    """--formats, shared with convert_all (an unknown name is argparse's one-line error, exit 2)."""
    p.add_argument("--formats", type=cli(parse_formats, "--formats"), default=DEFAULT_FORMATS,
                   metavar="LIST", help=f"export formats, a comma list out of {', '.join(FORMATS)} "
                   f"(default: {','.join(DEFAULT_FORMATS)}); a format the converter cannot express "
                   "for a model is skipped and the skip recorded")
    p.add_argument("--inference", choices=("none", *INFERENCE_MODES), default="none",
                   help="serving exports (saved_model, tflite, onnx) from a copy with BatchNorm and "
                        "layer scale folded into the preceding layer, its parity validated; xla: "
                        "also an XLA-compiled SavedModel serving function. The Keras formats stay "
                        "unfolded (trainable)). On CPU, XLA made the transformers faster and the depthwise "
                        "and grouped convolutions slower (a warning names them)")


def check_export_arguments(p: argparse.ArgumentParser, args) -> None:
    """--inference without a serving format does nothing: argparse's one-line error (exit 2)."""
    try:
        parse_inference("--inference", args.inference, args.formats)
    except InvalidArgumentError as e:
        p.error(str(e))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="catalogue name, e.g. timm/resnet50 or timm/resnet50.a1_in1k")
    p.add_argument("--weights", default="random",
                   help="random (perturbed, for parity testing), pretrained, or a checkpoint path "
                        "(.pth/.pt/.bin/.safetensors)")
    p.add_argument("--num-classes", type=cli(positive_int, "--num-classes"),
                   help="classifier size of a fine-tuned checkpoint")
    p.add_argument("--in-chans", type=cli(positive_int, "--in-chans"),
                   help="input channels of a fine-tuned checkpoint")
    p.add_argument("--out", default="outputs", type=cli(output_root, "--out"),
                   help="output root (model goes to OUT/NAME/)")
    p.add_argument("--input-size", type=cli(positive_int, "--input-size"),
                   help="validation resolution (default: the recipe's)")
    add_formats_argument(p)
    args = p.parse_args(argv)
    check_export_arguments(p, args)

    require_convert_extra()
    from tqdm import tqdm

    import zoo.conversion.torch_first  # noqa: F401 - torch before anything imports tensorflow
    from zoo.conversion.pipeline import STAGES, convert
    from zoo.errors import ValidationError, ZooError

    bar = tqdm(total=len(STAGES), desc=args.name, unit="stage")

    def progress(stage):
        bar.set_postfix_str(stage)
        bar.n = STAGES.index(stage)
        bar.refresh()

    try:
        _model, report = convert(args.name, weights=args.weights, num_classes=args.num_classes,
                                 in_chans=args.in_chans, out_dir=args.out,
                                 input_size=args.input_size, progress=progress,
                                 formats=args.formats, inference=args.inference)
    except ValidationError as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ZooError as e:
        bar.close()
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    bar.n = len(STAGES)
    bar.close()
    for w in report["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    for fmt, par in report["parity"].items():
        parts = [f"max rel {par['max_rel']:.2e}"]
        for k, m in par["outputs"].items():   # by name when there are several outputs
            parts += [f"{k} {m['max_rel']:.2e}"] if len(par["outputs"]) > 1 else []
            parts += [f"top-1 {m['top1']:.3f}"] if "top1" in m else []
        print(f"{fmt:12s} {'  '.join(parts)}  {'ok' if par['passed'] else 'FAILED'}")
    for fmt, export in report["exports"].items():
        if "skipped" in export:
            print(f"{fmt:12s} SKIPPED: {export['skipped']}")
    print(f"wrote {report['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
