"""The command-line tools, one module per subcommand, each with main(argv) -> exit code; `zoo.cli.main`
dispatches the console command to them and scripts/*.py are thin wrappers around them."""
import importlib.util
import sys

# The distribution name (pyproject.toml's [project] name, asserted equal by tests/test_packaging.py),
# which is also the console command: error messages tell users what to pip install.
DIST = "torch2keras-zoo"
# Import names of the `convert` extra: converting runs the PyTorch model next to the Keras one.
CONVERT_MODULES = ("torch", "torchvision", "timm", "safetensors", "scipy")


def require_convert_extra() -> None:
    """Exit with one line naming the extra to install when the conversion side is missing, instead
    of a traceback from deep inside (the runtime install has no torch). Exit code 2: cannot start."""
    missing = [m for m in CONVERT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: this command runs the PyTorch model and needs {', '.join(missing)} (not "
              f"installed): pip install '{DIST}[convert]'", file=sys.stderr)
        raise SystemExit(2)
