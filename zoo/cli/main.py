"""The console command: `torch2keras-zoo COMMAND [ARGS]`, one subcommand per tool of zoo/cli/.

Each subcommand's module is imported only when it runs: the conversion tools import torch, and
`--help` or the TensorFlow-only tools must work on an install without it.
"""
import importlib
import os
import sys

from zoo.cli import DIST

# subcommand -> (module in zoo/cli, one line of help)
COMMANDS = {
    "convert": ("convert", "convert and validate one catalogue model or checkpoint [convert extra]"),
    "convert-all": ("convert_all", "convert the catalogue or a selection, one worker process per model"),
    "validate": ("validate_all", "re-validate converted models on disk against their golden outputs"),
    "publish": ("publish", "assemble a release of converted models (and upload it)"),
    "download": ("download", "download published Keras weights into the cache"),
    "audit": ("audit", "list a PyTorch model's modules and ops and what zoo supports [convert extra]"),
    "new-recipe": ("new_recipe", "draft a recipe: align a state_dict with a Keras builder [convert extra]"),
    "diff": ("diff_layers", "show layer by layer where the PyTorch and Keras models diverge [convert extra]"),
    "benchmark": ("benchmark", "time conversions and converted models against PyTorch [convert extra]"),
}


def usage() -> str:
    from zoo import __version__
    width = max(map(len, COMMANDS))
    lines = [f"usage: {DIST} COMMAND [ARGS]   ({DIST} COMMAND --help for a command's options)", "",
             f"PyTorch image models as native Keras 3 models, with verified parity (zoo {__version__}).",
             "", "commands:"]
    lines += [f"  {name:{width}s}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from zoo import __version__
        print(f"{DIST} {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(f"zoo.cli.{COMMANDS[argv[0]][0]}")
    # Each tool's argparse names itself after sys.argv[0]; make its usage lines read
    # `torch2keras-zoo convert ...` rather than only the console command.
    sys.argv[0] = f"{DIST} {argv[0]}"
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
