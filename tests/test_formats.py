"""Export formats (--formats): the default writes .weights.h5 and .keras only; SavedModel, LiteRT/
TFLite and ONNX are opt-in, each re-validated by running it (SavedModel signature, the TFLite
interpreter at a resized input, onnxruntime), output by output by name; a format the converter
cannot express is a recorded skip; an unknown format name is exit code 2. Parity is against the
torch modules of tests/io_models.py and the real torchvision SqueezeNet, with perturbed weights."""
import json

import numpy as np
import pytest
from io_models import RECIPES

import zoo
from helpers import ROOT, run_script
from zoo.batch import _summary_row, summary_table, up_to_date
from zoo.constants import FORMATS
from zoo.export import is_complete
from zoo.io_spec import from_config
from zoo.publish import build_release
from zoo.validate import KerasProbe, validate_files

META = {"config.json", "golden.npz", "report.json"}
LANDMARK_OUTPUTS = ["boxes", "landmarks", "probability"]

# A model with TF's Lgamma, which neither optional format can express (measured): tf2onnx has no
# ONNX twin for it (it writes the TF node and only logs that), and the TFLite converter folds it
# into a file whose graph holds a batch-0 constant, so the interpreter cannot run it at batch 2.
# Both must be recorded skips, and .weights.h5 written and validated.
LGAMMA_MODULE = '''
import torch
from torch import nn


class LogGamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.lgamma(x.abs() + 1.0))


def torch_model(**_):
    return LogGamma()


def keras_model(**_):
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable("zoo_test")
    class LogGammaLayer(keras.layers.Layer):
        def call(self, x):
            return tf.math.lgamma(tf.abs(x) + 1.0)

    x = keras.Input((8,), name="x")
    return keras.Model(x, keras.layers.Dense(4, name="fc")(LogGammaLayer()(x)))
'''
LGAMMA_RECIPE = """
family: user_lgamma
inputs:
  - {name: x, shape: [8]}
mapping:
  - {torch: fc, keras: fc, transform: linear}
variants:
  user/lgamma:
    torch: {source: 'python:lgamma_model:torch_model'}
    keras: {builder: 'python:lgamma_model:keras_model'}
"""


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """The test-defined models as catalogue names (ZOO_RECIPE_PATH in this process)."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "landmarks.yaml").write_text(RECIPES["landmarks"])
    (recipes / "lgamma.yaml").write_text(LGAMMA_RECIPE)
    (tmp_path / "lgamma_model.py").write_text(LGAMMA_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.setenv("ZOO_RECIPE_PATH", str(recipes))
    return tmp_path


def _files(folder):
    return {p.name for p in folder.iterdir()}


def test_default_format_is_one_copy_of_the_weights(user_models):
    _model, report = zoo.convert("user/landmarks", out_dir=user_models / "out")
    folder = user_models / "out" / "user" / "landmarks"
    assert _files(folder) == META | {"model.weights.h5"}
    assert json.loads((folder / "config.json").read_text())["formats"] == ["weights.h5"]
    assert report["exports"] == {"weights.h5": {"file": "model.weights.h5"}}
    assert set(report["parity"]) == {"in_memory", "weights.h5"}
    assert is_complete(folder)
    results = validate_files(folder)
    assert set(results) == {"weights.h5"} and all(r["passed"] for r in results.values())
    # --resume: up to date for the formats it was written with, not for others
    out = user_models / "out"
    assert up_to_date(out, "user/landmarks", "random")["exports"] == report["exports"]
    assert up_to_date(out, "user/landmarks", "random", formats="weights.h5") is not None
    assert up_to_date(out, "user/landmarks", "random", formats="weights.h5,keras") is None
    # publish finds the .weights.h5 it serves; --saved-model refuses a model written without one
    release = user_models / "release"
    index, refused = build_release([out], release, allow_random=True)
    assert list(index["models"]) == ["user/landmarks"] and not refused
    _, refused = build_release([out], user_models / "release2", allow_random=True, saved_model=True)
    assert "converted without saved_model" in refused["user/landmarks"], refused
    assert "--formats" in refused["user/landmarks"]
    # a recorded format whose file is gone: the folder is no longer complete
    (folder / "model.weights.h5").unlink()
    assert not is_complete(folder)


def test_reload_validation_reads_the_weights_file_into_the_converted_model(user_models):
    """Right after export the .weights.h5 is loaded into the in-memory model rather than into a
    second build: the file's values are still what is validated, so an altered file fails."""
    import h5py

    model, _ = zoo.convert("user/landmarks", out_dir=user_models / "reload")
    folder = user_models / "reload" / "user" / "landmarks"
    config = json.loads((folder / "config.json").read_text())
    probe = KerasProbe(model, config["feature_layers"], from_config(config)[1])
    assert validate_files(folder, probe=probe)["weights.h5"]["passed"]
    with h5py.File(folder / "model.weights.h5", "r+") as f:
        kernels = []
        f.visititems(lambda _n, obj: kernels.append(obj)
                     if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None)
        kernels[0][...] = kernels[0][...] * 1.5
    assert not validate_files(folder, probe=probe)["weights.h5"]["passed"]
    assert probe.traces() == 1   # the file's values ran through the probe's one trace


def test_reload_validation_runs_the_validation_probe_again(user_models, monkeypatch):
    """issue 11: after export the conversion loads the .weights.h5 into its model and runs the
    probe of its in-memory validation again: no second functional graph, no second trace."""
    from zoo import validate
    from zoo.conversion import pipeline

    built = []

    class Recorded(validate.KerasProbe):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
    monkeypatch.setattr(pipeline, "KerasProbe", Recorded)
    monkeypatch.setattr(validate, "KerasProbe", Recorded)   # a probe built anywhere is seen
    _, report = zoo.convert("user/landmarks", out_dir=user_models / "one_probe")
    assert report["parity"]["weights.h5"]["passed"] and report["parity"]["in_memory"]["passed"]
    assert len(built) == 1 and built[0].traces() == 1


def test_a_folder_written_without_weights_h5_says_what_it_has(user_models):
    zoo.convert("user/landmarks", out_dir=user_models / "keras_only", formats="keras")
    folder = user_models / "keras_only" / "user" / "landmarks"
    assert _files(folder) == META | {"model.keras"}
    with pytest.raises(zoo.ZooError, match=r"model\.keras .*load_model.*--formats including weights\.h5"):
        zoo.create_model("user/landmarks", pretrained=folder)


def test_multi_output_model_in_every_opt_in_format_validates_by_name(user_models):
    _model, report = zoo.convert("user/landmarks", out_dir=user_models / "out",
                                 formats="saved_model,tflite,onnx")
    folder = user_models / "out" / "user" / "landmarks"
    assert _files(folder) == META | {"saved_model", "model.tflite", "model.onnx"}
    for fmt in ("saved_model", "tflite", "onnx"):
        parity = report["parity"][fmt]
        assert parity["passed"], (fmt, parity)
        assert sorted(parity["outputs"]) == LANDMARK_OUTPUTS, fmt
        assert all(m["max_rel"] < 1e-5 for m in parity["outputs"].values()), (fmt, parity)
    # a wrong golden value of one output fails that output only, in every format, by name
    with np.load(folder / "golden.npz") as z:
        arrays = dict(z)
    arrays["output/landmarks"] = arrays["output/landmarks"] * 1.01
    np.savez(folder / "golden.npz", **arrays)
    results = validate_files(folder)
    assert set(results) == {"saved_model", "tflite", "onnx"}
    for fmt, r in results.items():
        assert not r["passed"], fmt
        out = r["outputs"]
        assert out["boxes"]["max_rel"] < 1e-5 < out["landmarks"]["max_rel"], (fmt, out)


def test_a_format_the_converter_cannot_express_is_a_recorded_skip(user_models):
    _model, report = zoo.convert("user/lgamma", out_dir=user_models / "out",
                                 formats="weights.h5,tflite,onnx")
    folder = user_models / "out" / "user" / "lgamma"
    assert report["status"] == "passed"
    skip = report["exports"]["onnx"]["skipped"]
    assert "onnx converter cannot express" in skip and "Lgamma" in skip, skip
    skip = report["exports"]["tflite"]["skipped"]
    assert "tflite converter cannot express" in skip and "not broadcastable" in skip, skip
    assert set(report["parity"]) == {"in_memory", "weights.h5"}
    assert report["parity"]["weights.h5"]["passed"]
    assert _files(folder) == META | {"model.weights.h5"}
    assert json.loads((folder / "config.json").read_text())["formats"] == ["weights.h5"]
    assert set(validate_files(folder)) == {"weights.h5"}
    # the batch summary (SUMMARY.md, convert_all's output) names the skips and their reason
    table = summary_table({"user/lgamma": _summary_row("user/lgamma", {"status": "passed",
                                                                       "report": report})})
    row = next(ln for ln in table.splitlines() if ln.startswith("| user/lgamma"))
    assert "| weights.h5, tflite SKIPPED: " in row and "onnx SKIPPED: " in row, row
    assert "On disk: 0.00 GB for the 1 models" in table


def test_tflite_of_a_catalogue_model_runs_at_a_resized_input(tmp_path):
    """convert.py --formats tflite: the interpreter runs the file at the golden input's shape
    (the validation batch of 4 at 48x48), not the shape stored in the file (batch 1)."""
    proc = run_script("convert.py", "torchvision/squeezenet1_1", "--input-size", 48,
                      "--formats", "tflite", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("tflite"))
    assert "top-1 1.000" in line and line.endswith("ok"), line
    folder = tmp_path / "torchvision" / "squeezenet1_1"
    assert _files(folder) == META | {"model.tflite"}
    report = json.loads((folder / "report.json").read_text())
    assert report["parity"]["tflite"]["outputs"]["logits"]["max_rel"] < 1e-4
    import tensorflow as tf

    stored = tf.lite.Interpreter(model_path=str(folder / "model.tflite")).get_input_details()[0]
    with np.load(folder / "golden.npz") as z:
        golden = next(z[k] for k in z.files if k.startswith("input/"))
    assert tuple(stored["shape"]) == (1, 48, 48, 3) and golden.shape == (4, 48, 48, 3)


def test_unknown_format_names_the_known_ones(tmp_path):
    for script in ("convert.py", "convert_all.py"):
        args = ["timm/resnet18"] if script == "convert.py" else []
        proc = run_script(script, *args, "--formats", "keras,pb", "--out", tmp_path)
        assert proc.returncode == 2, (script, proc.stderr)
        error = proc.stderr.strip().splitlines()[-1]
        assert "unknown format(s) 'pb'" in error and ", ".join(FORMATS) in error, error
    assert not any(tmp_path.iterdir())
