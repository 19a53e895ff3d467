"""Draft a recipe: align a PyTorch model's state_dict with a Keras model's variables:
python scripts/new_recipe.py SOURCE KERAS_BUILDER [--builder-kwargs JSON] [--source-kwargs JSON]
[--name CATALOGUE_NAME] [--out recipes/NAME.yaml] [--input-size S|HxW] [--inputs YAML] [--force]
Exit code 0 if every tensor and variable was matched, 1 if anything is unmatched (listed at the
end of the draft), 2 on bad input."""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from zoo.arguments import cli, positive_int  # noqa: E402
from zoo.cli import require_convert_extra  # noqa: E402


def _size(text):
    """S or HxW (one image input of another size): an int or an (H, W) pair."""
    h, sep, w = text.lower().partition("x")
    if not sep:
        return cli(positive_int, "--input-size")(text)
    try:
        hw = (positive_int("--input-size", h), positive_int("--input-size", w))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size must be S or HxW with whole numbers >= 1, "
                                         f"got {text!r}") from None
    return hw[0] if hw[0] == hw[1] else hw


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="timm:<name> | torchvision:<builder> | python:<module>:<callable>")
    p.add_argument("builder", help="a Keras builder of zoo.models.BUILDERS, or python:<module>:<callable>")
    p.add_argument("--builder-kwargs", default="{}", help="JSON kwargs for the Keras builder")
    p.add_argument("--source-kwargs", default="{}", help="JSON kwargs for the PyTorch factory")
    p.add_argument("--name", help="catalogue name of the draft variant (default: draft/<arch>)")
    p.add_argument("--out", help="where to write the draft (default: ./recipes/<source>_<arch>.yaml, "
                                 "in the current folder, never in the installed package; '-': "
                                 "stdout only)")
    p.add_argument("--input-size", type=_size, default=None,
                   help="the traced input: S (square) or HxW for the one image input; with "
                        "--inputs, the size of their free (null) axes (default 224)")
    p.add_argument("--inputs", help="the inputs as the recipe's `inputs:` declares them, in "
                                    "YAML/JSON, e.g. '[{name: waveform, layout: sequence, shape: "
                                    "[1, 16000]}]' (docs/recipe-format.md)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)

    require_convert_extra()
    import zoo.conversion.torch_first  # noqa: F401 - torch before anything imports tensorflow
    from zoo.conversion.draft import TRACE_SIZE, default_name, draft_recipe
    from zoo.errors import ZooError

    try:
        builder_kwargs, source_kwargs = json.loads(args.builder_kwargs), json.loads(args.source_kwargs)
        if not (isinstance(builder_kwargs, dict) and isinstance(source_kwargs, dict)):
            raise ValueError("--builder-kwargs and --source-kwargs must be JSON objects")
        name = args.name or default_name(args.source)
        out = None if args.out == "-" else Path(args.out or Path("recipes") /
                                                 f"{name.replace('/', '_')}.yaml")
        if out is not None and out.exists() and not args.force:
            raise ValueError(f"{out} exists (pass --force to overwrite it)")
        inputs = None
        if args.inputs is not None:
            import yaml

            from zoo.io_spec import parse_inputs
            try:
                inputs = parse_inputs(yaml.safe_load(args.inputs), "--inputs")
            except yaml.YAMLError as e:
                raise ValueError(f"--inputs is not YAML/JSON: {e}") from None
            if isinstance(args.input_size, tuple):
                raise ValueError("--input-size HxW is for the one default image input; with "
                                 "--inputs, give the shape in --inputs")
        draft = draft_recipe(args.source, args.builder, builder_kwargs, source_kwargs, name,
                             trace_size=args.input_size or TRACE_SIZE, inputs=inputs)
    except (ValueError, ZooError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out is None:
        sys.stdout.write(draft.text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(draft.text)
    print(draft.summary() + (f"\nwrote {out}" if out is not None else ""),
          file=sys.stderr if out is None else sys.stdout)
    return 0 if draft.complete else 1


if __name__ == "__main__":
    sys.exit(main())
