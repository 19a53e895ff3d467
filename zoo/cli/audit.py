"""List every module type and op a PyTorch model uses, and whether zoo can convert it:
python scripts/audit.py SOURCE [--input-shape 1,3,224,224] [--json PATH] [--kwargs JSON]
Exit code 0 when everything is supported, 1 otherwise (2: bad input)."""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="timm:<name> | torchvision:<builder> | python:<module>:<callable> "
                                  "| a catalogue name (timm/resnet50)")
    p.add_argument("--input-shape", default="1,3,224,224", help="NCHW input, comma-separated")
    p.add_argument("--kwargs", default="{}", help="JSON kwargs for the source factory")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON ('-': stdout only)")
    args = p.parse_args(argv)

    from zoo.cli import require_convert_extra
    require_convert_extra()
    import zoo.conversion.torch_first  # noqa: F401 - torch before anything imports tensorflow
    from zoo.conversion.audit import audit_module, format_table
    from zoo.conversion.sources import build_source
    from zoo.errors import ZooError

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
        source, kwargs = args.source, json.loads(args.kwargs)
        if "/" in source and ":" not in source:   # catalogue name -> its recipe's source
            from zoo.catalog import get_variant
            variant, _ = get_variant(source)
            source, kwargs = variant.source, {**variant.source_kwargs, **kwargs}
        model = build_source(source, kwargs)
    except (ValueError, ZooError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = audit_module(model, shape)
    result["source"] = source
    if args.json == "-":
        print(json.dumps(result, indent=2))
    else:
        print(f"{source} {list(shape)}\n")
        print(format_table(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2, sort_keys=True)
    return 0 if result["supported"] else 1


if __name__ == "__main__":
    sys.exit(main())
