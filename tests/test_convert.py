"""End-to-end parity of the ResNet family against the real timm/torchvision models."""
import json

import numpy as np
import pytest
import torch
import yaml

import zoo
from helpers import ROOT, SMALL
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

FILES = {"model.weights.h5", "model.keras", "saved_model", "config.json", "golden.npz",
         "report.json"}


def _torch_nhwc(module, x_nhwc):
    with torch.no_grad():
        return module(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("name", ["timm/resnet18", "torchvision/resnet18"])
def test_smallest_variants_convert_export_and_reload(name, converted):
    out_dir, report = converted(name)
    assert report["status"] == "passed"
    assert report["weights"]["source"] == "random"
    assert set(report["parity"]) == {"in_memory", "weights.h5", "keras", "saved_model"}
    for fmt, p in report["parity"].items():
        assert p["passed"] and p["max_rel"] < 1e-5, (fmt, p["max_rel"])
        assert p["outputs"]["logits"]["top1"] == 1.0
    assert set(report["parity"]["keras"]["features"]) == {"stage1", "stage2", "stage3", "stage4"}
    assert {p.name for p in out_dir.iterdir()} == FILES
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".")], "temp dir left"
    for rel, meta in report["files"].items():
        assert (out_dir / rel).stat().st_size == meta["bytes"]
    assert set(report["timings"]) == {"load_torch", "build_keras", "map_weights", "validate",
                                      "export", "reload_validate"}
    # the process' peak RSS after each stage part, in the order they ran (ru_maxrss only grows)
    steps = report["peak_rss_mb_after_stage"]
    assert [s for s, _ in steps] == ["load_torch", "validate", "build_keras", "map_weights",
                                     "validate", "export", "reload_validate"]
    peaks = [p for _, p in steps]
    assert peaks == sorted(peaks) and peaks[0] > 0
    assert report["versions"]["torch"] and report["versions"]["keras"]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["num_classes"] == 1000 and config["preprocessing"]["std"][0] == pytest.approx(0.229)


@pytest.mark.parametrize("name", ["timm/resnet18", "torchvision/resnet18"])
def test_reloaded_keras_model_matches_torch_at_an_odd_non_square_size(name, converted):
    """Independent of the pipeline's own comparison: rebuild the same perturbed torch model
    (fixed seed), run it and the reloaded .keras file on a new input of an odd size."""
    import keras

    out_dir, _ = converted(name)
    variant, tag = get_variant(name)
    tm = load_torch_model(variant, tag, "random")
    x = np.random.default_rng(7).standard_normal((2, 75, 93, 3)).astype(np.float32)
    ref = _torch_nhwc(tm.module, x)
    model = keras.saving.load_model(out_dir / "model.keras", safe_mode=True)
    got = np.asarray(model.predict_on_batch(x))
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("name", ["timm/resnet50d", "timm/seresnext50_32x4d"])
def test_deep_stem_avg_down_and_squeeze_excite_at_odd_size(name):
    # 67 px: odd sizes at every stage exercise ceil_mode avg-pool and -inf max-pool padding.
    _model, report = zoo.convert(name, input_size=67)
    assert report["parity"]["in_memory"]["passed"], report["parity"]["in_memory"]["max_rel"]
    assert report["parity"]["in_memory"]["max_rel"] < 1e-5


def _swapped_bn_recipe(tmp_path):
    """A deliberately wrong copy of the ResNet recipe: bn1 <-> bn2 swapped in every block (same
    shapes in a basic block, so only the numbers can tell)."""
    data = yaml.safe_load((ROOT / "recipes" / "resnet.yaml").read_text())
    rules = []
    for r in data["mapping"]:
        if "only" in r:       # ResNet-D only: not needed for a resnet18 copy
            continue
        r.pop("skip", None)   # its globs name catalogue variants absent from this file
        if r["torch"] == r"layer(\d)\.(\d+)\.bn(\d)":
            rules += [{"torch": r"layer(\d)\.(\d+)\.bn1", "keras": "stage{1}_block{2}_bn2",
                       "transform": "batchnorm"},
                      {"torch": r"layer(\d)\.(\d+)\.bn2", "keras": "stage{1}_block{2}_bn1",
                       "transform": "batchnorm"}]
        else:
            rules.append(r)
    data["mapping"] = rules
    data["variants"] = {"test/resnet18_swapped_bn": data["variants"]["timm/resnet18"]}
    (tmp_path / "swapped.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def test_perturbation_exposes_a_mapping_that_default_init_hides(tmp_path, monkeypatch):
    import timm

    from zoo.conversion.mapping import apply_plan, plan_mapping
    from zoo.io_spec import image_batch
    from zoo.models import get_builder
    from zoo.validate import compare, keras_outputs

    monkeypatch.setenv("ZOO_RECIPE_PATH", str(_swapped_bn_recipe(tmp_path)))
    variant, _ = get_variant("test/resnet18_swapped_bn")
    # Default init (BN 1/0, stats 0/1): the wrong mapping is invisible.
    module = timm.create_model("resnet18").eval()
    model = get_builder("resnet")(**variant.builder_kwargs)
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    apply_plan(model, plan_mapping(state, model, variant.rules, variant.recipe.ignore))
    x = image_batch(SMALL, 3, variant.preprocessing)
    blind = compare(_torch_nhwc(module, x), keras_outputs(model, x, [])["outputs"]["logits"])
    assert blind["max_rel"] < 1e-5
    # Perturbed weights (what the pipeline uses): the same mistake fails validation.
    with pytest.raises(zoo.ValidationError) as e:
        zoo.convert("test/resnet18_swapped_bn", input_size=SMALL)
    assert e.value.report["parity"]["in_memory"]["max_rel"] > 1e-2
    assert e.value.report["parity"]["in_memory"]["features"]["stage1"]["max_rel"] > 1e-2


def test_random_weights_are_well_conditioned_in_float32():
    """Perturbed init alone sends timm's EfficientNet-B3 activations to ~1e10 and float32 torch
    disagrees with float64 torch (0.4 max rel): no conversion could pass. The pipeline re-estimates
    BN statistics after perturbing; they stay far from the 0/1 defaults."""
    import copy

    variant, tag = get_variant("timm/efficientnet_b3")
    module = load_torch_model(variant, tag, "random").module
    bn = module.bn1
    assert bn.running_mean.abs().min() > 0 and (bn.running_var - 1).abs().max() > 0.3
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        f32 = module(x).numpy()
        f64 = copy.deepcopy(module).double()(x.double()).numpy()
    assert np.abs(f32 - f64).max() / np.abs(f64).max() < 1e-5


def test_report_measures_torchs_own_float32_error_and_failure_says_when_it_explains(
        tmp_path, monkeypatch):
    from helpers import recipe_copy

    _, report = zoo.convert("timm/resnet18", input_size=SMALL)
    floor = report["torch_float32_vs_float64"]
    assert 0 < floor["max_rel"] < report["tolerance"] and set(floor["features"]) == \
        set(report["parity"]["in_memory"]["features"])

    def too_tight(data):   # a tolerance below float32 precision: fails, but nothing is mis-mapped
        data["mapping"] = [r for r in data["mapping"] if "only" not in r]
        for r in data["mapping"]:
            r.pop("skip", None)
        data["tolerance"] = 1e-9
    recipe_copy(tmp_path, monkeypatch, "resnet", "timm/resnet18", "test/resnet18_tight", too_tight)
    with pytest.raises(zoo.ValidationError, match="conditioning, not a mapping mistake"):
        zoo.convert("test/resnet18_tight", input_size=SMALL)
    # a real mapping mistake is far above torch's own float32 error: no such note
    (tmp_path / "swapped").mkdir()
    monkeypatch.setenv("ZOO_RECIPE_PATH", str(_swapped_bn_recipe(tmp_path / "swapped")))
    with pytest.raises(zoo.ValidationError) as e:
        zoo.convert("test/resnet18_swapped_bn", input_size=SMALL)
    assert "conditioning" not in str(e.value)


def test_torch_module_is_freed_before_the_keras_validation(monkeypatch):
    """The Keras validation sets a conversion's peak memory before export: the torch model must
    be gone by then (a parity failure loads it again: tests/test_diff.py)."""
    import weakref

    from zoo.conversion import pipeline

    ran = []   # every torch module that ran a forward pass during the conversion
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, _inputs: ran.append(weakref.ref(module)))
    alive = []

    class Counted(pipeline.KerasProbe):
        def __call__(self, inputs):   # the pipeline's own probe, after a count
            alive.append(sum(r() is not None for r in ran))
            return super().__call__(inputs)
    monkeypatch.setattr(pipeline, "KerasProbe", Counted)
    try:
        _, report = zoo.convert("timm/resnet18", input_size=SMALL)
    finally:
        handle.remove()
    assert report["status"] == "passed" and len(ran) > 100
    assert alive == [0]


def test_failed_validation_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_RECIPE_PATH", str(_swapped_bn_recipe(tmp_path)))
    out = tmp_path / "out"
    with pytest.raises(zoo.ValidationError):
        zoo.convert("test/resnet18_swapped_bn", input_size=SMALL, out_dir=out)
    assert not out.exists() or not any(out.rglob("*"))


def test_unknown_name_suggests_close_names():
    with pytest.raises(zoo.UnknownModelError, match="timm/resnet50.*torchvision/resnet50"):
        zoo.convert("resnet50")
    with pytest.raises(zoo.UnknownModelError, match="timm/resnet34"):
        zoo.convert("timm/resnet43")


def test_pretrained_without_network_is_a_clear_error():
    with pytest.raises(zoo.SourceError, match="not in the local cache"):
        zoo.convert("torchvision/resnet18", weights="pretrained")

