"""Hostile or broken input found by trying the project as an attacker and a careless user would
(issue 12): each test reproduces a defect that existed, and fails if the fix is removed."""
import math
import os

import numpy as np
import pytest
import torch
import torchvision

import zoo
from helpers import SMALL
from zoo import catalog
from zoo.names import InvalidNameError
from zoo.recipe import load_recipe
from zoo.validate import compare_outputs

pytestmark = pytest.mark.hostile("hostile input")

# A user's own recipe whose source is a `python:` callable: nothing but our own check stands
# between its weight tag and the file system (timm and torchvision reject unknown tags).
USER_RECIPE = """
family: user_resnet
mapping:
  - {torch: 'conv1', keras: stem_conv, transform: conv2d}
  - {torch: 'bn1', keras: stem_bn, transform: batchnorm}
  - {torch: 'layer(\\d)\\.(\\d+)\\.conv(\\d)', keras: 'stage{1}_block{2}_conv{3}', transform: conv2d}
  - {torch: 'layer(\\d)\\.(\\d+)\\.bn(\\d)', keras: 'stage{1}_block{2}_bn{3}', transform: batchnorm}
  - {torch: 'layer(\\d)\\.(\\d+)\\.downsample\\.0', keras: 'stage{1}_block{2}_down_conv', transform: conv2d}
  - {torch: 'layer(\\d)\\.(\\d+)\\.downsample\\.1', keras: 'stage{1}_block{2}_down_bn', transform: batchnorm}
  - {torch: 'fc', keras: predictions, transform: linear}
ignore: ['.*\\.num_batches_tracked']
variants:
  user/tvr18:
    torch: {source: 'python:torchvision.models:resnet18'}
    keras: {builder: resnet, kwargs: {block: basic, depths: [2, 2, 2, 2]}}
"""


@pytest.fixture
def user_recipes(tmp_path, monkeypatch):
    folder = tmp_path / "user_recipes"
    folder.mkdir()
    (folder / "user.yaml").write_text(USER_RECIPE)
    monkeypatch.setenv("ZOO_RECIPE_PATH", str(folder))
    return folder


# ------------------------------------------------------------------ 1. writes outside --out

def test_weight_tag_cannot_write_outside_out(user_recipes, tmp_path):
    """`zoo.convert("user/tvr18.x/../../../victim", out_dir=D)` replaced a directory outside D."""
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    assert "user/tvr18" in zoo.list_models()
    with pytest.raises(InvalidNameError, match="invalid weight tag"):
        zoo.convert("user/tvr18.x/../../../victim", out_dir=out, input_size=SMALL)
    assert (victim / "keep.txt").read_text() == "precious"
    assert not any(out.iterdir())


@pytest.mark.parametrize("name", ["user/tvr18.x/../../y", "user/../../y", "/etc/passwd",
                                  "user/tvr18.a.b", "user/tvr18.a\\..\\b", "user/tvr18.\x00",
                                  "user/tvr18. x", "user/tvr18.."])
def test_every_entry_point_refuses_a_path_in_a_name(user_recipes, name, tmp_path):
    for call in (lambda: catalog.get_variant(name), lambda: catalog.output_dir(tmp_path, name),
                 lambda: zoo.create_model(name)):
        with pytest.raises(InvalidNameError):
            call()


def test_output_folder_behind_a_symlink_outside_out_is_refused(user_recipes, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "user")
    with pytest.raises(InvalidNameError, match="outside the output root"):
        zoo.convert("user/tvr18", out_dir=out, input_size=SMALL)
    assert not any(elsewhere.iterdir())


def test_valid_tags_still_name_their_folder(user_recipes, tmp_path):
    assert catalog.output_dir(tmp_path, "timm/resnet50.a1_in1k") == tmp_path / "timm" / "resnet50.a1_in1k"
    assert catalog.split_name("torchvision/resnet50.IMAGENET1K_V2") == ("torchvision/resnet50",
                                                                        "IMAGENET1K_V2")


# ------------------------------------------------------------------ 3. non-finite tolerance / parity

@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "0", "-1e-4"])
def test_tolerance_must_be_finite_and_positive(tmp_path, value):
    path = tmp_path / "r.yaml"
    path.write_text(USER_RECIPE + f"tolerance: {value}\n")
    with pytest.raises(zoo.RecipeError, match="tolerance: expected a finite positive number"):
        load_recipe(path)


def test_nan_outputs_fail_whatever_the_tolerance():
    ref = {"outputs": {"logits": np.ones((2, 3))}, "features": {}}
    for bad in (np.nan, np.inf):
        out = {"outputs": {"logits": np.full((2, 3), bad)}, "features": {}}
        for tol in (1e-4, 1e30, math.inf):
            assert not compare_outputs(ref, out, tol)["passed"], (bad, tol)
    nan_ref = {"outputs": {"logits": np.full((2, 3), np.nan)}, "features": {}}
    assert not compare_outputs(nan_ref, nan_ref, math.inf)["passed"]


# ------------------------------------------------------------------ 6. bad user recipes

def test_one_bad_user_recipe_does_not_take_the_catalogue_down(user_recipes):
    (user_recipes / "broken.yaml").write_text("family: x\nmapping: 3\n")
    (user_recipes / "clash.yaml").write_text(USER_RECIPE.replace("family: user_resnet",
                                                                 "family: again"))
    with pytest.warns(catalog.RecipeWarning) as caught:
        names = zoo.list_models()
    messages = " | ".join(str(w.message) for w in caught)
    assert "broken.yaml" in messages and "clash.yaml" in messages and "already defined" in messages
    assert "timm/resnet50.a1_in1k" in names and "user/tvr18" in names


@pytest.mark.parametrize("text, problem", [
    ("input_size: .inf\n", "input_size: expected a finite positive number"),
    ("input_size: .nan\n", "input_size: expected a finite positive number"),
    ("? [a, b]\n: 1\n", "malformed recipe|unknown key"),
    ("features: " + "[" * 5000 + "]" * 5000 + "\n", "malformed recipe|not valid YAML|features"),
])
def test_odd_values_are_recipe_errors(tmp_path, text, problem):
    path = tmp_path / "r.yaml"
    path.write_text(USER_RECIPE + text)
    with pytest.raises(zoo.RecipeError, match=problem):
        load_recipe(path)


def test_huge_recipe_is_refused_before_parsing(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(USER_RECIPE + "#" * (2 << 20) + "\n")
    with pytest.raises(zoo.RecipeError, match="a recipe is at most"):
        load_recipe(path)


# ------------------------------------------------------------------ 8. checkpoints

@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).state_dict()


def test_nan_checkpoint_names_the_tensors_before_any_forward_pass(resnet18_state, tmp_path):
    state = {k: v.clone() for k, v in resnet18_state.items()}
    state["layer2.0.bn1.running_var"][3] = float("nan")
    state["fc.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(zoo.SourceError, match=r"2 tensor\(s\) contain NaN or inf: "
                                              r"fc.weight, layer2.0.bn1.running_var"):
        zoo.convert("torchvision/resnet18", tmp_path / "nan.pth", num_classes=10, input_size=SMALL)


def test_torch_compile_checkpoint_converts(resnet18_state, tmp_path):
    torch.save({f"_orig_mod.{k}": v for k, v in resnet18_state.items()}, tmp_path / "c.pth")
    _model, report = zoo.convert("torchvision/resnet18", tmp_path / "c.pth", num_classes=10,
                                 input_size=SMALL)
    assert report["parity"]["in_memory"]["passed"]


def test_directory_as_weights_says_so(tmp_path):
    (tmp_path / "best.safetensors").write_bytes(b"")
    with pytest.raises(zoo.SourceError, match="is a directory.*best.safetensors"):
        zoo.convert("torchvision/resnet18", tmp_path, num_classes=10, input_size=SMALL)


# ------------------------------------------------------------------ 9. command-line values

CLI_CASES = [
    (["--num-classes", "0"], "--num-classes must be a whole number >= 1, got 0"),
    (["--num-classes", "-3"], "--num-classes must be a whole number >= 1, got -3"),
    (["--in-chans", "0"], "--in-chans must be"),
    (["--in-chans", "-1"], "--in-chans must be"),
    (["--input-size", "-5"], "--input-size must be"),
    (["--input-size", "0"], "--input-size must be a whole number >= 1, got 0"),
    (["--input-size", "2.5"], "--input-size must be a whole number >= 1, got '2.5'"),
    (["--out", "FILE"], "exists and is not a directory"),
]


@pytest.mark.parametrize("args, problem", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_values_are_one_line_errors_with_exit_2(args, problem, tmp_path, capsys):
    """Bad command-line values are one line and exit 2 (they were raw tracebacks, exit 1)."""
    import importlib.util

    from helpers import ROOT
    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    for script in ("convert.py", "convert_all.py"):
        if script == "convert_all.py" and args[0] in ("--num-classes", "--in-chans"):
            continue
        spec = importlib.util.spec_from_file_location("script", ROOT / "scripts" / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        argv = (["timm/resnet18"] if script == "convert.py" else []) + args
        with pytest.raises(SystemExit) as e:
            module.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert problem in err and "Traceback" not in err, err


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_chans": -1}, {"input_size": 0},
                                    {"input_size": 2.5}, {"num_classes": True}], ids=repr)
def test_api_values_are_checked_before_any_work(kwargs):
    """Out-of-range API values are refused before any work (0 used to mean 'the default')."""
    with pytest.raises(zoo.ZooError, match="must be a whole number >= 1"):
        zoo.convert("torchvision/resnet18", **kwargs)


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(zoo.ZooError, match="exists and is not a directory"):
        zoo.convert("torchvision/resnet18", out_dir=tmp_path / "f", input_size=SMALL)


# ------------------------------------------------------------------ 7 / 10. writers, regexes, typos

def test_concurrent_writers_of_one_model_never_fail_or_leave_debris(tmp_path):
    """Two writers replacing the same model folder used to fail with 'Directory not empty'."""
    import threading

    from zoo.export import atomic_dir
    final, errors = tmp_path / "timm" / "m", []

    def writer(k):
        try:
            for i in range(30):
                with atomic_dir(final) as tmp:
                    (tmp / "report.json").write_text(f"{k}-{i}")
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (final / "report.json").read_text().endswith("-29")
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"]


def test_backtracking_regex_in_a_recipe_is_refused(tmp_path):
    """An `ignore: ['(a+)+$']` kept a worker at 100 % CPU until it was killed."""
    path = tmp_path / "r.yaml"
    path.write_text(USER_RECIPE.replace("ignore: ['.*\\.num_batches_tracked']",
                                        "ignore: ['.*\\.num_batches_tracked', '(a+)+$']"))
    with pytest.raises(zoo.RecipeError, match="ignore #1: .* refused: a repetition inside a "
                                              "repetition"):
        load_recipe(path)


def test_only_typo_gets_a_suggestion():
    from zoo.batch import BatchError, select
    with pytest.raises(BatchError, match="did you mean .*timm/resnet18"):
        select(only=["timm/resnet81"])
