"""scripts/new_recipe.py (zoo.conversion.draft): draft a recipe by aligning a torch state_dict with
a Keras model's variables. The ResNet table is regenerated from scratch and the drafts convert
with parity without hand edits; ambiguous cases must be named in the draft."""
import importlib.util
import itertools
import re

import numpy as np
import pytest
import yaml

import zoo
from helpers import ROOT, SMALL, run_script
from zoo.catalog import get_variant
from zoo.conversion.draft import draft_recipe
from zoo.conversion.draft.align import assign
from zoo.conversion.draft.generalise import generalise
from zoo.conversion.draft.model import KerasLayer, Pair, TorchModule
from zoo.conversion.mapping import keras_layer_path, match_module
from zoo.conversion.sources import build_source
from zoo.recipe import load_recipe

RESNET18_KWARGS = '{"block": "basic", "depths": [2, 2, 2, 2]}'
RESNET_RULES = [   # what the draft must find for timm/torchvision ResNets (plain stem)
    {"torch": "conv1", "keras": "stem_conv", "transform": "conv2d"},
    {"torch": "bn1", "keras": "stem_bn", "transform": "batchnorm"},
    {"torch": r"layer(\d+)\.(\d+)\.conv(\d+)", "keras": "stage{1}_block{2}_conv{3}",
     "transform": "conv2d"},
    {"torch": r"layer(\d+)\.(\d+)\.bn(\d+)", "keras": "stage{1}_block{2}_bn{3}",
     "transform": "batchnorm"},
    {"torch": r"layer(\d+)\.(\d+)\.downsample\.0", "keras": "stage{1}_block{2}_down_conv",
     "transform": "conv2d"},
    {"torch": r"layer(\d+)\.(\d+)\.downsample\.1", "keras": "stage{1}_block{2}_down_bn",
     "transform": "batchnorm"},
    {"torch": "fc", "keras": "predictions", "transform": "linear"},
]
STAGES = [[f"layer{i}", f"stage{i}"] for i in range(1, 5)]


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    """A ZOO_RECIPE_PATH folder for drafts (their names never collide with recipes/)."""
    d = tmp_path / "recipes"
    d.mkdir()
    monkeypatch.setenv("ZOO_RECIPE_PATH", str(d))
    return d


def _table(variant, module):
    """torch module path -> (keras layer, transform, args) under the variant's rules."""
    modules = dict(module.named_modules())
    ignore = variant.recipe.ignore
    out = {}
    for key in module.state_dict():
        if any(p.fullmatch(key) for p in ignore):
            continue
        path = key.rpartition(".")[0]
        rule, m = match_module(path, variant.rules, modules)
        out[path] = (keras_layer_path(rule, m), rule.transform, rule.args) if rule else None
    return out


def _same_table_as_catalogue(draft_name, catalogue_name):
    draft, _ = get_variant(draft_name)
    hand, _ = get_variant(catalogue_name)
    module = build_source(hand.source, hand.source_kwargs)
    got, want = _table(draft, module), _table(hand, module)
    assert None not in want.values()
    assert got == want


def _write(draft, recipe_dir, stem):
    path = recipe_dir / f"{stem}.yaml"
    path.write_text(draft.text)
    return path


def _new_recipe_main():
    spec = importlib.util.spec_from_file_location("new_recipe", ROOT / "scripts" / "new_recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


# ---------------------------------------------------------------- ResNet from scratch

def test_script_regenerates_resnet18_table_and_it_converts(recipe_dir):
    out = recipe_dir / "resnet18.yaml"
    proc = run_script("new_recipe.py", "timm:resnet18", "resnet", "--builder-kwargs", RESNET18_KWARGS,
                      "--name", "draft/resnet18", "--out", out, "--input-size", SMALL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "41 torch module(s) matched, 7 rule(s)" in proc.stdout and f"wrote {out}" in proc.stdout
    text = out.read_text()
    data = yaml.safe_load(text)
    assert data["mapping"] == RESNET_RULES
    assert data["features"] == STAGES and data["classifier"] == "fc"
    assert data["ignore"] == [r".*\.num_batches_tracked"]
    assert data["variants"] == {"draft/resnet18": {
        "torch": {"source": "timm:resnet18"},
        "keras": {"builder": "resnet", "kwargs": {"block": "basic", "depths": [2, 2, 2, 2]}}}}
    # the stem BN is one of five 64-channel BNs and its name says little: marked, with its rivals
    assert "\n#   bn1 -> stem_bn; also fits: torch layer1.0.bn1, " in text
    assert "# every torch tensor and every keras variable is matched" in text

    _same_table_as_catalogue("draft/resnet18", "timm/resnet18")
    # no hand edit: converts against the real (perturbed) timm model, logits and the 4 stages
    _model, report = zoo.convert("draft/resnet18", input_size=SMALL)
    assert report["status"] == "passed"
    parity = report["parity"]["in_memory"]
    assert parity["passed"] and parity["max_rel"] < 1e-4
    assert report["tensors_mapped"] == 102


def test_torchvision_resnet50_draft_loads_and_maps(recipe_dir):
    draft = draft_recipe("torchvision:resnet50", "resnet", {"depths": [3, 4, 6, 3]},
                         name="draft/resnet50", trace_size=SMALL)
    assert draft.complete and not draft.unmatched_torch and not draft.unmatched_keras
    _write(draft, recipe_dir, "resnet50")
    data = yaml.safe_load(draft.text)
    assert data["mapping"] == RESNET_RULES and data["features"] == STAGES
    # layer1.0's conv3 and downsample.0 are both 64->256 1x1 convs with stride 1: order decided
    assert "\n#   layer1.0.downsample.0 -> stage1_block0_down_conv; also fits: torch layer1.0.conv3" \
        in draft.text
    _same_table_as_catalogue("draft/resnet50", "torchvision/resnet50")
    from zoo.conversion.pipeline import prepare
    _variant, tm, _kwargs, _model, plan = prepare("draft/resnet50")   # strict mapping
    assert len(plan) == sum(not k.endswith("num_batches_tracked") for k in tm.module.state_dict())


CONVNEXT = ROOT / "recipes" / "convnext.yaml"


@pytest.mark.skipif(not (CONVNEXT.is_file() and (ROOT / "zoo" / "models" / "convnext.py").is_file()),
                    reason="recipes/convnext.yaml / zoo/models/convnext.py not written yet")
def test_convnext_atto_draft_converts(recipe_dir):
    hand = load_recipe(CONVNEXT).variants.get("timm/convnext_atto")
    if hand is None:
        pytest.skip("recipes/convnext.yaml has no timm/convnext_atto")
    draft = draft_recipe(hand.source, hand.builder, hand.builder_kwargs, hand.source_kwargs,
                         name="draft/convnext_atto", trace_size=SMALL)
    assert draft.complete, draft.summary()
    _write(draft, recipe_dir, "convnext_atto")
    rules = yaml.safe_load(draft.text)["mapping"]
    # timm's stages are 0-based, the Keras ones 1-based: the draft writes one rule per stage
    # (recipes/convnext.yaml says it once with `{g1+1}`; the draft does not generalise to that)
    assert {"torch": r"stages\.1\.blocks\.(\d+)\.conv_dw", "keras": "stage2_block{1}_conv_dw",
            "transform": "depthwise"} in rules
    assert {"torch": r"stages\.2\.blocks\.(\d+)", "keras": "stage3_block{1}_ls",
            "transform": "identity"} in rules
    assert yaml.safe_load(draft.text)["features"] == [[f"stages.{i}", f"stage{i + 1}"]
                                                      for i in range(4)]
    _same_table_as_catalogue("draft/convnext_atto", "timm/convnext_atto")
    _model, report = zoo.convert("draft/convnext_atto", input_size=SMALL)
    assert report["status"] == "passed"


# ---------------------------------------------------------------- what the draft cannot decide

def test_order_only_and_several_transforms_are_named(recipe_dir):
    """`left` is defined before `right` but runs after it; the Keras twin has conv_a, conv_b (no
    name to go by) and a custom affine layer that both layernorm and groupnorm fit."""
    draft = draft_recipe("python:draft_fixtures:swapped", "python:draft_fixtures:swapped_keras",
                         name="draft/swapped", trace_size=16)
    assert draft.complete
    text = draft.text
    assert ("\n# unsure: chosen by order only (names do not decide):\n"
            "#   left -> conv_b; also fits: torch right, keras conv_a\n"
            "- {torch: left, keras: conv_b, transform: conv2d}\n") in text
    assert "\n#   right -> conv_a; also fits: torch left, keras conv_b\n" in text
    assert ("\n# unsure: several transforms fit (layernorm, groupnorm) for affine; chose layernorm\n"
            "- {torch: affine, keras: scale, transform: layernorm}\n") in text
    assert [r.torch for r in draft.unsure] == ["left", "right", "affine"]
    assert "mapping:\n- {torch: stem, keras: stem, transform: conv2d}\n" in text   # shape decides
    assert "# features: TODO" in text
    assert draft_recipe("python:draft_fixtures:swapped", "python:draft_fixtures:swapped_keras",
                        name="draft/swapped", trace_size=16).text == text   # deterministic
    # execution order, not definition order: the draft converts as it is
    _write(draft, recipe_dir, "swapped")
    _model, report = zoo.convert("draft/swapped", input_size=SMALL)
    assert report["status"] == "passed"


@pytest.mark.parametrize("fixture, kwargs, size", [
    ("swapped", {}, 16),
    ("flat", {"source_kwargs": {"num_classes": 5}, "builder_kwargs": {"classes": 5}}, 4)])
def test_yaml_round_trip(tmp_path, fixture, kwargs, size):
    """The text is draft.data (yaml.safe_dump) plus comments only: loading it back gives the same
    structures, and zoo.recipe reads the same rules and variant from it."""
    draft = draft_recipe(f"python:draft_fixtures:{fixture}", f"python:draft_fixtures:{fixture}_keras",
                         name=f"draft/{fixture}", trace_size=size, **kwargs)
    assert yaml.safe_load(draft.text) == draft.data
    recipe = load_recipe(_write(draft, tmp_path, fixture))
    assert [(r.torch.pattern, r.keras, r.transform, r.args, r.module_type) for r in recipe.mapping] \
        == [(d["torch"], d["keras"], d["transform"], d.get("args", {}), d.get("module_type"))
            for d in draft.data["mapping"]]
    assert [(r.torch, r.keras, r.transform, r.args, r.module_type) for r in draft.rules] == \
        [(d["torch"], d["keras"], d["transform"], d.get("args", {}), d.get("module_type"))
         for d in draft.data["mapping"]]
    assert [p.pattern for p in recipe.ignore] == draft.data["ignore"] == [r".*\.num_batches_tracked"]
    assert recipe.classifier == draft.data["classifier"] == "head"
    (name, spec), = draft.data["variants"].items()
    variant = recipe.variants[name]
    assert (variant.source, variant.source_kwargs, variant.builder, variant.builder_kwargs) == \
        (spec["torch"]["source"], spec["torch"].get("kwargs", {}), spec["keras"]["builder"],
         spec["keras"].get("kwargs", {}))
    assert (variant.source_kwargs, variant.builder_kwargs) == \
        (kwargs.get("source_kwargs", {}), kwargs.get("builder_kwargs", {}))
    if fixture == "flat":   # module_type and args survive the trip
        assert [(r.module_type, r.args) for r in recipe.mapping] == [
            ("Conv2d", {}), ("BatchNorm2d", {}), (None, {"chw": [6, 4, 4]})]
        assert "\n# note: head follows a Flatten of (H, W, C) = (4, 4, 6)" in draft.text


def test_missing_keras_layer_is_named_and_exit_code_1(tmp_path):
    """The Keras model lacks one of two same-shaped torch convs: the draft names the torch tensors
    it could not match and the rival of the rule it wrote."""
    out = tmp_path / "deeper.yaml"
    proc = run_script("new_recipe.py", "python:draft_fixtures:deeper",
                      "python:draft_fixtures:shallow_keras", "--name", "draft/deeper", "--out", out,
                      "--input-size", 16, env={"PYTHONPATH": str(ROOT / "tests")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "torch tensors not matched (2): second.weight, second.bias" in proc.stdout
    text = out.read_text()
    assert text.endswith("# torch tensors not matched (2):\n"
                         "#   second.weight [8, 8, 3, 3]\n"
                         "#   second.bias [8]\n"
                         "# keras variables not matched (0):\n")
    assert ("\n# unsure: chosen by order only (names do not decide):\n"
            "#   first -> mid; also fits: torch second\n"
            "- {torch: first, keras: mid, transform: conv2d}\n") in text
    data = yaml.safe_load(text)    # still a valid recipe, just incomplete
    assert [r["torch"] for r in data["mapping"]] == ["stem", "first", "head"]


def test_cli_rejects_bad_input(tmp_path, capsys):
    main = _new_recipe_main()
    existing = tmp_path / "x.yaml"
    existing.write_text("keep me")
    cases = [
        (["timm:resnet18", "no_such_builder"], "unknown Keras builder"),
        (["nope:resnet18", "resnet"], "source must be"),
        (["timm:resnet18", "resnet", "--builder-kwargs", "{bad json"], "error:"),
        (["timm:resnet18", "resnet", "--builder-kwargs", "[1]"], "must be JSON objects"),
        (["timm:resnet18", "resnet", "--name", "resnet18"], "catalogue name"),
        (["timm:resnet18", "resnet", "--out", str(existing)], "exists (pass --force"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert existing.read_text() == "keep me"


# ---------------------------------------------------------------- generalisation and assignment

def _pairs(mapping, transform="conv2d"):
    out = []
    for i, (t, k) in enumerate(mapping):
        out.append(Pair(TorchModule(t, {}, {}, None, "Conv2d", i),
                        KerasLayer(k, {}, None, "Conv2D", i, k), transform, [transform], []))
    return out


def _rules(rules):
    return [(r.torch, r.keras) for r in rules]


def test_generalise_numbers_and_literal_fallbacks():
    pairs = _pairs([("layer1.0.conv1", "stage1_block0_conv1"), ("layer1.1.conv2", "stage1_block1_conv2"),
                    ("layer2.3.conv2", "stage2_block3_conv2"), ("layer2.0.conv1", "stage2_block0_conv1")])
    paths = {p.torch.path: "Conv2d" for p in pairs}
    assert _rules(generalise(pairs, paths)) == [(r"layer(\d+)\.(\d+)\.conv(\d+)",
                                                 "stage{1}_block{2}_conv{3}")]

    # 0-based torch stages, 1-based keras ones: one rule per stage, the block index still a group
    pairs = _pairs([(f"stages.{s}.blocks.{b}.norm", f"stage{s + 1}_block{b}_norm")
                    for s in range(2) for b in range(3)])
    paths = {p.torch.path: "Conv2d" for p in pairs}
    assert _rules(generalise(pairs, paths)) == [(r"stages\.0\.blocks\.(\d+)\.norm", "stage1_block{1}_norm"),
                                                (r"stages\.1\.blocks\.(\d+)\.norm", "stage2_block{1}_norm")]

    # an unmatched module of the same shape of path is never covered: literal rules instead
    pairs = _pairs([("blocks.0.conv", "b0_conv"), ("blocks.1.conv", "b1_conv")])
    paths = {"blocks.0.conv": "Conv2d", "blocks.1.conv": "Conv2d", "blocks.2.conv": "Conv2d"}
    rules = generalise(pairs, paths)
    assert _rules(rules) == [(r"blocks\.0\.conv", "b0_conv"), (r"blocks\.1\.conv", "b1_conv")]
    assert not any(re.fullmatch(r.torch, "blocks.2.conv") for r in rules)

    # a single pair is no evidence of a pattern
    pairs = _pairs([("conv1.0", "stem_conv1")])
    assert _rules(generalise(pairs, {"conv1.0": "Conv2d"})) == [(r"conv1\.0", "stem_conv1")]


def test_generalise_segments():
    mapping = [(f"Mixed_{m}.{b}.conv", f"Mixed_{m}_{b}_conv")
               for m in ("5b", "5c", "6a") for b in ("branch1x1", "branch3x3dbl_1", "branch_pool")]
    pairs = _pairs(mapping)
    paths = {p.torch.path: "Conv2d" for p in pairs}
    assert _rules(generalise(pairs, paths, "segments")) == [(r"(\w+)\.(\w+)\.conv", "{1}_{2}_conv")]
    assert len(generalise(pairs, paths, "numbers")) > 1


def test_assign_matches_most_compatible_pairs_then_least_cost():
    """Only compatible pairs (the keys of `costs`) are ever chosen, as many as any matching allows,
    and of those matchings the cheapest: checked against every matching, enumerated."""
    rng = np.random.default_rng(0)
    for rows, cols, density in ((4, 4, 1.0), (3, 5, 0.6), (5, 3, 0.6), (6, 6, 0.4), (6, 5, 0.3)):
        costs = {(i, j): float(rng.random() * 10) for i in range(rows) for j in range(cols)
                 if rng.random() < density}
        got = assign(costs)
        assert all(ij in costs for ij in got)
        assert len({i for i, _ in got}) == len({j for _, j in got}) == len(got)
        best = None   # (most pairs, least cost) over every one-to-one subset of compatible pairs
        for perm in itertools.permutations(list(range(cols)) + [None] * rows, rows):
            chosen = [(i, j) for i, j in enumerate(perm) if j is not None and (i, j) in costs]
            key = (-len(chosen), sum(costs[ij] for ij in chosen))
            best = key if best is None or key < best else best
        assert (-len(got), sum(costs[ij] for ij in got)) == pytest.approx(best)
    assert assign({}) == []


# ---------------------------------------------------------------- models that are not classifiers

IO_DRAFTS = {   # tests/io_models.py model -> how the user declares its input to the drafter
    "landmarks": ["--input-size", "48"],
    "audio": ["--inputs", "[{name: waveform, layout: sequence, shape: [1, 1024]}]"],
    "two_inputs": ["--inputs", "[{name: image, layout: image, shape: [3, null, null]}, "
                               "{name: meta, shape: [8]}]", "--input-size", "32"],
    "tokens": ["--inputs", "[{name: ids, shape: [12], dtype: int64, generator: tokens, vocab: 100}]"],
}


@pytest.mark.parametrize("key", list(IO_DRAFTS))
def test_drafts_of_models_that_are_not_classifiers_convert(recipe_dir, capsys, key):
    """new_recipe on each io_models model: the same table, inputs and outputs as the recipe a user
    writes (RECIPES), and the draft converts as it is against the perturbed torch model."""
    from io_models import RECIPES

    hand = yaml.safe_load(RECIPES[key])
    (recipe_dir / f"{key}.yaml").write_text(RECIPES[key])
    out = recipe_dir / f"draft_{key}.yaml"
    argv = [f"python:io_models:{key}", f"python:io_models:{key}_keras", "--name", f"draft/{key}",
            "--out", str(out), *IO_DRAFTS[key]]
    assert _new_recipe_main()(argv) == 0, capsys.readouterr()
    data = yaml.safe_load(out.read_text())
    assert data["inputs"] == hand["inputs"]
    # the outputs the user declares, less what the defaults already say (tolerance is a choice)
    want = [{k: v for k, v in o.items() if k != "tolerance"} for o in hand["outputs"]]
    got = data.get("outputs", [{"name": "logits", "metric": "classification"}])
    assert sorted(got, key=str) == sorted(want, key=str)
    assert data.get("classifier") == {"audio": "fc", "two_inputs": "score", "tokens": "head"}.get(key)
    _same_table_as_catalogue(f"draft/{key}", next(iter(hand["variants"])))
    _model, report = zoo.convert(f"draft/{key}")
    assert report["status"] == "passed" and report["parity"]["in_memory"]["max_rel"] < 1e-5


def test_multi_head_model_gets_no_classifier_and_the_mirrored_permute_keeps_linear(recipe_dir):
    draft = draft_recipe("python:io_models:landmarks", "python:io_models:landmarks_keras",
                         name="draft/landmarks", trace_size=48)
    assert "classifier" not in draft.data
    assert all("metric" not in o for o in draft.data["outputs"])
    assert "# no output marked metric: classification: several outputs" in draft.text
    assert {r["transform"] for r in draft.data["mapping"]} == {"conv2d", "prelu", "linear"}
    assert "# note: torch flattens (W, H, C) (its forward permutes first) and the Keras model's " \
           "Flatten before dense5 does too: plain linear" in draft.text


def test_permute_that_keras_does_not_mirror_is_named(recipe_dir):
    """torch permutes to (W, H, C) before flattening, the Keras builder flattens NHWC directly:
    neither linear nor linear_after_flatten fits; the draft keeps linear, marks the rule unsure
    and says which Permute the builder lacks."""
    draft = draft_recipe("python:io_models:landmarks", "python:diff_fixtures:landmarks_no_permute",
                         name="draft/no_permute", trace_size=48)
    (rule,) = [r for r in draft.rules if r.transform.startswith("linear")]
    assert rule.transform == "linear" and rule in draft.unsure
    assert "# unsure: torch flattens (W, H, C), the Keras model (H, W, C); no transform reorders " \
           "rows between these: add keras.layers.Permute((2, 1, 3)) right before the Flatten " \
           "feeding dense5" in draft.text


def test_wrong_input_size_is_a_clear_error_and_sizes_parse(tmp_path, capsys):
    main = _new_recipe_main()
    assert main(["python:io_models:landmarks", "python:io_models:landmarks_keras", "--out", "-"]) == 2
    err = capsys.readouterr().err
    assert "the torch forward pass failed at the input image [2, 3, 224, 224]" in err
    assert "mat1 and mat2 shapes cannot be multiplied" in err and "--input-size H[xW]" in err
    assert "Traceback" not in err
    # a non-square image input is declared with its shape
    out = tmp_path / "swapped.yaml"
    assert main(["python:draft_fixtures:swapped", "python:draft_fixtures:swapped_keras", "--name",
                 "draft/swapped", "--input-size", "16x24", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["inputs"] == [
        {"name": "pixels", "layout": "image", "shape": [3, 16, 24]}]
    for argv, message in ((["--inputs", "[{name: x, shape: [0]}]"], "--inputs[0].shape"),
                          (["--inputs", "[{name: x"], "--inputs is not YAML/JSON"),
                          (["--inputs", "[{name: x, shape: [4]}]", "--input-size", "4x5"],
                           "--input-size HxW is for the one default image input")):
        assert main(["python:io_models:audio", "python:io_models:audio_keras", *argv]) == 2
        assert message in capsys.readouterr().err, argv
