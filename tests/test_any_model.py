"""Models that are not image classifiers (tests/io_models.py: three heads with a tuple output, a
1-D audio model, two inputs with a dict output), through the command line a user runs:
convert.py -> convert_all.py -> validate_all.py, then create_model from the converted folder
alone. Parity is against the torch modules the test defines, with perturbed weights."""
import json
import os
import shutil

import numpy as np
import pytest
import yaml
from io_models import RECIPES

import zoo
from helpers import ROOT, run_python, run_script

TESTS = ROOT / "tests"
NAMES = ["user/audio", "user/landmarks", "user/two_inputs"]
OUTPUTS = {"user/landmarks": ["boxes", "landmarks", "probability"], "user/audio": ["logits"],
           "user/two_inputs": ["score", "embedding"]}
# A builder that fails deep inside: its whole message must reach the per-model log.
BROKEN_BUILDER = '''
def broken(**_):
    raise ValueError("deliberately broken builder\\nsecond line of the message")
'''


def _recipes(folder, extra=False):
    folder.mkdir(exist_ok=True)
    for key, text in RECIPES.items():
        (folder / f"{key}.yaml").write_text(text)
    if extra:
        data = yaml.safe_load(RECIPES["audio"])
        data["family"] = "user_broken"
        data["variants"] = {"user/broken": {"torch": {"source": "python:io_models:audio"},
                                            "keras": {"builder": "python:broken_builder:broken"}}}
        (folder / "broken.yaml").write_text(yaml.safe_dump(data))
        (folder.parent / "broken_builder.py").write_text(BROKEN_BUILDER)
    return folder


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """convert_all.py over the three models and a broken one, with no flag but --only/--out."""
    tmp = tmp_path_factory.mktemp("any_model")
    env = {"ZOO_RECIPE_PATH": str(_recipes(tmp / "recipes", extra=True)),
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(tmp), os.environ.get("PYTHONPATH", "")])}
    proc = run_script("convert_all.py", "--only", "user/*", "--out", tmp / "out", env=env,
                      timeout=1200)
    return tmp, env, proc


def test_convert_all_converts_declared_inputs_and_outputs_and_logs_full_errors(batch):
    tmp, _env, proc = batch
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]   # user/broken fails
    index = json.loads((tmp / "out" / "index.json").read_text())["models"]
    for name in NAMES:
        row = index[name]
        assert row["status"] == "passed", (name, row)
        assert row["max_rel"] < 1e-5, (name, row)
        assert sorted(row["outputs"]) == sorted(OUTPUTS[name]), row
        report = json.loads((tmp / "out" / name / "report.json").read_text())
        for fmt in ("in_memory", "weights.h5"):   # the default format
            parity = report["parity"][fmt]
            assert parity["passed"] and sorted(parity["outputs"]) == sorted(OUTPUTS[name]), fmt
        with np.load(tmp / "out" / name / "golden.npz") as z:
            assert sorted(k for k in z.files if k.startswith("output/")) == \
                sorted(f"output/{o}" for o in OUTPUTS[name])
    assert index["user/audio"]["inputs"] == {"waveform": [1024, 1]}
    assert index["user/two_inputs"]["inputs"] == {"image": [32, 32, 3], "meta": [8]}
    # classification metrics only where an output is one
    report = json.loads((tmp / "out" / "user/landmarks" / "report.json").read_text())
    assert all("top1" not in m for m in report["parity"]["weights.h5"]["outputs"].values())
    assert report["num_classes"] is None
    # per-output parity in the summary
    summary = (tmp / "out" / "SUMMARY.md").read_text()
    assert "boxes" in summary and "probability" in summary and "embedding" in summary
    # the broken model: one line in the summary, the whole error in its log
    assert index["user/broken"]["status"] == "failed"
    assert "deliberately broken builder" in index["user/broken"]["error"]
    log = (tmp / "out" / ".logs" / "user__broken.log").read_text()
    assert "second line of the message" in log and "Traceback" in log, log[-2000:]


def test_validate_all_reruns_every_format_by_name(batch):
    tmp, env, _ = batch
    proc = run_script("validate_all.py", "--out", tmp / "out", env=env)
    for name in NAMES:
        assert f"{name}" in proc.stdout + proc.stderr
    assert "FAILED user/landmarks" not in proc.stdout + proc.stderr, proc.stdout[-2000:]
    # a wrong golden value of one output fails that output, named
    folder = tmp / "altered" / "user" / "landmarks"
    shutil.copytree(tmp / "out" / "user" / "landmarks", folder)
    golden = folder / "golden.npz"
    with np.load(golden) as z:
        arrays = dict(z)
    arrays["output/landmarks"] = arrays["output/landmarks"] * 1.01
    np.savez(golden, **arrays)
    from zoo.validate import validate_files

    res = validate_files(folder)
    for fmt, p in res.items():
        assert not p["passed"], fmt
        assert p["outputs"]["boxes"]["max_rel"] < 1e-5 < p["outputs"]["landmarks"]["max_rel"], fmt


def test_create_model_from_the_converted_folder_alone(batch):
    """No ZOO_RECIPE_PATH: config.json records the builder; its module is importable. (The
    module also defines the torch models, so torch is imported here: that is the user's module.)"""
    tmp, _env, _ = batch
    folder = tmp / "out" / "user" / "landmarks"
    code = f"""
import numpy as np, zoo
from zoo.validate import load_golden
inputs, ref = load_golden({str(folder)!r})
for model in (zoo.create_model('user/landmarks', pretrained={str(folder)!r}),
              zoo.create_model({str(folder)!r})):
    out = model.predict_on_batch(inputs)
    assert sorted(out) == ['boxes', 'landmarks', 'probability'], sorted(out)
    for k, v in out.items():
        assert np.abs(v - ref['outputs'][k]).max() <= 1e-5 * np.abs(ref['outputs'][k]).max(), k
try:
    zoo.create_model('user/landmarks', pretrained={str(folder)!r}, include_top=False)
except zoo.ZooError as e:
    print('REFUSED', e)
print('OK')
"""
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env_clean = {k: v for k, v in os.environ.items() if k != "ZOO_RECIPE_PATH"}
    proc = run_python(code, env={**env_clean, **env})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    assert "REFUSED" in proc.stdout and "own Keras builder" in proc.stdout


def test_convert_py_prints_parity_per_output(tmp_path):
    env = {"ZOO_RECIPE_PATH": str(_recipes(tmp_path / "recipes")),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = run_script("convert.py", "user/two_inputs", "--out", tmp_path / "out", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("weights.h5"))
    assert "score" in line and "embedding" in line and "top-1 1.000" in line and "ok" in line


@pytest.fixture
def user_recipe(tmp_path, monkeypatch):
    """write(key, edit) -> catalogue name of an edited copy of RECIPES[key] (in this process)."""
    monkeypatch.syspath_prepend(str(TESTS))

    def write(key, edit):
        data = yaml.safe_load(RECIPES[key])
        edit(data)
        (tmp_path / f"{key}.yaml").write_text(yaml.safe_dump(data))
        monkeypatch.setenv("ZOO_RECIPE_PATH", str(tmp_path))
        return next(iter(data["variants"]))
    return write


def test_token_ids_input(user_recipe):
    """An integer input: ids drawn from [0, vocab), fed as int64 to both frameworks."""
    name = user_recipe("tokens", lambda d: None)
    _model, report = zoo.convert(name)
    assert report["inputs"] == {"ids": [12]}
    assert report["parity"]["in_memory"]["outputs"]["logits"]["max_rel"] < 1e-5
    assert report["parity"]["in_memory"]["outputs"]["logits"]["top1"] == 1.0
    from zoo.io_spec import make_inputs, parse_inputs

    ids = make_inputs(parse_inputs(yaml.safe_load(RECIPES["tokens"])["inputs"]), 224, {})["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 100 and len(np.unique(ids)) > 20


def test_a_tuple_output_without_declared_outputs_is_named_in_the_error(user_recipe):
    import torch
    from io_models import Landmarks

    from zoo.conversion.forward import select

    with pytest.raises(zoo.ZooError) as e:   # the torch side
        select(Landmarks()(torch.zeros(2, 3, 48, 48)))
    msg = str(e.value)
    assert "tuple(3)" in msg and "declare `outputs:`" in msg and "2x10" in msg, msg
    name = user_recipe("landmarks", lambda d: d.pop("outputs"))
    with pytest.raises(zoo.ZooError, match="declare `outputs:`"):   # the Keras side, first
        zoo.convert(name)


def test_outputs_that_the_keras_model_does_not_name_are_refused(user_recipe):
    def rename(d):
        d["outputs"][1]["name"] = "points"
    name = user_recipe("landmarks", rename)
    with pytest.raises(zoo.ZooError, match=r"outputs are \['boxes', 'landmarks', 'probability'\]"):
        zoo.convert(name)


def test_selecting_a_missing_element_names_the_structure(user_recipe):
    def wrong(d):
        d["outputs"][2]["select"] = 5
    name = user_recipe("landmarks", wrong)
    with pytest.raises(zoo.ZooError, match=r"no element 5; it is a tuple\(3\)"):
        zoo.convert(name)


def test_per_output_tolerance_is_applied(user_recipe):
    """probability's own tolerance (1e-5 in the recipe) is what it is held to, not the variant's."""
    def tight(d):
        d["outputs"][2]["tolerance"] = 1e-12
    name = user_recipe("landmarks", tight)
    with pytest.raises(zoo.ValidationError) as e:
        zoo.convert(name)
    outs = e.value.report["parity"]["in_memory"]["outputs"]
    assert outs["probability"]["tolerance"] == 1e-12 and outs["boxes"]["tolerance"] == 1e-4


@pytest.mark.parametrize("inputs, message", [
    ([{"name": "x", "layout": "image", "shape": [3, 48]}], "an image input has 3 axes without the batch"),
    ([{"name": "x", "shape": [16], "dtype": "int64", "generator": "tokens"}], "vocabulary size"),
    ([{"name": "x", "shape": [16], "dtype": "int64"}], "integer inputs use generator: tokens"),
    ([{"name": "x", "shape": [0]}], "positive whole numbers"),
    ([{"name": "x-y", "shape": [4]}], "expected an identifier"),
    ([{"name": "x", "shape": [4]}, {"name": "x", "shape": [2]}], "duplicate name"),
    ([{"name": "x", "shape": [4], "layout": "video"}], "layout: expected one of"),
])
def test_bad_input_declarations_name_the_problem(tmp_path, inputs, message):
    from zoo.errors import RecipeError
    from zoo.recipe import load_recipe

    data = yaml.safe_load(RECIPES["audio"])
    data["inputs"] = inputs
    (tmp_path / "audio.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "audio.yaml")
