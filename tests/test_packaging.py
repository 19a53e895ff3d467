"""The wheel as a user gets it: built from the project, installed into a fresh virtual environment
outside the checkout, used there without torch (the runtime install): the catalogue lists, a model
is created, a `.keras` file the project wrote loads after a plain `import zoo` (either import
order), and the console command runs.

The environment has no network: its dependencies (TensorFlow, Keras, ...) come from the project's
.venv through a .pth line, torch/torchvision/timm are made unimportable, and the wheel is installed
with --no-deps.
"""
import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest

from helpers import ROOT
from zoo.cli import CONVERT_MODULES, DIST
from zoo.cli.main import COMMANDS

CMD = "torch2keras-zoo"   # written out: the test must fail if the command's name changes silently
# A small catalogue model whose .keras file names zoo's custom layers (TorchMaxPool2D among them).
SMALL_MODEL = "torchvision/squeezenet1_1"
# Makes the conversion side unimportable in the venv, as in an install without the convert extra.
BLOCK_TORCH = "import sys; sys.modules.update(dict.fromkeys(%r))\n" % (CONVERT_MODULES,)


def _run(args, cwd, timeout=300, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZOO_RECIPE_PATH")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run(list(map(str, args)), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build from a copy of what the wheel is made of: building in the checkout would leave build/
    and *.egg-info in everyone's working tree. No network: the build uses .venv's setuptools."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("zoo", "recipes"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-q", "-w", tmp / "dist", src], cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("*.whl")
    return path


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory):
    """A fresh venv (outside the checkout) with the wheel installed; returns (python, bin dir, cwd)."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(root / "v")
    python = root / "v" / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=root).stdout.strip()
    # A plain path line (not site.addsitedir): .venv's own .pth files, among them the editable
    # install of the checkout, are not run, so `zoo` can only come from the wheel.
    with open(os.path.join(purelib, "_project_venv.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n" + BLOCK_TORCH)
    proc = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
                 "--no-index", wheel], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = root / "work"
    work.mkdir()
    return python, root / "v" / "bin", work


def test_wheel_holds_every_recipe_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {f"zoo/recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")}
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "zoo").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert len(recipes) > 10 and recipes <= names, sorted(recipes - names)
    assert modules <= names, sorted(modules - names)   # pyproject lists the packages by hand
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    # the runtime install pulls in no torch and no particular TensorFlow distribution
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in runtime if any(m in r for m in ("torch", "timm", "tensorflow"))], runtime
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert f"{CMD} = zoo.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _third_party_imports():
    """Top-level names of everything zoo/ imports (at any depth) that is neither stdlib nor zoo."""
    found = set()
    for path in (ROOT / "zoo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"zoo"}


def test_every_imported_package_is_a_declared_dependency(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    declared = {re.split(r"[\s<>=!~;\[]", line.split(":", 1)[1].strip())[0].lower().replace("_", "-")
                for line in meta.decode().splitlines() if line.startswith("Requires-Dist:")}
    providers = importlib.metadata.packages_distributions()
    imported = _third_party_imports()
    assert {"keras", "torch", "yaml"} <= imported   # the scan sees imports at all
    missing = {m: providers.get(m) for m in imported
               if not {d.lower().replace("_", "-") for d in providers.get(m, ())} & declared}
    assert missing == {}, f"imported by zoo/ but in no Requires-Dist of pyproject.toml: {missing}"


def test_distribution_name_and_version_are_defined_once(wheel):
    import zoo
    names = zipfile.ZipFile(wheel).namelist()
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert f"Name: {CMD}\nVersion: {zoo.__version__}\n" in meta.decode() and DIST == CMD
    # pyproject.toml takes the version from zoo/__init__.py instead of repeating it
    assert re.search(r"(?m)^version\s*=\s*[\"']", (ROOT / "pyproject.toml").read_text()) is None


def test_installed_wheel_lists_the_catalogue_and_loads_keras_files(env, tmp_path):
    python, _bin, work = env
    import keras

    import zoo
    model = zoo.create_model(SMALL_MODEL, num_classes=10)
    path = tmp_path / "model.keras"
    model.save(path)
    config = zipfile.ZipFile(path).read("config.json").decode()
    assert '"registered_name": "zoo>TorchMaxPool2D"' in config   # unloadable without zoo's layers
    x = keras.random.normal((1, 64, 64, 3), seed=0)
    expected = keras.ops.convert_to_numpy(model(x))
    np_path = tmp_path / "x.npy"
    import numpy as np
    np.save(np_path, keras.ops.convert_to_numpy(x))

    listing = _run([python, "-c", "import json, sys, zoo; print(json.dumps([zoo.__file__, "
                    "zoo.list_models(), 'keras' in sys.modules]))"], cwd=work)
    assert listing.returncode == 0, listing.stderr[-3000:]
    where, names, keras_imported = json.loads(listing.stdout)
    assert where.startswith(str(python.parent.parent)), where   # the wheel's copy, not the checkout
    assert names == zoo.list_models() and not keras_imported

    # each order in a fresh process; a model is created after the load, not before (creating
    # one imports zoo.layers, which would register the layers whatever `import zoo` does)
    load = ("import numpy as np, sys\n{imports}\n"
            "m = keras.saving.load_model(sys.argv[1])\n"
            "np.save(sys.argv[3], keras.ops.convert_to_numpy(m(np.load(sys.argv[2]))))\n"
            "assert sys.modules.get('torch') is None\n"
            f"print(zoo.create_model({SMALL_MODEL!r}, num_classes=10).count_params())\n")
    for imports in ("import zoo\nimport keras", "import keras\nimport zoo"):
        out = tmp_path / "out.npy"
        proc = _run([python, "-c", load.format(imports=imports), path, np_path, out], cwd=work)
        assert proc.returncode == 0, (imports, proc.stderr[-3000:])
        np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)
        assert int(proc.stdout.split()[-1]) == model.count_params()


def test_console_command(env):
    _python, bindir, work = env
    cmd = bindir / CMD
    proc = _run([cmd, "--help"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert all(f"\n  {name} " in proc.stdout for name in COMMANDS), proc.stdout
    assert set(COMMANDS) >= {"convert", "convert-all", "validate", "publish", "download", "audit",
                             "new-recipe", "diff"}
    proc = _run([cmd, "validate", "--help"], cwd=work)
    assert proc.returncode == 0 and f"usage: {CMD} validate [-h] [--out OUT]" in proc.stdout, proc
    proc = _run([cmd, "validate", "--out", work / "nothing"], cwd=work)
    assert proc.returncode == 1 and "no converted models under" in proc.stderr, proc
    # torch is not installed: one line naming the extra, no traceback
    for args in (["convert", "timm/resnet18"], ["audit", "timm:resnet18"]):
        proc = _run([cmd, *args], cwd=work)
        assert proc.returncode == 2, proc
        assert proc.stderr.strip().splitlines() == [
            f"error: this command runs the PyTorch model and needs {', '.join(CONVERT_MODULES)} "
            f"(not installed): pip install '{CMD}[convert]'"], proc.stderr
    proc = _run([cmd, "nope"], cwd=work)
    assert proc.returncode == 2 and "unknown command 'nope'" in proc.stderr
